//! fd monitoring for one `AioContext`: which fds are ready, and io_uring operations.
//!
//! Two backends, chosen once per monitor (like QEMU's `fdmon-io_uring` / `fdmon-epoll`):
//!
//! * [`Backend::IoUring`] ([`uring`]): one ring does everything. Each fd gets a one-shot
//!   `IORING_OP_POLL_ADD`, re-armed at the start of the *next* `wait()`, i.e. after the handler
//!   ran, so an fd that is still ready is reported again (level-triggered, as QEMU). Operations
//!   submitted with [`FdMonitor::submit`] complete on the same ring, and the wait itself is one
//!   `io_uring_enter` (timeout via `IORING_ENTER_EXT_ARG`, else an `IORING_OP_TIMEOUT`).
//! * [`Backend::Epoll`] ([`epoll`]): level-triggered epoll; when io_uring works, a small side
//!   ring runs the operations and signals completions through an eventfd watched by epoll.
//!
//! Either way a waiting thread sleeps in a single syscall. Completions are handed out as
//! [`Completion`]s for the caller to run once the monitor is no longer borrowed.

mod epoll;
mod fixed;
mod fixed_files;
mod uring;

use std::ffi::OsStr;
use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use epoll::EpollMonitor;
pub(crate) use fixed::Region;
pub(crate) use fixed_files::Slot;
use uring::{Ring, UringMonitor};

/// Which kernel interface watches fds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `IORING_OP_POLL_ADD` on an io_uring, which also runs the operations.
    IoUring,
    /// epoll, with an optional side ring for operations.
    Epoll,
}

/// What a handler wants to hear about. Both `false` means "stop watching".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Interest {
    /// Report the fd when it is readable.
    pub(crate) read: bool,
    /// Report the fd when it is writable.
    pub(crate) write: bool,
}

impl Interest {
    fn is_empty(self) -> bool {
        !self.read && !self.write
    }
}

/// What happened on an fd, limited to the registered [`Interest`].
///
/// Hang-up and error count as readable *and* writable, so the handler runs and sees the error
/// from its own read/write call, as in QEMU.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Readiness {
    /// The fd is readable (or hung up / in error).
    pub(crate) readable: bool,
    /// The fd is writable (or hung up / in error).
    pub(crate) writable: bool,
}

impl Readiness {
    /// Translates poll(2) bits (epoll's `EPOLL*` bits have the same values) for `interest`.
    fn from_poll_bits(bits: u32, interest: Interest) -> Readiness {
        let bit = |b: libc::c_short| bits & (b as u16 as u32) != 0;
        let failed = bit(libc::POLLHUP) || bit(libc::POLLERR) || bit(libc::POLLNVAL);
        Readiness {
            readable: interest.read && (failed || bit(libc::POLLIN) || bit(libc::POLLRDHUP)),
            writable: interest.write && (failed || bit(libc::POLLOUT)),
        }
    }

    fn any(self) -> bool {
        self.readable || self.writable
    }
}

/// A finished io_uring operation: its callback and the CQE result (negative errno on error).
pub(crate) struct Completion {
    /// What [`FdMonitor::submit`] was given.
    pub(crate) callback: Box<dyn FnOnce(i32)>,
    /// The CQE's `res`.
    pub(crate) result: i32,
}

impl Completion {
    /// Calls the callback with the result.
    pub(crate) fn run(self) {
        (self.callback)(self.result)
    }
}

/// Watches fds and runs io_uring operations for one event loop (one thread at a time).
pub(crate) struct FdMonitor {
    imp: Imp,
}

enum Imp {
    Uring(UringMonitor),
    Epoll(EpollMonitor),
}

impl FdMonitor {
    /// io_uring if it works (ring creation, `IORING_FEAT_NODROP`, and `POLL_ADD`, `POLL_REMOVE`,
    /// `ASYNC_CANCEL` in the probe), else epoll. `AIO_FDMON=epoll` forces epoll,
    /// `AIO_FDMON=io_uring` forces io_uring (an error if unavailable); other values are an error.
    /// `AIO_URING_SQPOLL=MS` ([`sqpoll_from_env`]) picks epoll with a submission thread
    /// on its operations ring, and is an error with `AIO_FDMON=io_uring`.
    pub(crate) fn new() -> io::Result<FdMonitor> {
        FdMonitor::choose(
            backend_from_env(std::env::var_os("AIO_FDMON").as_deref())?,
            sqpoll_from_env(std::env::var_os("AIO_URING_SQPOLL").as_deref())?,
        )
    }

    /// [`FdMonitor::new`] for the settings `AIO_FDMON` (`None`: automatic) and
    /// `AIO_URING_SQPOLL` (`None`: no submission thread) stand for.
    pub(crate) fn choose(backend: Option<Backend>, sqpoll: Option<u32>) -> io::Result<FdMonitor> {
        match (backend, sqpoll) {
            (Some(Backend::IoUring), Some(_)) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "AIO_URING_SQPOLL needs the epoll fd monitor (AIO_FDMON=epoll or unset): \
                 a ring that watches fds cannot have a submission thread",
            )),
            (_, Some(idle_ms)) => Ok(FdMonitor {
                imp: Imp::Epoll(EpollMonitor::new(Some(idle_ms))?),
            }),
            (Some(backend), None) => FdMonitor::with_backend(backend),
            (None, None) => FdMonitor::with_backend(Backend::IoUring)
                .or_else(|_| FdMonitor::with_backend(Backend::Epoll)),
        }
    }

    /// A monitor on `backend`, or the reason it cannot be had.
    pub(crate) fn with_backend(backend: Backend) -> io::Result<FdMonitor> {
        let imp = match backend {
            Backend::IoUring => Imp::Uring(UringMonitor::new()?),
            Backend::Epoll => Imp::Epoll(EpollMonitor::new(None)?),
        };
        Ok(FdMonitor { imp })
    }

    /// The backend in use.
    pub(crate) fn backend(&self) -> Backend {
        match self.imp {
            Imp::Uring(_) => Backend::IoUring,
            Imp::Epoll(_) => Backend::Epoll,
        }
    }

    /// Starts, changes, or (with `Interest::default()`) stops watching `fd`; `token` comes back
    /// from [`wait`](Self::wait). One registration per fd; calling again replaces it.
    ///
    /// Errors (the errno as an `io::Error`) leave the previous registration in place. Removing an
    /// fd that is not registered is a no-op. Remove an fd *before* closing it.
    pub(crate) fn set(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        match &mut self.imp {
            Imp::Uring(m) => m.set(fd, token, interest),
            Imp::Epoll(m) => m.set(fd, token, interest),
        }
    }

    /// Waits until an fd is ready, an operation completes, or `timeout` elapses (`None`: no
    /// limit, `Some(ZERO)`: don't block). Appends `(token, readiness)` to `ready` (at most once
    /// per fd) and finished operations to `completions`, for the caller to handle after this
    /// returns. Returns `Ok` early, possibly with nothing, when a signal interrupts the wait.
    pub(crate) fn wait(
        &mut self,
        timeout: Option<Duration>,
        ready: &mut Vec<(u64, Readiness)>,
        completions: &mut Vec<Completion>,
    ) -> io::Result<()> {
        match &mut self.imp {
            Imp::Uring(m) => m.wait(timeout, ready, completions),
            Imp::Epoll(m) => m.wait(timeout, ready, completions),
        }
    }

    /// Whether [`submit`](Self::submit) works (io_uring backend, or epoll with a side ring).
    pub(crate) fn supports_ops(&self) -> bool {
        match &self.imp {
            Imp::Uring(_) => true,
            Imp::Epoll(m) => m.ring().is_some(),
        }
    }

    /// Queues one io_uring operation; `callback(result)` comes back through [`wait`](Self::wait),
    /// which also submits it to the kernel. The entry's `user_data` is overwritten and its SQE
    /// flags are cleared (no links, no `SKIP_SUCCESS`: one SQE, one CQE) and replaced by
    /// `flags` (`IOSQE_ASYNC`: the kernel runs the op in its io-wq workers;
    /// `IOSQE_FIXED_FILE`: the fd is a registered file's slot). Fails with
    /// `Unsupported` without a ring.
    ///
    /// # Safety
    ///
    /// Every buffer and fd that `entry` references must stay valid until `wait` has handed out
    /// the callback (the callback typically owns them); if the monitor is dropped first, its
    /// `Drop` cancels the operation and waits for the kernel to let go before dropping the
    /// callback. The entry must produce exactly one CQE (no multishot opcodes).
    /// The callback is `on_complete(state, result)`; on error `state` is given back.
    pub(crate) unsafe fn submit<T: 'static>(
        &mut self,
        entry: io_uring::squeue::Entry,
        flags: io_uring::squeue::Flags,
        state: T,
        on_complete: fn(T, i32),
    ) -> Result<u64, (io::Error, T)> {
        let ring = match &mut self.imp {
            Imp::Uring(m) => Some(m.ring_mut()),
            Imp::Epoll(m) => m.ring_mut(),
        };
        let Some(ring) = ring else {
            let e = io::Error::new(
                io::ErrorKind::Unsupported,
                "no io_uring available for operations",
            );
            return Err((e, state));
        };
        // SAFETY: the caller upholds the contract above, which is `Ring::submit_op`'s.
        unsafe { ring.submit_op(entry, flags, state, on_complete) }
    }

    /// Hands the operations queued so far to the kernel now, without waiting (one
    /// `io_uring_enter`, none if nothing is queued). [`wait`](Self::wait) does this anyway;
    /// this is for submissions that should not wait for the next one (refills from a
    /// completion callback: see `AioContext::run_completions`).
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        let ring = match &mut self.imp {
            Imp::Uring(m) => Some(m.ring_mut()),
            Imp::Epoll(m) => m.ring_mut(),
        };
        match ring {
            Some(ring) => ring.submit().map(drop),
            None => Ok(()),
        }
    }

    /// Whether the operations ring has completions to reap or submissions to make now (see
    /// `Ring::has_work`); false without a ring. Cheap: reads the ring's shared memory only.
    pub(crate) fn ops_have_work(&mut self) -> bool {
        let ring = match &mut self.imp {
            Imp::Uring(m) => Some(m.ring_mut()),
            Imp::Epoll(m) => m.ring_mut(),
        };
        ring.is_some_and(Ring::has_work)
    }

    /// The registered buffer of the operations ring that holds `[ptr, ptr + len)` of
    /// `region`, registering the region on first use; `None` without a ring, or where the
    /// kernel refuses it (see `fixed`).
    pub(crate) fn fixed_buffer(
        &mut self,
        region: &Region<'_>,
        ptr: *const u8,
        len: usize,
    ) -> Option<u16> {
        match &mut self.imp {
            Imp::Uring(m) => m.ring_mut().fixed_buffer(region, ptr, len),
            Imp::Epoll(m) => m.ring_mut()?.fixed_buffer(region, ptr, len),
        }
    }

    /// `file`'s slot in the operations ring's table of registered files, registering it
    /// on first use; `None` without a ring, or where the kernel refuses it (see
    /// `fixed_files`).
    pub(crate) fn fixed_file(
        &mut self,
        file: &std::sync::Arc<crate::fixed_file::Shared>,
    ) -> Option<Slot> {
        match &mut self.imp {
            Imp::Uring(m) => m.ring_mut().fixed_file(file),
            Imp::Epoll(m) => m.ring_mut()?.fixed_file(file),
        }
    }

    /// Empties the operations ring's slots of registered files that are gone.
    pub(crate) fn release_dead_fixed_files(&mut self) {
        match &mut self.imp {
            Imp::Uring(m) => m.ring_mut().release_dead_files(),
            Imp::Epoll(m) => {
                if let Some(r) = m.ring_mut() {
                    r.release_dead_files();
                }
            }
        }
    }

    /// How many files the operations ring has registered (0 without a ring).
    #[cfg(test)]
    pub(crate) fn fixed_files(&mut self) -> usize {
        match &mut self.imp {
            Imp::Uring(m) => m.ring_mut().fixed_files(),
            Imp::Epoll(m) => m.ring_mut().map_or(0, |r| r.fixed_files()),
        }
    }

    /// Cancels the op submitted as `user_data` if it is still in flight (see `Ring::cancel`).
    pub(crate) fn cancel(&mut self, user_data: u64) -> io::Result<bool> {
        match &mut self.imp {
            Imp::Uring(m) => m.ring_mut().cancel(user_data),
            Imp::Epoll(m) => m.ring_mut().map_or(Ok(false), |r| r.cancel(user_data)),
        }
    }

    /// Whether operations with `opcode` can be submitted.
    pub(crate) fn supports_opcode(&self, opcode: u8) -> bool {
        match &self.imp {
            Imp::Uring(m) => m.ring().supports_opcode(opcode),
            Imp::Epoll(m) => m.ring().is_some_and(|r| r.supports_opcode(opcode)),
        }
    }

    /// How many `io_uring_enter` calls the operations ring has made (0 without one).
    #[cfg(test)]
    pub(crate) fn enters(&self) -> u64 {
        match &self.imp {
            Imp::Uring(m) => m.ring().enters(),
            Imp::Epoll(m) => m.ring().map_or(0, Ring::enters),
        }
    }

    /// Number of operations submitted whose callback has not been handed out yet.
    pub(crate) fn in_flight(&self) -> usize {
        match &self.imp {
            Imp::Uring(m) => m.ring().in_flight(),
            Imp::Epoll(m) => m.ring().map_or(0, Ring::in_flight),
        }
    }
}

/// Parses `AIO_URING_SQPOLL`: the idle time in milliseconds after which the operations
/// ring's kernel submission thread (`IORING_SETUP_SQPOLL`) sleeps; `None` (unset, empty,
/// `off`) means no thread. For hosts with a core to spare: the thread spins on the SQ for
/// that long after each submission, so the event loop submits without a syscall.
pub(crate) fn sqpoll_from_env(value: Option<&OsStr>) -> io::Result<Option<u32>> {
    match value.map(|v| v.to_str()) {
        None | Some(Some("" | "off")) => Ok(None),
        Some(ms) => ms.and_then(|ms| ms.parse().ok()).map(Some).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("AIO_URING_SQPOLL must be an idle time in ms or `off`, not {value:?}"),
            )
        }),
    }
}

/// Parses `AIO_FDMON`: `None` means "pick automatically".
fn backend_from_env(value: Option<&OsStr>) -> io::Result<Option<Backend>> {
    match value.map(|v| v.to_str()) {
        None | Some(Some("" | "auto")) => Ok(None),
        Some(Some("epoll")) => Ok(Some(Backend::Epoll)),
        Some(Some("io_uring" | "io-uring")) => Ok(Some(Backend::IoUring)),
        Some(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("AIO_FDMON must be `io_uring`, `epoll` or `auto`, not {value:?}"),
        )),
    }
}

/// When a wait must end: `None` is never.
fn deadline(timeout: Option<Duration>) -> Deadline {
    match timeout {
        None => Deadline::Never,
        Some(t) if t.is_zero() => Deadline::Now,
        Some(t) => Instant::now()
            .checked_add(t)
            .map_or(Deadline::Never, Deadline::At),
    }
}

/// When a wait ends; `Now` needs no clock read (the common non-blocking poll).
#[derive(Clone, Copy, Debug)]
enum Deadline {
    Now,
    At(Instant),
    Never,
}

/// Time left until `deadline` (`None`: no limit).
fn remaining(deadline: Deadline) -> Option<Duration> {
    match deadline {
        Deadline::Now => Some(Duration::ZERO),
        Deadline::At(d) => Some(d.saturating_duration_since(Instant::now())),
        Deadline::Never => None,
    }
}

/// The errno of `err` is `errno`.
fn is_errno(err: &io::Error, errno: i32) -> bool {
    err.raw_os_error() == Some(errno)
}

#[cfg(test)]
mod tests {
    use std::cell::{Cell, RefCell};
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::rc::Rc;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};

    use io_uring::{opcode, types};
    use nix::errno::Errno;
    use nix::fcntl::OFlag;
    use nix::sys::eventfd::{EfdFlags, EventFd};

    use super::*;

    const fn interest(read: bool, write: bool) -> Interest {
        Interest { read, write }
    }
    const fn readiness(readable: bool, writable: bool) -> Readiness {
        Readiness { readable, writable }
    }
    const READ: Interest = interest(true, false);
    const WRITE: Interest = interest(false, true);
    const BOTH: Interest = interest(true, true);
    const NONE: Interest = interest(false, false);
    const R: Readiness = readiness(true, false);
    const W: Readiness = readiness(false, true);
    const RW: Readiness = readiness(true, true);
    const ZERO: Duration = Duration::ZERO;
    const SHORT: Duration = Duration::from_millis(50);
    const LONG: Duration = Duration::from_secs(5);

    /// Runs `test` on a fresh monitor of each backend, each in its own thread (as in real use:
    /// io_uring task work for one thread's rings interrupts that thread's `epoll_wait`).
    /// io_uring is skipped, loudly, if the kernel doesn't have it.
    fn each_backend(test: impl Fn(FdMonitor) + Sync) {
        for backend in [Backend::IoUring, Backend::Epoll] {
            std::thread::scope(|s| {
                let run = || match FdMonitor::with_backend(backend) {
                    Ok(monitor) => {
                        eprintln!("--- backend {backend:?}");
                        assert_eq!(monitor.backend(), backend);
                        test(monitor);
                    }
                    Err(e) if backend == Backend::IoUring => skip(&format!("io_uring: {e}")),
                    Err(e) => panic!("epoll backend unavailable: {e}"),
                };
                if let Err(panic) = s.spawn(run).join() {
                    std::panic::resume_unwind(panic);
                }
            });
        }
    }

    /// Says loudly that a test part was skipped, past the test harness's output capture.
    pub(super) fn skip(what: &str) {
        use std::io::Write;
        let _ = writeln!(io::stderr(), "!!!!!!!! SKIP {what} !!!!!!!!");
    }

    /// `each_backend` for the monitors that run operations; skips the others, loudly.
    fn each_ops_backend(test: impl Fn(FdMonitor) + Sync) {
        each_backend(|m| match m.supports_ops() {
            true => test(m),
            false => skip(&format!("ops on {:?}: no io_uring", m.backend())),
        });
    }

    /// One wait; runs the completions' callbacks and returns what was ready.
    fn poll(m: &mut FdMonitor, timeout: Duration) -> Vec<(u64, Readiness)> {
        let (mut ready, mut done) = (Vec::new(), Vec::new());
        m.wait(Some(timeout), &mut ready, &mut done).unwrap();
        done.into_iter().for_each(Completion::run);
        ready
    }

    /// Waits until `count` operations completed, running their callbacks.
    fn run_ops(m: &mut FdMonitor, mut count: usize) {
        let start = Instant::now();
        while count > 0 {
            assert!(start.elapsed() < LONG, "{count} ops still in flight");
            let (mut ready, mut done) = (Vec::new(), Vec::new());
            m.wait(Some(LONG), &mut ready, &mut done).unwrap();
            count -= done.len();
            done.into_iter().for_each(Completion::run);
        }
    }

    /// Submits `entry` with a callback, as `AioContext::submit` does.
    ///
    /// # Safety
    ///
    /// As [`FdMonitor::submit`].
    unsafe fn submit<F: FnOnce(i32) + 'static>(
        m: &mut FdMonitor,
        entry: io_uring::squeue::Entry,
        f: F,
    ) -> io::Result<u64> {
        // SAFETY: forwarded to the caller.
        unsafe {
            m.submit(entry, io_uring::squeue::Flags::empty(), f, |f: F, res| {
                f(res)
            })
        }
        .map_err(|(e, _)| e)
    }

    /// Submits a NOP whose callback runs `f(result)`.
    fn nop(m: &mut FdMonitor, f: impl FnOnce(i32) + 'static) {
        // SAFETY: a NOP references no memory.
        unsafe { submit(m, opcode::Nop::new().build(), f) }.unwrap();
    }

    fn pipe() -> (OwnedFd, OwnedFd) {
        nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK).unwrap()
    }

    fn eventfd() -> OwnedFd {
        let flags = EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK;
        EventFd::from_flags(flags).unwrap().into()
    }

    /// write(2): the byte count, or -1.
    fn write(fd: &OwnedFd, bytes: &[u8]) -> isize {
        nix::unistd::write(fd, bytes).map_or(-1, |n| n as isize)
    }

    /// read(2): the byte count, or -1.
    fn read(fd: &OwnedFd, buf: &mut [u8]) -> isize {
        nix::unistd::read(fd, buf).map_or(-1, |n| n as isize)
    }

    fn signal(efd: &OwnedFd) {
        assert_eq!(write(efd, &1u64.to_ne_bytes()), 8);
    }

    #[test]
    fn eventfd_and_pipe_readable() {
        each_backend(|mut m| {
            let efd = eventfd();
            let (rx, tx) = pipe();
            m.set(efd.as_raw_fd(), 1, READ).unwrap();
            m.set(rx.as_raw_fd(), 2, READ).unwrap();
            assert_eq!(poll(&mut m, ZERO), []);
            signal(&efd);
            assert_eq!(poll(&mut m, LONG), [(1, R)]);
            assert_eq!(read(&efd, &mut [0; 8]), 8);
            assert_eq!(write(&tx, b"x"), 1);
            assert_eq!(poll(&mut m, LONG), [(2, R)]);
        });
    }

    #[test]
    fn already_ready_fd_reported_by_zero_wait() {
        each_backend(|mut m| {
            let efd = eventfd();
            signal(&efd);
            m.set(efd.as_raw_fd(), 1, READ).unwrap();
            assert_eq!(poll(&mut m, ZERO), [(1, R)]);
        });
    }

    #[test]
    fn pipe_writable_until_full() {
        each_backend(|mut m| {
            let (rx, tx) = pipe();
            m.set(tx.as_raw_fd(), 7, WRITE).unwrap();
            assert_eq!(poll(&mut m, LONG), [(7, W)]);
            while write(&tx, &[0; 4096]) > 0 {}
            assert_eq!(poll(&mut m, SHORT), []);
            while read(&rx, &mut [0; 65536]) > 0 {}
            assert_eq!(poll(&mut m, LONG), [(7, W)]);
        });
    }

    #[test]
    fn level_triggered_until_drained() {
        each_backend(|mut m| {
            let (rx, tx) = pipe();
            m.set(rx.as_raw_fd(), 3, READ).unwrap();
            assert_eq!(write(&tx, b"abc"), 3);
            assert_eq!(poll(&mut m, LONG), [(3, R)]);
            assert_eq!(read(&rx, &mut [0; 1]), 1); // the handler leaves two bytes
            assert_eq!(poll(&mut m, ZERO), [(3, R)]);
            assert_eq!(poll(&mut m, LONG), [(3, R)]);
            assert_eq!(read(&rx, &mut [0; 8]), 2);
            assert_eq!(poll(&mut m, SHORT), []);
            assert_eq!(write(&tx, b"d"), 1);
            assert_eq!(poll(&mut m, LONG), [(3, R)]);
        });
    }

    #[test]
    fn removed_fd_is_not_reported() {
        each_backend(|mut m| {
            let (efd, other) = (eventfd(), eventfd());
            m.set(efd.as_raw_fd(), 1, READ).unwrap();
            m.set(other.as_raw_fd(), 2, READ).unwrap();
            assert_eq!(poll(&mut m, ZERO), []); // armed
            m.set(efd.as_raw_fd(), 1, NONE).unwrap();
            signal(&efd);
            assert_eq!(poll(&mut m, SHORT), []);
            // Removed while reported and not yet re-armed.
            signal(&other);
            assert_eq!(poll(&mut m, LONG), [(2, R)]);
            m.set(other.as_raw_fd(), 2, NONE).unwrap();
            assert_eq!(poll(&mut m, SHORT), []);
            // Removing again, or removing an fd never registered, is a no-op.
            m.set(efd.as_raw_fd(), 1, NONE).unwrap();
            m.set(1_000_000, 1, NONE).unwrap();
        });
    }

    #[test]
    fn reregister_after_removal() {
        each_backend(|mut m| {
            let efd = eventfd();
            let fd = efd.as_raw_fd();
            signal(&efd);
            m.set(fd, 1, READ).unwrap();
            assert_eq!(poll(&mut m, LONG), [(1, R)]);
            m.set(fd, 1, NONE).unwrap();
            assert_eq!(poll(&mut m, SHORT), []);
            m.set(fd, 2, READ).unwrap();
            assert_eq!(poll(&mut m, LONG), [(2, R)]);
            // Removed while armed and re-added at once: only the new registration reports.
            assert_eq!(read(&efd, &mut [0; 8]), 8);
            assert_eq!(poll(&mut m, ZERO), []);
            m.set(fd, 2, NONE).unwrap();
            m.set(fd, 3, READ).unwrap();
            signal(&efd);
            assert_eq!(poll(&mut m, LONG), [(3, R)]);
            // A new token alone takes effect too.
            m.set(fd, 4, READ).unwrap();
            assert_eq!(poll(&mut m, LONG), [(4, R)]);
        });
    }

    #[test]
    fn modify_interest() {
        each_backend(|mut m| {
            let efd = eventfd(); // writable, not readable
            let fd = efd.as_raw_fd();
            m.set(fd, 1, READ).unwrap();
            assert_eq!(poll(&mut m, SHORT), []);
            m.set(fd, 2, WRITE).unwrap();
            assert_eq!(poll(&mut m, LONG), [(2, W)]);
            m.set(fd, 3, READ).unwrap();
            assert_eq!(poll(&mut m, SHORT), []);
            signal(&efd);
            assert_eq!(poll(&mut m, LONG), [(3, R)]);
            m.set(fd, 4, BOTH).unwrap();
            assert_eq!(poll(&mut m, LONG), [(4, RW)]);
            m.set(fd, 5, WRITE).unwrap();
            assert_eq!(poll(&mut m, LONG), [(5, W)]);
        });
    }

    #[test]
    fn zero_timeout_does_not_block() {
        each_backend(|mut m| {
            let (rx, _tx) = pipe();
            let start = Instant::now();
            assert_eq!(poll(&mut m, ZERO), []);
            m.set(rx.as_raw_fd(), 1, READ).unwrap();
            for _ in 0..100 {
                assert_eq!(poll(&mut m, ZERO), []);
            }
            assert!(
                start.elapsed() < Duration::from_millis(500),
                "{:?}",
                start.elapsed()
            );
        });
    }

    #[test]
    fn timeout_elapses() {
        each_backend(|mut m| {
            let (rx, _tx) = pipe();
            for (i, timeout) in [SHORT, Duration::from_micros(300), SHORT]
                .into_iter()
                .enumerate()
            {
                if i == 1 {
                    m.set(rx.as_raw_fd(), 1, READ).unwrap();
                }
                let start = Instant::now();
                assert_eq!(poll(&mut m, timeout), []);
                let elapsed = start.elapsed();
                assert!(elapsed >= timeout, "{elapsed:?} < {timeout:?}");
                assert!(elapsed < timeout + Duration::from_secs(1), "{elapsed:?}");
            }
        });
    }

    #[test]
    fn hangup_is_readable_and_writable() {
        each_backend(|mut m| {
            let (rx, tx) = pipe();
            m.set(rx.as_raw_fd(), 1, READ).unwrap();
            drop(tx);
            assert_eq!(poll(&mut m, LONG), [(1, R)]);
            m.set(rx.as_raw_fd(), 2, BOTH).unwrap();
            assert_eq!(poll(&mut m, LONG), [(2, RW)]);
            m.set(rx.as_raw_fd(), 2, NONE).unwrap();
            // The other way round: a write end whose reader is gone (POLLERR).
            let (rx, tx) = pipe();
            m.set(tx.as_raw_fd(), 3, BOTH).unwrap();
            drop(rx);
            let ready = poll(&mut m, LONG);
            assert!(ready == [(3, RW)] || ready == [(3, W)], "{ready:?}");
            let ready = poll(&mut m, LONG);
            assert_eq!(ready, [(3, RW)]);
        });
    }

    #[test]
    fn bad_fd_is_an_error() {
        each_backend(|mut m| {
            for fd in [-1, 1_000_000] {
                let err = m.set(fd, 1, READ).unwrap_err();
                assert_eq!(err.raw_os_error(), Some(libc::EBADF), "{err}");
            }
            assert_eq!(poll(&mut m, ZERO), []);
            // A failed set() leaves nothing registered.
            m.set(-1, 1, NONE).unwrap();
            let efd = eventfd();
            m.set(efd.as_raw_fd(), 1, READ).unwrap();
            signal(&efd);
            assert_eq!(poll(&mut m, LONG), [(1, R)]);
        });
    }

    extern "C" fn ignore_signal(_: libc::c_int) {}

    #[test]
    fn signal_interrupts_wait() {
        use nix::sys::pthread::{pthread_kill, pthread_self};
        use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

        // No SA_RESTART: the wait must see EINTR.
        let action = SigAction::new(
            SigHandler::Handler(ignore_signal),
            SaFlags::empty(),
            SigSet::empty(),
        );
        // SAFETY: the handler does nothing, so it is async-signal-safe, and nothing else
        // in this test binary handles SIGUSR1.
        unsafe { sigaction(Signal::SIGUSR1, &action) }.unwrap();
        each_backend(|mut m| {
            let (rx, _tx) = pipe();
            m.set(rx.as_raw_fd(), 1, READ).unwrap();
            let me = pthread_self();
            let stop = Arc::new(AtomicBool::new(false));
            let killer = std::thread::spawn({
                let stop = stop.clone();
                move || {
                    while !stop.load(SeqCst) {
                        std::thread::sleep(Duration::from_millis(20));
                        // `me` is alive until this thread is joined.
                        pthread_kill(me, Signal::SIGUSR1).unwrap();
                    }
                }
            });
            let start = Instant::now();
            let ready = poll(&mut m, Duration::from_secs(20));
            stop.store(true, SeqCst);
            killer.join().unwrap();
            assert_eq!(ready, []);
            assert!(start.elapsed() < Duration::from_secs(10));
        });
    }

    #[test]
    fn nop_completes() {
        each_ops_backend(|mut m| {
            let result = Rc::new(Cell::new(None));
            let r = result.clone();
            nop(&mut m, move |res| r.set(Some(res)));
            assert_eq!(m.in_flight(), 1);
            run_ops(&mut m, 1);
            assert_eq!(result.get(), Some(0));
            assert_eq!(m.in_flight(), 0);
        });
    }

    #[test]
    fn many_nops() {
        each_ops_backend(|mut m| {
            let done = Rc::new(Cell::new(0));
            for _ in 0..1000 {
                let done = done.clone();
                nop(&mut m, move |res| {
                    assert_eq!(res, 0);
                    done.set(done.get() + 1);
                });
            }
            assert_eq!(m.in_flight(), 1000);
            run_ops(&mut m, 1000);
            assert_eq!((done.get(), m.in_flight()), (1000, 0));
        });
    }

    #[test]
    fn ops_and_fds_together() {
        each_ops_backend(|mut m| {
            let efd = eventfd();
            m.set(efd.as_raw_fd(), 9, READ).unwrap();
            signal(&efd);
            nop(&mut m, |_| {});
            let (mut ready, mut done) = (Vec::new(), Vec::new());
            while ready.is_empty() || done.is_empty() {
                m.wait(Some(LONG), &mut ready, &mut done).unwrap();
            }
            assert_eq!((ready, done.len()), (vec![(9, R)], 1));
        });
    }

    /// Submits a READ of `rx` into a buffer owned by the callback, which stores what it read.
    fn read_op(m: &mut FdMonitor, rx: &OwnedFd, out: Rc<RefCell<Option<Vec<u8>>>>) {
        let mut buf = vec![0u8; 16];
        let entry = opcode::Read::new(types::Fd(rx.as_raw_fd()), buf.as_mut_ptr(), 16).build();
        let callback = Box::new(move |res: i32| {
            assert!(res >= 0, "read failed: {res}");
            buf.truncate(res as usize);
            *out.borrow_mut() = Some(buf);
        });
        // SAFETY: the callback owns `buf` (moving the Vec doesn't move its heap storage), and
        // the callers keep `rx` open until the callback ran.
        unsafe { submit(m, entry, callback) }.unwrap();
    }

    #[test]
    fn read_into_callback_owned_buffer() {
        each_ops_backend(|mut m| {
            let (rx, tx) = pipe();
            let out = Rc::new(RefCell::new(None));
            assert_eq!(write(&tx, b"hello"), 5);
            read_op(&mut m, &rx, out.clone());
            run_ops(&mut m, 1);
            assert_eq!(out.take().as_deref(), Some(&b"hello"[..]));
            // Data that arrives while the READ waits.
            read_op(&mut m, &rx, out.clone());
            assert_eq!(poll(&mut m, SHORT), []);
            assert_eq!(m.in_flight(), 1);
            assert_eq!(write(&tx, b"later"), 5);
            run_ops(&mut m, 1);
            assert_eq!(out.take().as_deref(), Some(&b"later"[..]));
        });
    }

    #[test]
    fn drop_cancels_ops_in_flight() {
        for wait_first in [true, false] {
            each_ops_backend(|mut m| {
                let (rx, tx) = pipe();
                let alive = Arc::new(());
                let called = Arc::new(AtomicBool::new(false));
                let mut buf = vec![0u8; 16];
                let entry = opcode::Read::new(types::Fd(rx.as_raw_fd()), buf.as_mut_ptr(), 16);
                let (a, c) = (alive.clone(), called.clone());
                let callback = Box::new(move |_| {
                    drop((a, buf));
                    c.store(true, SeqCst);
                });
                // SAFETY: the callback owns `buf`; `rx` outlives the monitor.
                unsafe { submit(&mut m, entry.build(), callback) }.unwrap();
                if wait_first {
                    assert_eq!(poll(&mut m, SHORT), []); // submitted, pending in the kernel
                }
                assert_eq!((m.in_flight(), Arc::strong_count(&alive)), (1, 2));
                drop(m);
                assert_eq!(Arc::strong_count(&alive), 1, "callback not dropped");
                assert!(!called.load(SeqCst), "callback called");
                // The READ is gone: new data stays in the pipe.
                assert_eq!(write(&tx, b"x"), 1);
                assert_eq!(read(&rx, &mut [0; 4]), 1);
            });
        }
    }

    /// The ring owns the SQE flags: an entry built with `IO_LINK` is submitted unlinked.
    /// Were the flag kept, the failing READ below would cancel the NOP queued after it
    /// (`-ECANCELED`); unlinked, the NOP completes on its own.
    #[test]
    fn submitted_entries_are_never_linked() {
        each_ops_backend(|mut m| {
            let results = Rc::new(RefCell::new(Vec::new()));
            let record = |results: &Rc<RefCell<Vec<i32>>>| {
                let results = results.clone();
                move |res: i32| results.borrow_mut().push(res)
            };
            let failing = opcode::Read::new(types::Fd(-1), std::ptr::null_mut(), 0)
                .build()
                .flags(io_uring::squeue::Flags::IO_LINK);
            // SAFETY: a READ of zero bytes into no buffer from fd -1 references no memory.
            unsafe { submit(&mut m, failing, record(&results)) }.unwrap();
            // SAFETY: a NOP references no memory.
            unsafe { submit(&mut m, opcode::Nop::new().build(), record(&results)) }.unwrap();
            let start = Instant::now();
            while results.borrow().len() < 2 {
                assert!(start.elapsed() < LONG, "completions missing");
                poll(&mut m, SHORT);
            }
            let mut got = results.borrow().clone();
            got.sort_unstable();
            assert_eq!(
                got,
                [-libc::EBADF, 0],
                "the NOP was linked to the failing READ"
            );
            assert_eq!(m.in_flight(), 0);
        });
    }

    /// Completions that the kernel finishes as task work (timeouts, here more than one
    /// batch of deferred work) are reaped by non-blocking waits alone: with DEFER_TASKRUN
    /// they are only posted by an enter with GETEVENTS, which a wait that skipped the
    /// syscall whenever no SQE was queued would never make (a spinning `poll(false)` loop
    /// would then spin forever).
    #[test]
    fn nonblocking_waits_reap_task_work_completions() {
        each_ops_backend(|mut m| {
            const N: usize = 100;
            let done = Rc::new(Cell::new(0));
            for _ in 0..N {
                let ts = Box::new(types::Timespec::new().nsec(1_000_000));
                let entry = opcode::Timeout::new(&*ts).build();
                let done = done.clone();
                let callback = move |res: i32| {
                    assert_eq!(res, -libc::ETIME);
                    drop(ts);
                    done.set(done.get() + 1);
                };
                // SAFETY: the timespec lives in the callback, which the monitor keeps until
                // the CQE; the kernel reads it when the SQE is submitted.
                unsafe { submit(&mut m, entry, callback) }.unwrap();
            }
            let start = Instant::now();
            while done.get() < N {
                assert!(start.elapsed() < LONG, "{} of {N} reaped", done.get());
                poll(&mut m, ZERO);
            }
            assert_eq!(m.in_flight(), 0);
        });
    }

    /// An fd made ready by another thread is reported by non-blocking waits alone (its
    /// POLL_ADD completes as task work of this thread).
    #[test]
    fn nonblocking_waits_see_fd_readied_elsewhere() {
        each_backend(|mut m| {
            let efd = Arc::new(eventfd());
            m.set(efd.as_raw_fd(), 1, READ).unwrap();
            assert_eq!(poll(&mut m, ZERO), []);
            let writer = {
                let efd = efd.clone();
                std::thread::spawn(move || signal(&efd))
            };
            writer.join().unwrap();
            let start = Instant::now();
            loop {
                assert!(start.elapsed() < LONG, "not reported");
                if poll(&mut m, ZERO) == [(1, R)] {
                    break;
                }
            }
        });
    }

    /// Removing an fd lets go of the kernel's reference to it at once, so that closing it
    /// really closes it (here: the pipe's reader, so a write fails with EPIPE).
    #[test]
    fn removal_releases_the_file_before_close() {
        each_backend(|mut m| {
            let (rx, tx) = pipe();
            m.set(rx.as_raw_fd(), 1, READ).unwrap();
            assert_eq!(poll(&mut m, ZERO), []); // armed
            m.set(rx.as_raw_fd(), 1, NONE).unwrap();
            drop(rx);
            let res = nix::unistd::write(&tx, b"x");
            assert_eq!(res, Err(Errno::EPIPE), "the read end is still open");
        });
    }

    #[test]
    fn parses_aio_fdmon() {
        let parse = |v: &str| backend_from_env(Some(OsStr::new(v)));
        assert_eq!(backend_from_env(None).unwrap(), None);
        assert_eq!(parse("auto").unwrap(), None);
        assert_eq!(parse("epoll").unwrap(), Some(Backend::Epoll));
        assert_eq!(parse("io_uring").unwrap(), Some(Backend::IoUring));
        assert_eq!(
            parse("kqueue").unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        FdMonitor::new().unwrap();
    }
}
