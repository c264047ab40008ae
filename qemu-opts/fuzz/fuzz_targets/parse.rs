//! Any UTF-8 string through every grammar and accessor of qemu-opts: must not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        qemu_opts::fuzz_parse(text);
    }
});
