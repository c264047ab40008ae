//! Any UTF-8 string through every grammar and accessor of qemu-opts
//! (`qemu_opts::fuzz_parse`: values or errors, never a panic), and these invariants:
//! - print -> parse round trip: what a grammar accepts prints (`Display`) as text that
//!   `Grammar::opts()` parses back to the same pairs (and `Grammar::keyval()` too, when
//!   the keys are unique), and printing that again gives the same text;
//! - `keyval` is the strict form of `opts`: what it accepts, `opts` reads the same way;
//! - an implied key is the same as writing it: when the first item has no `=`,
//!   `implied("driver")` reads `text` as the plain grammar reads `driver=text`
//!   (and `keyval` with `qom-type` likewise);
//! - errors are the typed `qemu_opts::Error`, and every message names the option;
//! - a decimal number is the same size in bytes (`parse_number` and `parse_size`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use qemu_opts::{Grammar, Opts, SizeUnit, parse_number, parse_size, split_commas};

const OPTION: &str = "-fuzz";

/// The invariants of one grammar's result on `text` (see the module docs).
fn check(text: &str, parsed: &qemu_opts::Result<Opts>, strict: bool) {
    match parsed {
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
    // Each grammar parses `text` once; the checks below share the results.
    let [loose, loose_driver, strict, strict_qom] = [
        Grammar::opts(),
        Grammar::opts().implied("driver"),
        Grammar::keyval(),
        Grammar::keyval().implied("qom-type"),
    ]
    .map(|grammar| Opts::parse(OPTION, text, grammar));
    check(text, &loose, false);
    check(text, &loose_driver, false);
    check(text, &strict, true);
    check(text, &strict_qom, true);
    if let Ok(strict) = &strict {
        assert_eq!(loose.as_ref(), Ok(strict), "{text:?}");
    }
    let first_has_equals = split_commas(text).first().is_some_and(|i| i.contains('='));
    if !first_has_equals {
        for (implied, grammar, key) in [
            (&loose_driver, Grammar::opts(), "driver"),
            (&strict_qom, Grammar::keyval(), "qom-type"),
        ] {
            let explicit = format!("{key}={text}");
            let written = Opts::parse(OPTION, &explicit, grammar);
            assert_eq!(
                implied.as_ref().ok(),
                written.as_ref().ok(),
                "{text:?} vs {explicit:?}"
            );
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
