//! Any UTF-8 string through every grammar and accessor of qemu-opts
//! (`qemu_opts::fuzz_parse`: values or errors, never a panic), and these invariants:
//! - print -> parse round trip: what a grammar accepts prints (`Display`) as text that
//!   `Grammar::opts()` parses back to the same pairs (and `Grammar::keyval()` too, when
//!   the keys are unique), and printing that again gives the same text;
//! - `keyval` is the strict form of `opts`: what it accepts, `opts` reads the same way;
//! - an implied key is the same as writing it: when the first item has no `=`,
//!   `implied("driver")` reads `text` as the plain grammar reads `driver=text`;
//! - errors are the typed `qemu_opts::Error`, and every message names the option;
//! - a decimal number is the same size in bytes (`parse_number` and `parse_size`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use qemu_opts::{Grammar, Opts, SizeUnit, parse_number, parse_size, split_commas};

const OPTION: &str = "-fuzz";

fn check(text: &str, grammar: Grammar, strict: bool) {
    let parsed = Opts::parse(OPTION, text, grammar);
    match &parsed {
        Ok(opts) => {
            assert!(!opts.is_empty(), "{text:?}: an accepted string has a pair");
            let printed = opts.to_string();
            let again = Opts::parse(OPTION, &printed, Grammar::opts());
            assert_eq!(again.as_ref(), Ok(opts), "{text:?} printed as {printed:?}");
            if strict {
                let strict_again = Opts::parse(OPTION, &printed, Grammar::keyval());
                assert_eq!(strict_again.as_ref(), Ok(opts), "{text:?} -> {printed:?}");
            }
            let reprinted = again.map(|o| o.to_string());
            assert_eq!(reprinted.as_deref(), Ok(printed.as_str()));
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.starts_with("-fuzz: "), "{text:?}: {message}");
            assert_eq!(message.strip_prefix("-fuzz: "), Some(e.reason().as_str()));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    qemu_opts::fuzz_parse(text);
    check(text, Grammar::opts(), false);
    check(text, Grammar::opts().implied("driver"), false);
    check(text, Grammar::keyval(), true);
    check(text, Grammar::keyval().implied("qom-type"), true);

    if let Ok(strict) = Opts::parse(OPTION, text, Grammar::keyval()) {
        let loose = Opts::parse(OPTION, text, Grammar::opts());
        assert_eq!(loose.as_ref(), Ok(&strict), "{text:?}");
    }
    let first_has_equals = split_commas(text).first().is_some_and(|i| i.contains('='));
    if !first_has_equals {
        let explicit = format!("driver={text}");
        for grammar in [Grammar::opts(), Grammar::keyval()] {
            let implied = Opts::parse(OPTION, text, grammar.implied("driver")).ok();
            let written = Opts::parse(OPTION, &explicit, grammar).ok();
            assert_eq!(implied, written, "{text:?} vs {explicit:?}");
        }
    }
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        assert_eq!(
            parse_number(text),
            parse_size(text, SizeUnit::Bytes),
            "{text:?}"
        );
    }
});
