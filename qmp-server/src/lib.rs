//! QEMU's machine protocol (QMP), byte-compatible with QEMU 10 on the wire.
//!
//! The crate owns the protocol and nothing of the machine: the framer (QEMU's
//! brace-counting JSON streamer, no newline needed), QEMU's JSON output format, the
//! greeting, `qmp_capabilities` negotiation (with `oob`), the request envelope checks,
//! the [`Commands`] table that the owners of commands register into, [`QmpEvents`]
//! (emitted from any thread, delivered in order) and a [`Server`] on a unix socket
//! served by an [`AioContext`](aio_context::AioContext).
//!
//! The invariant: nothing a client sends can end the process or reach another client.
//! Input is bounded (message length, nesting depth, output backlog, client count), every
//! malformed input gets QEMU's error reply, and a handler runs with no borrow of the
//! server held, so it may poll the context, register commands or emit events.
//!
//! Transport-free use: a [`Framer`] splits bytes into [`Frame`]s and a [`Session`]
//! answers them; [`Server`] is that pair plus a socket, an output buffer and events.
//!
//! ```
//! use qmp::{Commands, Framer, Session, Version, greeting, no_arguments};
//!
//! let commands = Commands::new();
//! commands.register("query-answer", |args| {
//!     no_arguments(args)?;
//!     Ok(serde_json::json!(42))
//! })?;
//! let mut out = greeting(&Version::default());
//! let (mut framer, mut session) = (Framer::new(1 << 20), Session::default());
//! let mut frames = Vec::new();
//! framer.feed(br#"{"execute":"qmp_capabilities"}{"execute":"query-answer","id":7}"#, &mut frames);
//! for frame in frames {
//!     out.extend(session.respond(&commands, frame).line);
//! }
//! let text = String::from_utf8(out)?;
//! assert!(text.ends_with("{\"return\": {}}\r\n{\"return\": 42, \"id\": 7}\r\n"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! See `DESIGN.md` for the threat model and the ordering rules.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod client;
mod commands;
mod events;
mod fuzz;
mod json;
mod lexer;
mod protocol;
mod server;
mod session;
mod socket;

use std::path::PathBuf;

pub use commands::{CommandFn, Commands, no_arguments, parse_args};
pub use events::QmpEvents;
pub use fuzz::fuzz_feed;
pub use lexer::{Frame, Framer, MAX_NESTING};
pub use protocol::{ErrorClass, QmpError, QmpResult, Version, greeting};
pub use server::{AfterReply, Server};
pub use session::{Response, Session};

/// The default bound on one message's length.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 8 << 20;

/// Errors of the server's setup and of the command table (protocol errors go to the
/// client as replies, never here).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The socket could not be set up.
    #[error("QMP socket: {0}")]
    Socket(String),
    /// A command name was registered twice.
    #[error("QMP command '{0}' is already registered")]
    DuplicateCommand(String),
    /// The server already listens (one socket per server).
    #[error("the QMP monitor already listens on {0}")]
    AlreadyListening(PathBuf),
    /// A system call failed.
    #[error("QMP monitor: {0}")]
    Io(#[from] std::io::Error),
}

/// `Result` with [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
