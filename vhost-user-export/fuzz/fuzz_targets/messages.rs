//! cargo-fuzz target: the vhost-user message stream of the export, as a hostile
//! frontend sends it (`cargo +nightly fuzz run messages` in `vhost-user-export/`).
//!
//! One export serves a virtio-blk device over a 1 MiB image on an iothread with
//! io_uring, on a Unix socket, for the whole fuzzing process (as in the storage
//! daemon). Each input is one frontend connection: raw message bytes (any header,
//! any size: truncated, huge, unknown requests) sent with fds attached (a shared
//! memfd for SET_MEM_TABLE/ADD_MEM_REG, eventfds for kick/call, pipes where an eventfd
//! is expected, more fds than the protocol allows), interleaved with writes into the
//! shared memory (rings and requests), kicks, and a truncation of the memfd under the
//! export (memory that shrinks). Then the frontend hangs up.
//!
//! Invariants checked (beyond "no panic"):
//! - every byte the export sends back is a well-formed reply: a 12-byte header with
//!   the REPLY flag and version 1, a request code this frontend sent, a payload of
//!   the size the header gives; no partial reply;
//! - the export survives and stays consistent: after the hang-up, a fresh frontend
//!   gets GET_FEATURES answered with the device's features (this also proves that the
//!   disconnect's drain of the running rings finished; a hang is a timeout, a crash).
//!
//! Input format (see `seeds/gen.py`, which also replays QEMU's captured start-up):
//! records `{u8 kind, ...}`: kind 0 = message `{u8 fds, u16 len, len bytes}`, 1 = write
//! to shared memory `{u32 offset, u8 n, n bytes}`, 2 = kick `{u8 eventfd index}`,
//! 3 = truncate the memfd `{u8 pages}`.
#![no_main]

#[path = "../../../scripts/fuzz-common/input.rs"]
mod input;

use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use aio_context::IoThread;
use block_dma::{Drive, ErrorPolicy, FileBackend, FileOptions};
use input::Input;
use nix::sys::eventfd::EventFd;
use nix::sys::memfd::{MFdFlags, memfd_create};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use vhost_user_export::{ExportServer, VhostUserDevice};
use virtio_blk::{BlkOptions, VirtioBlk};
use virtio_core::VirtioDevice;

/// The shared memory's size: QEMU's captured table (a 32 MiB guest) fits.
const MEMFD_SIZE: u64 = 64 << 20;
/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const PROTOCOL_FEATURES: u64 = 1 << 30;
/// Header flags: version 1, reply.
const VERSION: u32 = 0x1;
const REPLY: u32 = 0x4;
/// A hung export is a bug: reads give up after this.
const HANG: Duration = Duration::from_secs(20);

struct Export {
    path: PathBuf,
    features: u64,
    _dir: tempfile::TempDir,
}

/// The export, started once per process.
fn export() -> &'static Export {
    static EXPORT: OnceLock<Export> = OnceLock::new();
    EXPORT.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let image = dir.path().join("disk.img");
        std::fs::write(&image, vec![0u8; 1 << 20]).expect("the image");
        let backend = FileBackend::open(&FileOptions::new(&image)).expect("the image opens");
        let drive = Drive::new(
            "disk",
            "disk",
            Arc::new(backend),
            ErrorPolicy::default(),
            None,
        );
        let blk = VirtioBlk::new(drive, BlkOptions::default()).expect("default options");
        let features = blk.features() | PROTOCOL_FEATURES;
        let iothread = Arc::new(IoThread::spawn("fuzz-export").expect("an iothread"));
        let device = VhostUserDevice::new(Box::new(blk), iothread);
        let path = dir.path().join("export.sock");
        let server = ExportServer::bind(&path, device).expect("the socket binds");
        std::thread::spawn(move || server.run(&AtomicBool::new(false)));
        Export {
            path,
            features,
            _dir: dir,
        }
    })
}

/// The fds one message carries: `spec` low 3 bits = count, bits 3-4 = kind
/// (memfd, eventfd, pipe, alternating eventfd/memfd), bit 7 = 40 eventfds instead.
fn fds_for(spec: u8, memfd: &OwnedFd, kicks: &mut Vec<EventFd>) -> Vec<OwnedFd> {
    let eventfd = |kicks: &mut Vec<EventFd>| {
        let e = EventFd::new().expect("an eventfd");
        let dup = e.as_fd().try_clone_to_owned().expect("dup");
        kicks.push(e);
        dup
    };
    if spec & 0x80 != 0 {
        return (0..40).map(|_| eventfd(kicks)).collect();
    }
    (0..spec & 7)
        .map(|i| match (spec >> 3 & 3, i % 2) {
            (0, _) | (3, 1) => memfd.try_clone().expect("dup"),
            (1, _) | (3, _) => eventfd(kicks),
            _ => nix::unistd::pipe().expect("a pipe").0,
        })
        .collect()
}

/// The request codes in the byte stream sent, framed as the export reads it (a
/// 12-byte header, then the size it gives), whatever the records' boundaries were.
fn requests(mut sent: &[u8]) -> Vec<u32> {
    let mut codes = Vec::new();
    while sent.len() >= 12 {
        let word = |at: usize| u32::from_le_bytes(sent[at..at + 4].try_into().unwrap());
        codes.push(word(0));
        let next = 12usize.saturating_add(word(8) as usize);
        sent = sent.get(next..).unwrap_or_default();
    }
    codes
}

/// Checks the reply stream: whole, well-formed replies to requests that were sent.
fn check_replies(replies: &[u8], sent: &[u8]) {
    let sent = requests(sent);
    let mut rest = replies;
    while !rest.is_empty() {
        assert!(rest.len() >= 12, "a partial reply header: {rest:02x?}");
        let word = |at: usize| u32::from_le_bytes(rest[at..at + 4].try_into().unwrap());
        let (request, flags, size) = (word(0), word(4), word(8) as usize);
        assert_eq!(flags & 0x3, VERSION, "reply version: {flags:#x}");
        assert_ne!(flags & REPLY, 0, "reply flag: {flags:#x}");
        assert!(sent.contains(&request), "a reply to {request}, never sent");
        assert!(
            rest.len() >= 12 + size,
            "a reply cut short: {size} bytes announced"
        );
        rest = &rest[12 + size..];
    }
}

/// A fresh frontend asks for the features: the export still serves, and consistently.
fn check_alive(export: &Export) {
    let mut s = UnixStream::connect(&export.path).expect("the export still listens");
    s.set_read_timeout(Some(HANG)).unwrap();
    let mut get_features = [0u8; 12];
    get_features[..4].copy_from_slice(&1u32.to_le_bytes());
    get_features[4..8].copy_from_slice(&VERSION.to_le_bytes());
    s.write_all(&get_features).expect("the export reads");
    let mut reply = [0u8; 20];
    s.read_exact(&mut reply)
        .expect("the export answers a fresh frontend (hung or dead?)");
    assert_eq!(reply[..4], 1u32.to_le_bytes());
    assert_eq!(reply[4..8], (VERSION | REPLY).to_le_bytes());
    assert_eq!(reply[8..12], 8u32.to_le_bytes());
    assert_eq!(reply[12..], export.features.to_le_bytes());
}

fn send(sock: RawFd, bytes: &[u8], fds: &[OwnedFd]) -> bool {
    let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
    let cmsg = [ControlMessage::ScmRights(&raw)];
    let cmsgs: &[ControlMessage] = if raw.is_empty() { &[] } else { &cmsg };
    let iov = [std::io::IoSlice::new(bytes)];
    // The export may have hung up already (a bad message): stop sending then.
    sendmsg::<()>(sock, &iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None).is_ok()
}

fn run(data: &[u8]) {
    let export = export();
    let memfd = memfd_create("fuzz-guest", MFdFlags::MFD_CLOEXEC).expect("a memfd");
    nix::unistd::ftruncate(&memfd, MEMFD_SIZE as i64).expect("sized");
    let memory = std::fs::File::from(memfd.try_clone().expect("dup"));
    let stream = UnixStream::connect(&export.path).expect("the export listens");
    stream.set_read_timeout(Some(HANG)).unwrap();
    let mut reader = stream.try_clone().expect("dup");
    let replies = std::thread::spawn(move || {
        let mut all = Vec::new();
        // A hang-up with our message unread reads as ECONNRESET: a hang-up too.
        let res = reader.read_to_end(&mut all);
        let hung = res
            .as_ref()
            .is_err_and(|e| matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut));
        (all, !hung)
    });
    let mut kicks = Vec::new();
    let mut sent = Vec::new();
    let mut input = Input(data);
    let mut open = true;
    while open {
        let Some(kind) = input.u8() else { break };
        match kind % 4 {
            0 => {
                let (Some(spec), Some(len)) = (input.u8(), input.u16()) else {
                    break;
                };
                let Some(bytes) = input.bytes(usize::from(len)) else {
                    break;
                };
                let fds = fds_for(spec, &memfd, &mut kicks);
                open = send(stream.as_raw_fd(), bytes, &fds);
                if open {
                    sent.extend_from_slice(bytes);
                }
            }
            1 => {
                use std::os::unix::fs::FileExt;
                let (Some(off), Some(n)) = (input.u32(), input.u8()) else {
                    break;
                };
                let Some(bytes) = input.bytes(usize::from(n)) else {
                    break;
                };
                let _ = memory.write_all_at(bytes, u64::from(off) % MEMFD_SIZE);
            }
            2 => {
                let Some(i) = input.u8() else { break };
                if let Some(k) = kicks.get(usize::from(i)) {
                    let _ = k.write(1);
                }
            }
            _ => {
                // The frontend shrinks its memory under the export (SIGBUS there).
                let Some(pages) = input.u8() else { break };
                let _ = nix::unistd::ftruncate(&memfd, i64::from(pages) * 4096);
            }
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let (replies, read_ok) = replies.join().expect("the reader thread");
    assert!(
        read_ok,
        "the export neither answered nor hung up within {HANG:?}"
    );
    check_replies(&replies, &sent);
    check_alive(export);
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| run(data));
