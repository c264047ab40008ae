//! qemu-storage-daemon's `--blockdev`, `--export`, `--object`, `--chardev`/`--monitor`,
//! `--pidfile` and `--daemonize` options, serving block devices over vhost-user
//! (`vhost-user-blk`, `vhost-user-scsi`) with a QMP monitor. It is the program behind
//! `vmm-bin storage-daemon`:
//!
//! ```text
//! vmm-bin storage-daemon \
//!   --blockdev driver=file,node-name=file0,filename=disk.img,cache.direct=on,aio=io_uring \
//!   --blockdev driver=raw,node-name=disk0,file=file0 \
//!   --export type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=/tmp/vhost.sock,writable=on,num-queues=2
//! ```
//!
//! Options are QEMU "keyval" lists (`key=value,...`, a literal comma written `,,`), read
//! by the `qemu-opts` crate: `--export` in its strict grammar (each key once),
//! `--object` in the lenient one (`iothread,id=..`, as `-object` takes it).
//! `--blockdev` is the block-node crate's (dotted or JSON, as qemu-storage-daemon takes
//! it), and so is the registry the nodes live in: the exports attach to it as the VMM's
//! devices do, and the QMP monitor registers `block_node::qmp` on the same one.
//! Unknown options, unknown keys and bad values fail with a message naming them.
//!
//! The crate composes the others; it holds no concept of its own beyond the daemon's
//! configuration ([`parse_args`] → [`DaemonConfig`]) and its life ([`run`]: start,
//! serve, shut down as qemu-storage-daemon does). [`main`] is both together, with an
//! exit status.
//!
//! ```
//! let args: Vec<String> = [
//!     "--blockdev", "driver=file,node-name=disk0,filename=disk.img",
//!     "--export", "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path=/tmp/vu.sock",
//! ]
//! .map(String::from)
//! .to_vec();
//! let config = storage_daemon::parse_args(&args)?;
//! assert_eq!(config.exports[0].kind, storage_daemon::ExportKind::Blk);
//! assert_eq!(config.exports[0].serial, "disk0"); // virtio-blk's default: the node name
//! # Ok::<(), storage_daemon::Error>(())
//! ```
//!
//! See `DESIGN.md` for the threads and the order of the shutdown.
#![deny(missing_docs)]

mod args;
mod config;
mod exports;
mod monitor;
mod process;
mod scsi;
mod serve;

pub use aio_context::IothreadObjectError;
pub(crate) use config::export_spec;
pub use config::{
    ChardevSpec, DaemonConfig, ExportAddr, ExportKind, ExportSpec, IothreadSpec, parse_args,
};
pub use process::ProcessError;
pub use serve::run;

/// What was wrong with the command line or with starting the exports.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A malformed `--export` or `--object` (qemu-opts names the option and key).
    #[error("{0}")]
    Option(#[from] qemu_opts::Error),
    /// A `--blockdev` refused by its grammar or by the node registry.
    #[error("--blockdev: {0}")]
    Blockdev(#[source] block_node::Error),
    /// An option we do not know.
    #[error("unknown option '{0}' (supported: --blockdev, --export, --object)")]
    UnknownOption(String),
    /// An option without its argument.
    #[error("{0} needs an argument")]
    MissingArgument(String),
    /// No `--export`.
    #[error("nothing to do: give at least one --export")]
    NothingToDo,
    /// Two `--object iothread` with one id.
    #[error("--object iothread,id={0}: duplicate id")]
    DuplicateIothread(String),
    /// Two exports with one id (qemu-storage-daemon's words).
    #[error("--export: Block export id '{0}' is already in use")]
    DuplicateExport(String),
    /// Two exports on one socket.
    #[error("--export {id}: addr.path '{path}' is already the socket of export '{other}'")]
    SameSocket {
        /// The later export.
        id: String,
        /// The socket.
        path: String,
        /// The earlier export.
        other: String,
    },
    /// An export naming an iothread that no `--object` made.
    #[error("--export id={id}: iothread \"{iothread}\" not found")]
    NoIothread {
        /// The export.
        id: String,
        /// The missing iothread.
        iothread: String,
    },
    /// An export that cannot start (its node, its device, its socket).
    #[error("--export {id}: {message}")]
    Export {
        /// The export.
        id: String,
        /// What failed.
        message: String,
    },
    /// An `--object iothread` that cannot start.
    #[error("{0}")]
    Iothread(#[from] IothreadObjectError),
    /// `--pidfile` or `--daemonize` failed.
    #[error("{0}")]
    Process(#[from] ProcessError),
    /// Process setup (signals, threads).
    #[error("{0}")]
    Setup(String),
}

/// `Result` with this module's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// `vmm-bin storage-daemon ARGS`: returns the process exit status.
pub fn main(args: &[String]) -> i32 {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!(
            "usage: vmm-bin storage-daemon --blockdev OPTIONS... --export OPTIONS...\n\n{}",
            USAGE
        );
        return 0;
    }
    let config = match parse_args(args) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("{e}");
            return 1;
        }
    };
    match run(&config) {
        Ok(()) => 0,
        Err(e) => {
            tracing::error!("{e}");
            1
        }
    }
}

const USAGE: &str = "\
  --blockdev driver=file,node-name=NAME,filename=PATH[,cache.direct=on|off][,aio=io_uring][,read-only=on|off]
  --blockdev driver=raw,node-name=NAME,file=NODE[,read-only=on|off]
  --blockdev {\"driver\":\"raw\",\"node-name\":NAME,\"file\":{\"driver\":\"file\",\"filename\":PATH}}
  --export type=vhost-user-blk|vhost-user-scsi,id=ID,node-name=NODE,
           addr.type=unix,addr.path=SOCKET | addr.type=fd,addr.str=FD
           [,writable=on|off][,num-queues=N][,logical-block-size=512|4096][,serial=STR]
           [,iothread=ID]
  --object iothread,id=ID[,poll-max-ns=NS][,poll-grow=N][,poll-shrink=N]
  --chardev socket,id=ID,path=SOCKET,server=on[,wait=on|off]
  --monitor [chardev=]ID[,mode=control]
  --pidfile PATH
  --daemonize";

/// The README's example, run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
