//! Arbitrary bytes through the QMP framer, negotiation and dispatch:
//! `cargo +nightly fuzz run feed` in `qmp/`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| qmp::fuzz_feed(data));
