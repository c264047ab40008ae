//! The entry point of the fuzz target (`fuzz/`) and of the pseudo-random test.

use crate::{BlockdevOptions, drive};

/// Runs `text` through every parser of the crate: `-blockdev` as dotted text and as
/// JSON, and `-drive`. Returns nothing and never panics, whatever `text` is.
pub fn fuzz_parse(text: &str) {
    let _ = BlockdevOptions::parse("-blockdev", text);
    let _ = BlockdevOptions::from_keyval("--blockdev", text);
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_str(text) {
        let _ = BlockdevOptions::from_json(&map);
    }
    if let Ok(d) = drive::parse("-drive", text, &[]) {
        let _ = d.check("fuzz");
        let _ = drive::parse("-drive", text, &[d]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Strings built from the grammars' own pieces (keys, separators, JSON tokens),
    /// with multi-byte characters mixed in: parsing must end in a value or an error.
    fn random_text(rng: &mut fastrand::Rng) -> String {
        const PIECES: &[&str] = &[
            ",",
            ",,",
            "=",
            ".",
            "{",
            "}",
            "[",
            "]",
            ":",
            "\"",
            "driver",
            "raw",
            "file",
            "filename",
            "node-name",
            "cache",
            "direct",
            "on",
            "true",
            "read-only",
            "discard",
            "unmap",
            "aio",
            "io_uring",
            "if",
            "none",
            "id",
            "index",
            "unit",
            "bus",
            "x",
            "0",
            "99999999999",
            "é",
            "𝄞",
            "\0",
            " ",
        ];
        let len = rng.usize(0..24);
        (0..len)
            .map(|_| PIECES[rng.usize(..PIECES.len())])
            .collect()
    }

    #[test]
    fn pseudo_random_input_never_panics() {
        let mut rng = fastrand::Rng::with_seed(15);
        let mut parsed = 0;
        for _ in 0..20_000 {
            let text = random_text(&mut rng);
            fuzz_parse(&text);
            parsed += usize::from(BlockdevOptions::parse("-blockdev", &text).is_ok());
        }
        // The generator reaches past the first checks now and then.
        eprintln!("{parsed} of 20000 parsed");
    }
}
