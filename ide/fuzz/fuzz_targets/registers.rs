//! cargo-fuzz target: the ATA register interface, ATAPI packets and PRD tables
//! (see `ops.rs`).
#![no_main]

mod ops;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ops::run(data);
});
