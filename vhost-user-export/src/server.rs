//! The export's socket: one frontend at a time, served until it disconnects, then the
//! next.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::message::MAX_ATTACHED_FD_ENTRIES;
use vhost::vhost_user::{BackendReqHandler, Error};

use ram_block::FaultReport;

use super::VhostUserDevice;
use crate::channel::{BackendChannel, ConfigNotice, SET_BACKEND_REQ_FD};

/// A listening export.
pub struct ExportServer {
    listener: UnixListener,
    /// The socket file (empty for a listener passed by fd: nothing to remove).
    path: PathBuf,
    device: Arc<Mutex<VhostUserDevice>>,
    /// Set by [`ExportServer::shut_down`]: [`ExportServer::run`] returns.
    shutting_down: AtomicBool,
    /// A duplicate of the connected frontend's socket, to end its session from
    /// another thread.
    connection: Mutex<Option<OwnedFd>>,
    /// The device's backend channel (config-change notices).
    channel: Arc<BackendChannel>,
}

impl ExportServer {
    /// Listens on `path` (a stale socket file there is replaced).
    ///
    /// # Errors
    ///
    /// The socket's error, a path that exists and is not a socket, or an empty path
    /// (Linux would bind an abstract socket, which no file permission protects).
    pub fn bind(path: &Path, device: VhostUserDevice) -> std::io::Result<ExportServer> {
        use std::os::unix::fs::FileTypeExt;
        if path.as_os_str().is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "an empty socket path would bind an abstract socket",
            ));
        }
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(std::io::Error::other(format!(
                    "{} exists and is not a socket",
                    path.display()
                )));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        let mut server = ExportServer::from_listener(listener, device);
        server.path = path.to_owned();
        Ok(server)
    }

    /// Serves on a socket that already listens (qemu-storage-daemon's `addr.type=fd`:
    /// the caller passed it); no socket file is removed when the server goes.
    pub fn from_listener(listener: UnixListener, device: VhostUserDevice) -> ExportServer {
        let channel = device.channel.clone();
        ExportServer {
            channel,
            listener,
            path: PathBuf::new(),
            device: Arc::new(Mutex::new(device)),
            shutting_down: AtomicBool::new(false),
            connection: Mutex::new(None),
        }
    }

    /// The socket path (empty for a listener passed by fd).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tells the connected frontend that the device's config space changed (a
    /// `block_resize` changed virtio-blk's capacity): `VHOST_USER_BACKEND_CONFIG_CHANGE_MSG`
    /// on the backend channel, if the frontend negotiated `BACKEND_REQ` and `CONFIG`.
    /// Callable from any thread; never blocks on the frontend.
    pub fn config_changed(&self) -> ConfigNotice {
        self.channel.config_changed()
    }

    /// Whether a frontend is connected now.
    pub fn connected(&self) -> bool {
        lock(&self.connection).is_some()
    }

    /// Makes [`ExportServer::run`] return, from any thread: no new frontend is
    /// accepted, and the connected one (if any) is disconnected (its rings are
    /// stopped after their requests in flight complete, as on any disconnect).
    pub fn shut_down(&self) {
        use nix::sys::socket::{Shutdown, shutdown};
        self.shutting_down.store(true, Ordering::SeqCst);
        // shutdown(2) on a listening unix socket makes a blocked accept(2) fail with
        // EINVAL; on a connection it makes the session's next read see end of file.
        let _ = shutdown(self.listener.as_raw_fd(), Shutdown::Both);
        if let Some(fd) = lock(&self.connection).as_ref() {
            let _ = shutdown(fd.as_raw_fd(), Shutdown::Both);
        }
    }

    /// Stops the current frontend's queues, draining the requests in flight (the
    /// daemon's exit; the connection itself ends with the process). Waits for the
    /// device at most until `deadline` (a serving thread may be stuck on a frontend);
    /// false if it could not be had.
    pub fn stop_queues(&self, deadline: std::time::Instant) -> bool {
        loop {
            match self.device.try_lock() {
                Ok(mut device) => break device.disconnect(),
                Err(std::sync::TryLockError::Poisoned(e)) => break e.into_inner().disconnect(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    if std::time::Instant::now() >= deadline {
                        return false;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
        true
    }

    /// Serves frontends one after another until `stop` is set (checked between
    /// connections).
    pub fn run(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) && !self.shutting_down.load(Ordering::SeqCst) {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) if self.shutting_down.load(Ordering::SeqCst) => break,
                Err(e) => {
                    tracing::error!("vhost-user: accept on {}: {e}", self.path.display());
                    continue;
                }
            };
            let session = self
                .device
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .begin_session();
            let faults = match session {
                Ok(f) => f,
                Err(e) => {
                    tracing::error!(
                        "vhost-user: {}: cannot serve a frontend: {e}",
                        self.path.display()
                    );
                    continue;
                }
            };
            match stream.try_clone() {
                Ok(dup) => *lock(&self.connection) = Some(OwnedFd::from(dup)),
                Err(e) => {
                    tracing::error!(
                        "vhost-user: {}: cannot serve a frontend: {e}",
                        self.path.display()
                    );
                    continue;
                }
            }
            // A shut_down between accept and the line above found no connection.
            if self.shutting_down.load(Ordering::SeqCst) {
                *lock(&self.connection) = None;
                break;
            }
            tracing::debug!(socket = %self.path.display(), "vhost-user: frontend connected");
            let mut handler = BackendReqHandler::from_stream(stream, self.device.clone());
            loop {
                if !wait_for_message(handler.as_raw_fd(), &faults) {
                    tracing::warn!(
                        "vhost-user: {}: an access to the frontend's memory faulted (it was truncated?): its memory reads as zeros now; closing this connection",
                        self.path.display()
                    );
                    break;
                }
                match check_fds(handler.as_raw_fd()) {
                    Err(e) => {
                        tracing::warn!("vhost-user: {e}; closing this connection");
                        break;
                    }
                    Ok(Some(channel)) => self.channel.set_socket(Some(channel)),
                    Ok(None) => {}
                }
                match handler.handle_request() {
                    Ok(()) => {}
                    Err(Error::Disconnected | Error::PartialMessage) => break,
                    Err(Error::SocketBroken(_)) => break,
                    Err(e) => {
                        // A bad message: the reply (if any) carried the error; a broken
                        // frontend is dropped, the export keeps serving the next one.
                        tracing::warn!("vhost-user: {e}; closing this connection");
                        break;
                    }
                }
            }
            self.device
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .disconnect();
            *lock(&self.connection) = None;
            tracing::debug!(socket = %self.path.display(), "vhost-user: frontend disconnected");
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for ExportServer {
    fn drop(&mut self) {
        if !self.path.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Waits until the frontend's socket has something to read (a message, end of file or
/// an error: the protocol library reports those), or its memory faulted (false).
fn wait_for_message(sock: RawFd, faults: &FaultReport) -> bool {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    // SAFETY: `sock` is the connection's socket, open for this whole call (the
    // handler that owns it outlives the call).
    let sock = unsafe { BorrowedFd::borrow_raw(sock) };
    loop {
        let mut fds = [
            PollFd::new(sock, PollFlags::POLLIN),
            PollFd::new(faults.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Err(nix::errno::Errno::EINTR) => continue,
            _ if faults.faulted() => return false,
            _ => return true,
        }
    }
}

/// The size of a vhost-user message header: request code, flags, payload size.
const HEADER_LEN: usize = 12;

/// How long [`check_fds`] waits between looks at a header that has only partly
/// arrived.
const PARTIAL_HEADER_WAIT: std::time::Duration = std::time::Duration::from_millis(1);

/// Refuses the next message if its header arrives with more fds than the protocol
/// library receives, or split after the fds it carries. Looks with `MSG_PEEK` (which
/// receives copies of the fds: they are closed at once) and consumes nothing.
///
/// Why: the library reads a header with `recvmsg` calls that take at most
/// `MAX_ATTACHED_FD_ENTRIES` fds, and a read that gets more (`MSG_CTRUNC`) fails with
/// `ENOBUFS`, which it retries as a temporary error after the kernel has consumed that
/// read's bytes: the header's bytes are lost, and the next bytes are parsed as a
/// header (the stream is out of step; fuzzing found it with 40 fds on the second
/// segment of a header). A peek of the whole header crosses the same segments as that
/// read (both stop after the first segment that carries fds), so it sees those fds.
/// A header that ends past a segment with fds is refused, since the library's next
/// read could meet more. A header that has only partly arrived (no fds yet) is looked
/// at again every [`PARTIAL_HEADER_WAIT`] until it is whole or the frontend hangs up.
/// Fds attached to a payload are the library's to refuse (its payload reads take
/// none: the message fails, and the connection closes).
///
/// The copy of the one fd of a `SET_BACKEND_REQ_FD` is kept and returned: it is the
/// backend channel (`channel.rs`).
fn check_fds(sock: RawFd) -> Result<Option<OwnedFd>, RefusedMessage> {
    use nix::sys::socket::{ControlMessageOwned, MsgFlags, recvmsg};
    loop {
        // Room for SCM_MAX_FD (253), the most one sendmsg can carry.
        let mut space = nix::cmsg_space!([RawFd; 253]);
        let mut header = [0u8; HEADER_LEN];
        let mut iov = [std::io::IoSliceMut::new(&mut header)];
        let (bytes, truncated, mut fds) = match recvmsg::<()>(
            sock,
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_PEEK | MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(nix::errno::Errno::EINTR) => continue,
            // End of file and socket errors: the protocol library reports them.
            Err(_) => return Ok(None),
            Ok(msg) => {
                let mut fds: Vec<OwnedFd> = Vec::new();
                for cmsg in msg.cmsgs().into_iter().flatten() {
                    if let ControlMessageOwned::ScmRights(received) = cmsg {
                        // SAFETY: recvmsg just installed each fd in this process for us
                        // alone; owning it closes it.
                        fds.extend(
                            received
                                .into_iter()
                                .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                        );
                    }
                }
                (msg.bytes, msg.flags.contains(MsgFlags::MSG_CTRUNC), fds)
            }
        };
        let count = fds.len();
        if truncated || count > MAX_ATTACHED_FD_ENTRIES {
            return Err(RefusedMessage::TooManyFds { count, truncated });
        }
        if bytes == 0 {
            // End of file: the library reports it.
            return Ok(None);
        }
        if bytes < HEADER_LEN {
            if count > 0 {
                return Err(RefusedMessage::SplitHeader { bytes, count });
            }
            if peer_hung_up(sock) {
                // Nothing more will come: the library reads the partial header.
                return Ok(None);
            }
            std::thread::sleep(PARTIAL_HEADER_WAIT);
            continue;
        }
        let code = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let backend_channel = code == SET_BACKEND_REQ_FD && count == 1;
        return Ok(backend_channel.then(|| fds.remove(0)));
    }
}

/// Whether the frontend has shut down its end of `sock` (or the socket was shut down
/// here, by [`ExportServer::shut_down`]).
fn peer_hung_up(sock: RawFd) -> bool {
    // libc, not nix: nix's `PollFlags` has no POLLRDHUP (the peer shut down its
    // writing side), and its `revents()` reads a set with an unknown bit as none.
    let mut fd = libc::pollfd {
        fd: sock,
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one initialized pollfd, the count 1, no wait; `sock` is the connection's
    // socket, open for this whole call.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    // A socket that cannot be polled cannot be read either: let the library fail.
    n < 0 || fd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR) != 0
}

/// Why the server refuses a frontend's next message (and closes its connection).
#[derive(Debug, thiserror::Error)]
enum RefusedMessage {
    /// More fds than the protocol library receives; `truncated`: the kernel dropped
    /// some (more than `SCM_MAX_FD`), so `count` is a lower bound.
    #[error(
        "a message carries {over}{count} file descriptors, more than the {MAX_ATTACHED_FD_ENTRIES} supported",
        over = if *truncated { "over " } else { "" }
    )]
    TooManyFds { count: usize, truncated: bool },
    /// The header's first `bytes` bytes came with `count` fds and the rest of it
    /// later: the library would read the rest with a call that may take more fds.
    #[error("a message header is split after its first {bytes} bytes and their {count} fd(s)")]
    SplitHeader { bytes: usize, count: usize },
}

/// Binds and serves forever on the calling thread.
///
/// # Errors
///
/// As [`ExportServer::bind`].
pub fn serve(path: &Path, device: VhostUserDevice) -> std::io::Result<()> {
    let server = ExportServer::bind(path, device)?;
    server.run(&AtomicBool::new(false));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn too_many_fds_names_the_count_and_the_limit() {
        let e = RefusedMessage::TooManyFds {
            count: 40,
            truncated: false,
        };
        assert_eq!(
            e.to_string(),
            format!(
                "a message carries 40 file descriptors, more than the {MAX_ATTACHED_FD_ENTRIES} supported"
            )
        );
        let e = RefusedMessage::TooManyFds {
            count: 253,
            truncated: true,
        };
        assert!(e.to_string().starts_with("a message carries over 253 "));
    }
}
