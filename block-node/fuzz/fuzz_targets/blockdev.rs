//! Any UTF-8 string through `-blockdev` (dotted and JSON) and `-drive`: must not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        block_node::fuzz_parse(text);
    }
});
