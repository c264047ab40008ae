//! COM1's output path: the vCPU appends to a bounded buffer and never waits; the main
//! loop writes the buffer to stdout with non-blocking writes.
//!
//! Before (issue 14), the UART wrote each byte with a blocking `write_all` on the vCPU
//! thread, under the serial mutex: a stdout nobody read (a full pipe, a stopped
//! terminal) froze the guest, and with it every `stop` that waited for that vCPU to
//! park. Now a stalled stdout costs guest output only: what does not fit in
//! [`OUTPUT_BUFFER_BYTES`] is dropped (the newest bytes, as QEMU's serial drops a byte
//! its chardev will not take) and the count is reported as a `tracing` warning.
//!
//! Non-blocking without touching what we share: `O_NONBLOCK` lives on the open file
//! description, which stdout shares with whoever started us (a shell's terminal, a test
//! harness's pipe). Setting it there would make *their* writes fail with `EAGAIN`. So
//! the writer opens its own description of the same pipe or terminal
//! (`/proc/self/fd/1`) with `O_NONBLOCK`; a regular file is written as it is (it never
//! waits for a reader); anything else falls back to `poll` before each small write.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use aio_context::{AioContext, FdHandler};
use bottom_half::Bh;
use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::{Mode, SFlag};

/// How much guest output is kept while stdout does not accept it.
pub const OUTPUT_BUFFER_BYTES: usize = 64 * 1024;

/// The most the fallback writer writes after one `poll` (a pipe that polls writable
/// takes `PIPE_BUF` bytes without blocking).
const POLL_WRITE_CHUNK: usize = 512;

/// Where the bytes go: a descriptor of stdout's file that cannot block us.
pub struct ConsoleWriter {
    fd: OwnedFd,
    how: WriteMode,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WriteMode {
    /// A regular file or block device: plain writes (they never wait for a reader).
    Plain,
    /// Our own open file description with `O_NONBLOCK`.
    NonBlocking,
    /// Stdout's own description (we could not open another): `poll` first, then a
    /// write of at most [`POLL_WRITE_CHUNK`] bytes.
    PollFirst,
}

impl ConsoleWriter {
    /// A writer for this process's stdout.
    ///
    /// # Errors
    ///
    /// If stdout is closed (`fstat`/`dup` fail).
    pub fn stdout() -> io::Result<ConsoleWriter> {
        let stdout = io::stdout();
        let st = nix::sys::stat::fstat(stdout.as_fd())?;
        let kind = SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT;
        if kind == SFlag::S_IFREG || kind == SFlag::S_IFBLK {
            return Ok(ConsoleWriter {
                fd: nix::unistd::dup(stdout.as_fd())?,
                how: WriteMode::Plain,
            });
        }
        // A new open file description of the same pipe or terminal: its O_NONBLOCK
        // is ours alone. (A socket cannot be opened this way: fallback below.)
        let path = format!("/proc/self/fd/{}", stdout.as_fd().as_raw_fd());
        let flags = OFlag::O_WRONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC | OFlag::O_NOCTTY;
        match nix::fcntl::open(path.as_str(), flags, Mode::empty()) {
            Ok(fd) => Ok(ConsoleWriter {
                fd,
                how: WriteMode::NonBlocking,
            }),
            Err(_) => Ok(ConsoleWriter {
                fd: nix::unistd::dup(stdout.as_fd())?,
                how: WriteMode::PollFirst,
            }),
        }
    }

    /// Writes what it can of `buf` without waiting; `EAGAIN` when nothing fits now.
    fn write(&self, buf: &[u8]) -> nix::Result<usize> {
        match self.how {
            WriteMode::Plain | WriteMode::NonBlocking => nix::unistd::write(&self.fd, buf),
            WriteMode::PollFirst => {
                use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
                let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLOUT)];
                if poll(&mut fds, PollTimeout::ZERO)? == 0 {
                    return Err(Errno::EAGAIN);
                }
                nix::unistd::write(&self.fd, &buf[..buf.len().min(POLL_WRITE_CHUNK)])
            }
        }
    }
}

/// The guest's output, from the UART (any vCPU) to the main loop.
pub struct SerialOutput {
    state: Mutex<Pending>,
    /// The main loop's flush, scheduled when the buffer stops being empty.
    flush_bh: OnceLock<Bh>,
    /// Main-loop side: the writer and its progress.
    flusher: Mutex<Option<Flusher>>,
    /// The boot-time marks of the guest's first byte and of its write to stdout.
    first_byte: qemu_log::boot_time::Once,
    first_write: qemu_log::boot_time::Once,
}

#[derive(Default)]
struct Pending {
    bytes: VecDeque<u8>,
    /// Dropped since the last report.
    dropped: u64,
    /// The output failed for good: discard.
    broken: bool,
}

struct Flusher {
    writer: ConsoleWriter,
    /// Waiting for the fd to become writable (a write handler is registered).
    waiting: bool,
    /// The current stall was reported (a `tracing` warning).
    announced: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl SerialOutput {
    /// An empty output, not yet attached to a writer (bytes are kept until it is).
    pub fn new() -> Arc<SerialOutput> {
        Arc::new(SerialOutput {
            state: Mutex::new(Pending::default()),
            flush_bh: OnceLock::new(),
            flusher: Mutex::new(None),
            first_byte: qemu_log::boot_time::Once::new(),
            first_write: qemu_log::boot_time::Once::new(),
        })
    }

    /// Appends the guest's bytes; never waits for I/O. What does not fit is dropped
    /// and counted.
    pub fn push(&self, bytes: &[u8]) {
        self.first_byte.mark("first-serial-byte");
        let mut st = lock(&self.state);
        if st.broken {
            return;
        }
        let was_empty = st.bytes.is_empty();
        let room = OUTPUT_BUFFER_BYTES - st.bytes.len();
        let taken = room.min(bytes.len());
        st.bytes.extend(&bytes[..taken]);
        let lost = (bytes.len() - taken) as u64;
        let first_loss = lost > 0 && st.dropped == 0;
        st.dropped += lost;
        drop(st);
        // New data, or the first loss of a stall (to report it): the main loop looks.
        if was_empty && taken > 0 || first_loss {
            if let Some(bh) = self.flush_bh.get() {
                bh.schedule();
            }
        }
    }

    /// Starts writing the buffer to `writer` from `ctx` (the main loop) and flushes
    /// what is already there.
    ///
    /// # Errors
    ///
    /// If attached twice.
    pub fn attach(self: &Arc<Self>, ctx: &AioContext, writer: ConsoleWriter) -> io::Result<()> {
        let mut flusher = lock(&self.flusher);
        if flusher.is_some() {
            return Err(io::Error::other("COM1 output already attached"));
        }
        *flusher = Some(Flusher {
            writer,
            waiting: false,
            announced: false,
        });
        drop(flusher);
        let out = self.clone();
        let bh = ctx.new_bh(move || out.flush());
        bh.schedule();
        let _ = self.flush_bh.set(bh);
        Ok(())
    }

    /// Writes as much as stdout takes now (on the main loop). On `EAGAIN` it waits for
    /// the fd to become writable, through a write handler on the current context.
    pub fn flush(self: &Arc<Self>) {
        let mut guard = lock(&self.flusher);
        let Some(f) = guard.as_mut() else { return };
        loop {
            let mut st = lock(&self.state);
            if st.dropped > 0 && !f.announced {
                f.announced = true;
                tracing::warn!(
                    "COM1: stdout does not accept guest output; keeping {} KiB, \
                     dropping the rest",
                    OUTPUT_BUFFER_BYTES / 1024
                );
            }
            if st.bytes.is_empty() {
                if st.dropped > 0 {
                    tracing::warn!(
                        "COM1: {} bytes of guest output were dropped while stdout \
                         did not accept it",
                        st.dropped
                    );
                    st.dropped = 0;
                    f.announced = false;
                }
                drop(st);
                if f.waiting {
                    f.waiting = false;
                    if let Some(ctx) = AioContext::current() {
                        ctx.remove_fd_handler(f.writer.fd.as_raw_fd());
                    }
                }
                return;
            }
            let result = f.writer.write(st.bytes.as_slices().0);
            match result {
                Ok(n) => {
                    self.first_write.mark("first-serial-write");
                    st.bytes.drain(..n);
                }
                Err(Errno::EINTR) => {}
                Err(Errno::EAGAIN) => {
                    drop(st);
                    if !f.waiting {
                        f.waiting = true;
                        let fd = f.writer.fd.as_raw_fd();
                        let out = self.clone();
                        let handler = FdHandler::new().on_write(move || out.flush());
                        let registered = AioContext::current()
                            .map(|ctx| ctx.set_fd_handler(fd, handler))
                            .unwrap_or_else(|| Err(io::Error::other("no main loop")));
                        if let Err(e) = registered {
                            drop(guard);
                            return self.give_up(&format!("cannot wait for stdout: {e}"));
                        }
                    }
                    return;
                }
                Err(e) => {
                    drop(st);
                    drop(guard);
                    return self.give_up(&e.to_string());
                }
            }
        }
    }

    /// The output failed for good (stdout closed): discard from now on, say so once.
    fn give_up(&self, why: &str) {
        let mut st = lock(&self.state);
        if !st.broken {
            st.broken = true;
            st.bytes.clear();
            tracing::error!("COM1: writing stdout failed ({why}); guest output is discarded");
        }
    }

    /// At exit: one last flush without waiting, then the loss (if any) is reported.
    pub fn flush_at_exit(self: &Arc<Self>) {
        self.flush();
        let st = lock(&self.state);
        let lost = st.dropped + st.bytes.len() as u64;
        if lost > 0 && !st.broken {
            tracing::warn!("COM1: {lost} bytes of guest output could not be written to stdout");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_buffer_drops_the_newest_bytes_and_counts_them() {
        let out = SerialOutput::new();
        out.push(&vec![b'a'; OUTPUT_BUFFER_BYTES - 1]);
        out.push(b"xyz");
        let st = lock(&out.state);
        assert_eq!(st.bytes.len(), OUTPUT_BUFFER_BYTES);
        assert_eq!(st.bytes.back(), Some(&b'x'));
        assert_eq!(st.dropped, 2);
    }
}
