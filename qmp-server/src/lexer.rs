//! The QMP input framer: splits a byte stream into JSON messages the way QEMU's
//! json-lexer and json-streamer do, without needing newlines.
//!
//! A message ends when its braces and brackets balance (clients such as `qemu.qmp` send
//! no newline after a command). A stray character, or a control character inside a
//! string, is reported at once (QEMU's "JSON parse error, stray '...'") and the framer
//! skips input until a structural character or a line end, as QEMU's lexer recovers.
//! QEMU's single-quoted strings and `\'` escapes are normalised into standard JSON, so
//! the frames it returns are plain JSON text for `serde_json`.
//!
//! Bounds: a frame longer than `max_len` bytes is a [`Frame::TooLong`] (the caller
//! disconnects), and nesting deeper than [`MAX_NESTING`] is an error. Bytes skipped in
//! recovery are never buffered, so memory stays bounded whatever a client sends.

/// The deepest nesting of objects and arrays a message may have (serde_json's own
/// recursion limit is 128; QEMU's is 1024).
pub const MAX_NESTING: i32 = 120;

const EXPECTING: &str = "JSON parse error, expecting value";

/// One item of input.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete JSON text (an object, array, string or keyword), normalised.
    Json(Vec<u8>),
    /// A lexical error: QEMU's description of it.
    Error(String),
    /// The message exceeded the length bound of `max_len` bytes; the client should be
    /// disconnected.
    TooLong {
        /// The framer's bound.
        max_len: usize,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// Between messages.
    Top,
    /// Inside an object or array.
    Container,
    /// A keyword or number at the top level, ended by any other character.
    Scalar,
    /// Inside a string; `quote` is `"` or `'`; `top` when the string is the message.
    Str { quote: u8, escape: bool, top: bool },
    /// After an error: skipping to a structural character or a control character.
    Recovery,
}

/// The streaming framer of one client connection.
#[derive(Debug)]
pub struct Framer {
    mode: Mode,
    buf: Vec<u8>,
    braces: i32,
    brackets: i32,
    max_len: usize,
}

fn is_keyword_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.')
}

fn is_json_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Where QEMU's lexer resynchronises after an error: structural characters, control
/// characters other than tab, and the bytes 0xFE/0xFF (which clients send on purpose).
fn ends_recovery(b: u8) -> bool {
    matches!(b, b'{' | b'}' | b'[' | b']' | b':' | b',') || (b < 0x20 && b != b'\t') || b >= 0xFE
}

/// QEMU's text for a stray token: invalid UTF-8 shows as U+FFFD.
fn stray(bytes: &[u8]) -> String {
    format!(
        "JSON parse error, stray '{}'",
        String::from_utf8_lossy(bytes)
    )
}

impl Framer {
    /// A framer whose messages may be at most `max_len` bytes long.
    pub fn new(max_len: usize) -> Framer {
        Framer {
            mode: Mode::Top,
            buf: Vec::new(),
            braces: 0,
            brackets: 0,
            max_len,
        }
    }

    /// Whether a message has started and not yet ended.
    pub fn is_partial(&self) -> bool {
        !self.buf.is_empty()
    }

    fn reset(&mut self, mode: Mode) {
        self.mode = mode;
        self.buf.clear();
        self.braces = 0;
        self.brackets = 0;
    }

    fn error(&mut self, out: &mut Vec<Frame>, desc: String) {
        out.push(Frame::Error(desc));
        self.reset(Mode::Recovery);
    }

    fn finish(&mut self, out: &mut Vec<Frame>) {
        out.push(Frame::Json(std::mem::take(&mut self.buf)));
        self.reset(Mode::Top);
    }

    /// Feeds bytes; appends complete frames to `out`. After a [`Frame::TooLong`] the
    /// rest of `input` is dropped and the framer starts afresh.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<Frame>) {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            if self.step(b, out) {
                i += 1;
            }
            if self.buf.len() > self.max_len {
                out.push(Frame::TooLong {
                    max_len: self.max_len,
                });
                self.reset(Mode::Top);
                return;
            }
        }
    }

    /// Processes one byte; returns false when the byte must be looked at again (in the
    /// new mode), as QEMU's lexer's LOOKAHEAD transitions do.
    fn step(&mut self, b: u8, out: &mut Vec<Frame>) -> bool {
        match self.mode {
            Mode::Recovery => {
                if ends_recovery(b) {
                    self.mode = Mode::Top;
                    return false;
                }
                true
            }
            Mode::Top => {
                match b {
                    _ if is_json_space(b) => {}
                    b'{' | b'[' => {
                        self.mode = Mode::Container;
                        return self.structural(b, out);
                    }
                    b'"' | b'\'' => {
                        self.buf.push(b'"');
                        self.mode = Mode::Str {
                            quote: b,
                            escape: false,
                            top: true,
                        };
                    }
                    b'}' | b']' | b':' | b',' => out.push(Frame::Error(EXPECTING.into())),
                    _ if is_keyword_byte(b) => {
                        self.buf.push(b);
                        self.mode = Mode::Scalar;
                    }
                    _ => self.error(out, stray(&[b])),
                }
                true
            }
            Mode::Scalar => {
                if is_keyword_byte(b) {
                    self.buf.push(b);
                    true
                } else {
                    self.finish(out);
                    false
                }
            }
            Mode::Str { quote, escape, top } => self.string(b, quote, escape, top, out),
            Mode::Container => match b {
                b'{' | b'[' | b'}' | b']' => self.structural(b, out),
                b'"' | b'\'' => {
                    self.buf.push(b'"');
                    self.mode = Mode::Str {
                        quote: b,
                        escape: false,
                        top: false,
                    };
                    true
                }
                b':' | b',' => {
                    self.buf.push(b);
                    true
                }
                _ if is_json_space(b) => {
                    // One space keeps tokens apart ("1 2" must not become "12").
                    if self.buf.last() != Some(&b' ') {
                        self.buf.push(b' ');
                    }
                    true
                }
                _ if is_keyword_byte(b) => {
                    self.buf.push(b);
                    true
                }
                _ => {
                    self.error(out, stray(&[b]));
                    true
                }
            },
        }
    }

    /// A brace or bracket inside (or starting) a message; QEMU's streamer counts them
    /// separately and ends the message when neither count is positive.
    fn structural(&mut self, b: u8, out: &mut Vec<Frame>) -> bool {
        self.buf.push(b);
        match b {
            b'{' => self.braces += 1,
            b'}' => self.braces -= 1,
            b'[' => self.brackets += 1,
            _ => self.brackets -= 1,
        }
        if self.braces + self.brackets > MAX_NESTING {
            self.error(out, "JSON nesting depth limit exceeded".into());
            return true;
        }
        let open = self.braces > 0 || self.brackets > 0;
        if !open || self.braces < 0 || self.brackets < 0 {
            self.finish(out);
        }
        true
    }

    fn string(&mut self, b: u8, quote: u8, escape: bool, top: bool, out: &mut Vec<Frame>) -> bool {
        if !(0x20..0xFE).contains(&b) {
            // QEMU reports the string so far, with the offending byte, as the token.
            let start = self.buf.iter().rposition(|&c| c == b'"').unwrap_or(0);
            let mut token = self.buf[start..].to_vec();
            token.push(b);
            self.error(out, stray(&token));
            return true;
        }
        let mut escape_next = false;
        if escape {
            if b == b'\'' {
                self.buf.pop(); // QEMU's `\'`: a plain quote in JSON
            }
            self.buf.push(b);
        } else if b == b'\\' {
            self.buf.push(b);
            escape_next = true;
        } else if b == quote {
            self.buf.push(b'"');
            if top {
                self.finish(out);
            } else {
                self.mode = Mode::Container;
            }
            return true;
        } else if b == b'"' {
            self.buf.extend_from_slice(b"\\\""); // inside a single-quoted string
        } else {
            self.buf.push(b);
        }
        self.mode = Mode::Str {
            quote,
            escape: escape_next,
            top,
        };
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8]) -> Vec<Frame> {
        let mut f = Framer::new(1 << 20);
        let mut out = Vec::new();
        f.feed(input, &mut out);
        out
    }

    fn json(s: &str) -> Frame {
        Frame::Json(s.as_bytes().to_vec())
    }

    #[test]
    fn messages_need_no_newline() {
        assert_eq!(
            frames(br#"{"execute":"stop"}{"execute":"cont"} [1]"#),
            [
                json(r#"{"execute":"stop"}"#),
                json(r#"{"execute":"cont"}"#),
                json("[1]")
            ]
        );
    }

    #[test]
    fn split_anywhere_gives_the_same_frames() {
        let input = br#"{"execute": "x", "id": "a}\"b", 'arguments': {'k': [1, 2]}}"#;
        let whole = frames(input);
        for cut in 0..input.len() {
            let mut f = Framer::new(1 << 20);
            let mut out = Vec::new();
            f.feed(&input[..cut], &mut out);
            f.feed(&input[cut..], &mut out);
            assert_eq!(out, whole, "cut at {cut}");
        }
        assert_eq!(
            whole,
            [json(
                r#"{"execute": "x", "id": "a}\"b", "arguments": {"k": [1, 2]}}"#
            )]
        );
    }

    #[test]
    fn single_quotes_become_json() {
        assert_eq!(frames(br#"{'id':'a"b\'c'}"#), [json(r#"{"id":"a\"b'c"}"#)]);
    }

    #[test]
    fn scalars_end_at_the_next_character() {
        assert!(frames(b"42").is_empty());
        assert_eq!(frames(b"42 "), [json("42")]);
        assert_eq!(frames(b"\"s\""), [json("\"s\"")]);
    }

    #[test]
    fn stray_characters_and_recovery() {
        assert_eq!(
            frames(b"@ garbage {\"a\":1}"),
            [
                Frame::Error("JSON parse error, stray '@'".into()),
                json("{\"a\":1}")
            ]
        );
        assert_eq!(frames(b"}"), [Frame::Error(EXPECTING.into())]);
        assert_eq!(
            frames(b"{\"id\": \"abc\n{\"a\":1}"),
            [
                Frame::Error("JSON parse error, stray '\"abc\n'".into()),
                json("{\"a\":1}")
            ]
        );
        assert_eq!(
            frames(b"{\"a\":\x01}"),
            [
                Frame::Error("JSON parse error, stray '\u{1}'".into()),
                Frame::Error(EXPECTING.into())
            ]
        );
        assert_eq!(
            frames(b"\xff"),
            [Frame::Error("JSON parse error, stray '\u{fffd}'".into())]
        );
    }

    #[test]
    fn unbalanced_close_ends_the_message() {
        assert_eq!(frames(b"{]"), [json("{]")]);
    }

    #[test]
    fn limits() {
        let mut f = Framer::new(16);
        let mut out = Vec::new();
        f.feed(&[b'['; 10], &mut out);
        assert!(out.is_empty() && f.is_partial());
        f.feed(b"\"aaaaaaaaaaaaaaaaaaaaaaa", &mut out);
        assert_eq!(out, [Frame::TooLong { max_len: 16 }]);
        assert!(!f.is_partial());
        let deep = vec![b'['; MAX_NESTING as usize + 1];
        assert_eq!(
            frames(&deep),
            [Frame::Error("JSON nesting depth limit exceeded".into())]
        );
    }
}
