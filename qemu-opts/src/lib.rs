//! QEMU-style option strings: `key=value,...` as `-drive`, `-device`, `-object` and
//! qemu-storage-daemon's `--blockdev` and `--export` take them.
//!
//! The concept: one parser for the option grammar QEMU users already write.
//! [`split_commas`] cuts at single commas (`,,` is a literal comma); [`Opts::parse`]
//! turns the items into ordered `(key, value)` pairs under a [`Grammar`] (QEMU's lenient
//! `QemuOpts` or its strict `keyval`, either with an *implied* first key); the typed
//! accessors read values as QEMU spells them ([`parse_bool`], [`parse_number`],
//! [`parse_size`]) and [`Opts::finish`] refuses keys nobody asked for. Two options whose
//! meaning QEMU defines beyond the grammar are parsed here whole, with QEMU's checks and
//! words: `-smp` ([`SmpTopology`]) and `-boot` ([`BootOptions`]).
//!
//! The guarantee: parsing and every accessor return an [`Error`] that names the option
//! and the key, never panic, and never accept a key silently (see [`fuzz_parse`], the
//! entry point a cargo-fuzz target calls, under `fuzz/`).
//!
//! ```
//! use qemu_opts::{Grammar, Opts, SizeUnit};
//!
//! let mut export = Opts::parse(
//!     "--export",
//!     "type=vhost-user-blk,id=e0,addr.path=/run/a,,b.sock,writable=on,num-queues=2",
//!     Grammar::keyval(),
//! )?;
//! assert_eq!(export.required("type")?, "vhost-user-blk");
//! assert_eq!(export.string("addr.path").as_deref(), Some("/run/a,b.sock"));
//! assert!(export.flag("writable", false)?);
//! assert_eq!(export.number::<u16>("num-queues")?, Some(2));
//! assert_eq!(
//!     export.finish().unwrap_err().to_string(),
//!     "--export: invalid parameter 'id'"
//! );
//!
//! // `-m 2G`: the implied key, and a size whose bare number is in MiB.
//! let mut m = Opts::parse("-m", "2G", Grammar::opts().implied("size"))?;
//! assert_eq!(m.size("size", SizeUnit::MiB)?, Some(2 << 30));
//! m.finish()?;
//! # Ok::<(), qemu_opts::Error>(())
//! ```
//!
//! See `DESIGN.md` for the two grammars and where this crate departs from QEMU.
#![deny(missing_docs)]

mod boot;
mod error;
mod opts;
mod smp;
mod value;

pub use boot::BootOptions;
pub use error::{Error, Result};
pub use opts::{Grammar, Opts, split_commas};
pub use smp::SmpTopology;
pub use value::{SizeUnit, parse_bool, parse_number, parse_size};

/// Runs `text` through every grammar and every accessor; for fuzzers (`fuzz/`) and the
/// pseudo-random test below. It returns nothing and never panics, whatever `text` is.
pub fn fuzz_parse(text: &str) {
    let grammars = [
        Grammar::opts(),
        Grammar::opts().implied("driver"),
        Grammar::keyval(),
        Grammar::keyval().implied("qom-type"),
    ];
    for grammar in grammars {
        let Ok(mut opts) = Opts::parse("-fuzz", text, grammar) else {
            continue;
        };
        let keys: Vec<String> = opts.iter().map(|(k, _)| k.to_owned()).collect();
        let _ = opts.to_string();
        let _ = opts.unknown_keys(&["driver", "id"]);
        for (i, key) in keys.iter().enumerate() {
            let _ = opts.get(key);
            match i % 5 {
                0 => drop(opts.flag(key, false)),
                1 => drop(opts.number::<u16>(key)),
                2 => drop(opts.size(key, SizeUnit::MiB)),
                3 => drop(opts.required(key)),
                _ => drop(opts.finish()),
            }
        }
        let _ = opts.finish().map_err(|e| e.reason());
        if let Some(key) = keys.first() {
            opts.remove(key);
        }
    }
    let _ = parse_size(text, SizeUnit::Bytes);
    let _ = parse_number(text);
    let _ = SmpTopology::parse("-smp", text, "pc", 255);
    let _ = BootOptions::default().apply("-boot", text);
}

/// The README's example, run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    /// Pseudo-random numbers, reproducible within a toolchain: SipHash (std's
    /// `DefaultHasher`, fixed keys) of a counter. No dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            use std::hash::Hasher;
            self.0 += 1;
            let mut h = std::collections::hash_map::DefaultHasher::new();
            h.write_u64(self.0);
            h.finish()
        }
    }

    /// Strings made mostly of the grammar's own characters, with multi-byte ones mixed
    /// in (a byte-index slip would panic on them).
    fn random_text(rng: &mut Rng) -> String {
        const ALPHABET: &[char] = &[
            ',', ',', ',', '=', '=', 'a', 'b', 'k', '0', '1', '9', 'x', 'M', 'G', '.', '-', ' ',
            'é', '€', '𝄞', '\0',
        ];
        let len = rng.next() % 24;
        (0..len)
            .map(|_| ALPHABET[(rng.next() % ALPHABET.len() as u64) as usize])
            .collect()
    }

    #[test]
    fn pseudo_random_strings_never_panic_and_round_trip() {
        let mut rng = Rng(0);
        let mut parsed = 0;
        for _ in 0..5000 {
            let text = random_text(&mut rng);
            fuzz_parse(&text);
            if let Ok(opts) = Opts::parse("-x", &text, Grammar::opts()) {
                parsed += 1;
                let again = Opts::parse("-x", &opts.to_string(), Grammar::opts());
                assert_eq!(again.as_ref(), Ok(&opts), "{text:?} -> {opts}");
            }
        }
        assert!(parsed > 500, "the generator reaches the parser: {parsed}");
    }
}
