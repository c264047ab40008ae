//! The fuzzing entry point: arbitrary bytes through the framer, the JSON reader, the
//! envelope checks, negotiation and dispatch, against a table of dummy commands.

use std::cell::RefCell;
use std::rc::Rc;

use serde_json::{Value, json};

use crate::commands::{Commands, no_arguments};
use crate::json;
use crate::lexer::{Frame, Framer};
use crate::protocol::{QmpError, Version, take_id};
use crate::session::{self, Session};

/// The largest message the fuzzed framer takes (small, so the bound is reached).
const FUZZ_MAX_LEN: usize = 4096;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct TypedArgs {
    id: String,
    #[serde(default)]
    force: Option<bool>,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    names: Vec<String>,
}

fn dummy_table() -> Commands {
    let commands = Commands::new();
    let version = Rc::new(RefCell::new(Version::default()));
    // Registration into a fresh table cannot clash; a failure here is a bug.
    let registered = session::register_builtins(&commands, &version)
        .and_then(|()| {
            commands.register("stop", |args| {
                no_arguments(args)?;
                Ok(json!({}))
            })
        })
        .and_then(|()| commands.register("echo", |args| Ok(Value::Object(args.clone()))))
        .and_then(|()| commands.register("fail", |_| Err(QmpError::device_not_found("\u{1}é\""))))
        .and_then(|()| {
            commands.register_typed("typed", |a: TypedArgs| {
                Ok(json!({"id": a.id, "force": a.force, "size": a.size, "n": a.names.len()}))
            })
        })
        .and_then(|()| commands.register_oob("oob", |_| Ok(json!(null))));
    assert!(registered.is_ok(), "dummy table: {registered:?}");
    commands
}

/// The `id` of a request frame that reads as a JSON object with one.
fn request_id(frame: &Frame) -> Option<Value> {
    match frame {
        Frame::Json(text) => take_id(&mut json::parse(text).ok()?),
        _ => None,
    }
}

/// Checks one reply: a single JSON object on one `\r\n`-terminated line, carrying
/// the request's `id` when it had one (QEMU echoes it whatever the outcome).
fn check_reply(line: &[u8], id: Option<Value>) {
    let body = line.strip_suffix(b"\r\n");
    assert!(body.is_some(), "reply without CRLF: {line:?}");
    let body = body.unwrap_or_default();
    assert!(!body.contains(&b'\n'), "reply spans lines: {line:?}");
    let parsed = serde_json::from_slice::<Value>(body);
    let Ok(Value::Object(mut reply)) = parsed else {
        panic!("reply is not a JSON object: {line:?}");
    };
    if let Some(id) = id {
        // Compared as the server prints it: the reply is that text read back.
        let printed = json::to_string(&id);
        let expected = serde_json::from_str::<Value>(&printed).ok();
        assert_eq!(reply.remove("id"), expected, "id not echoed: {line:?}");
    }
}

/// Feeds `data` through the framer and dispatch of two connections (one fresh, one
/// already negotiated with `oob`) against a table of dummy commands, once in one piece
/// and once split where `data`'s first byte says. For fuzzers (cargo-fuzz, AFL): it
/// must never panic, hang or grow memory without bound, whatever `data` holds.
///
/// # Panics
///
/// Only on a bug: a reply that is not one JSON object on one `\r\n`-terminated line.
pub fn fuzz_feed(data: &[u8]) {
    feed_counting(data);
}

/// [`fuzz_feed`], returning how many frames were answered and how many of the answers
/// were a `return` (the test checks that random input gets that far).
fn feed_counting(data: &[u8]) -> (usize, usize) {
    // The table holds no state between calls (its commands only read), so it is built
    // once per thread: building it cost more than feeding a short input.
    thread_local! {
        static COMMANDS: Commands = dummy_table();
    }
    COMMANDS.with(|commands| feed_with(commands, data))
}

fn feed_with(commands: &Commands, data: &[u8]) -> (usize, usize) {
    let (mut answered, mut returned) = (0, 0);
    let split = data
        .first()
        .map_or(0, |&b| usize::from(b) % (data.len() + 1));
    for start in [Session::default(), Session::negotiated_with_oob()] {
        let mut session = start;
        let mut framer = Framer::new(FUZZ_MAX_LEN);
        let mut frames = Vec::new();
        for chunk in [&data[..split], &data[split..]] {
            framer.feed(chunk, &mut frames);
            for frame in frames.drain(..) {
                let too_long = matches!(frame, Frame::TooLong { .. });
                let id = request_id(&frame);
                let response = session.respond(commands, frame);
                check_reply(&response.line, id);
                answered += 1;
                returned += usize::from(response.line.starts_with(b"{\"return\""));
                assert_eq!(response.disconnect, too_long);
                if response.disconnect {
                    // The server closes the connection: a new client starts afresh.
                    session = start;
                    framer = Framer::new(FUZZ_MAX_LEN);
                }
            }
        }
    }
    (answered, returned)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pieces of QMP, so that random strings get past the framer and into dispatch.
    const TOKENS: &[&[u8]] = &[
        b"{",
        b"}",
        b"[",
        b"]",
        b":",
        b",",
        b" ",
        b"\n",
        b"\"",
        b"'",
        b"\\",
        b"\\u00e9",
        b"\\ud83d",
        b"\"execute\"",
        b"\"exec-oob\"",
        b"\"arguments\"",
        b"\"id\"",
        b"\"enable\"",
        b"[\"oob\"]",
        b"\"qmp_capabilities\"",
        b"\"query-commands\"",
        b"\"query-version\"",
        b"\"stop\"",
        b"\"echo\"",
        b"\"fail\"",
        b"\"typed\"",
        b"\"oob\"",
        b"\"force\"",
        b"\"size\"",
        b"\"names\"",
        b"true",
        b"null",
        b"-1",
        b"1e999",
        b"18446744073709551616",
        b"0.5",
        b"\xff",
        b"\xc3",
        b"\x00",
        b"\x01",
        b"{\"execute\":\"qmp_capabilities\",\"arguments\":{\"enable\":[\"oob\"]}}",
        b"{\"execute\":\"typed\",\"arguments\":{\"id\":\"x\",\"size\":",
    ];

    fn random_input(rng: &mut fastrand::Rng) -> Vec<u8> {
        let mut out = Vec::new();
        let pieces = rng.usize(..64);
        for _ in 0..pieces {
            match rng.usize(..4) {
                0 => out.extend((0..rng.usize(..8)).map(|_| rng.u8(..))),
                1 if rng.usize(..50) == 0 => out.extend(std::iter::repeat_n(b'[', 130)),
                1 if rng.usize(..50) == 0 => out.extend(std::iter::repeat_n(b'a', FUZZ_MAX_LEN)),
                _ => out.extend_from_slice(TOKENS[rng.usize(..TOKENS.len())]),
            }
        }
        out
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // Seeded: every run feeds the same inputs.
        let mut rng = fastrand::Rng::with_seed(0x9E37_79B9_7F4A_7C15);
        let (mut answered, mut returned) = (0, 0);
        for _ in 0..4000 {
            let input = random_input(&mut rng);
            let (a, r) = feed_counting(&input);
            answered += a;
            returned += r;
        }
        // The inputs reach dispatch, not only the framer's error paths.
        assert!(answered > 10_000 && returned > 500, "{answered} {returned}");
    }

    #[test]
    fn known_inputs_reach_dispatch() {
        for input in [
            &b""[..],
            b"{\"execute\":\"qmp_capabilities\"}{\"execute\":\"typed\",\"arguments\":{\"id\":5}}",
            b"{\"exec-oob\":\"oob\",\"id\":[1,{}]}",
            b"{'execute':'echo','arguments':{'a':'\\'\"'}} 42 \"s\" ]",
        ] {
            fuzz_feed(input);
        }
        let negotiate_then_typed =
            b"{'execute':'qmp_capabilities'}{'execute':'typed','arguments':{'id':'x'}}";
        // Fresh session: both return; negotiated session: the second `qmp_capabilities`
        // is refused, `typed` returns.
        assert_eq!(feed_counting(negotiate_then_typed), (4, 3));
    }
}
