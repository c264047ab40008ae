//! Termination signals (SIGTERM, SIGINT, SIGHUP) read from a `signalfd`, so that a
//! process can shut down as QEMU does: cleanly (disks drained and flushed, socket files
//! removed, exit status 0), saying why on stderr in QEMU's words:
//!
//! ```text
//! vmm-bin: terminating on signal 15 from pid 4242 (bash)
//! vmm-bin: terminated by signal 2          (no sender: a ^C at the terminal)
//! ```
//!
//! No work is done in a signal handler: [`TerminationSignals::block`] blocks the three
//! signals in the calling thread, which every thread spawned afterwards inherits, and
//! reads them from a `signalfd`: from an event loop (register
//! [`TerminationSignals::fd`] on an [`AioContext`](crate::AioContext) with an
//! [`FdHandler`](crate::FdHandler)), or with a blocking [`TerminationSignals::wait`].
//!
//! ```no_run
//! use aio_context::signals::TerminationSignals;
//!
//! // First, while the process has one thread: every later thread inherits the mask.
//! let signals = TerminationSignals::block()?;
//! let why = signals.wait()?; // e.g. `kill -TERM <pid>`
//! eprintln!("{}", why.message("demo"));
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

/// The signals that end the process.
const SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

/// Set once a termination signal has been read.
static TERMINATING: AtomicBool = AtomicBool::new(false);

/// Whether a termination signal has been read (by any [`TerminationSignals`]): startup
/// waits, such as QMP's `wait=on`, end early when it is.
pub fn terminating() -> bool {
    // Relaxed: a flag with no data behind it; the reader polls the same thread's
    // context that set it, or merely stops waiting a little later.
    TERMINATING.load(Ordering::Relaxed)
}

/// A termination signal that arrived: which, and who sent it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Termination {
    /// The signal number.
    pub signal: i32,
    /// The sender's pid; 0 when the kernel sent it (a ^C at the terminal).
    pub pid: i32,
}

impl Termination {
    /// QEMU's report (`qemu_kill_report`) prefixed with `program`, as the log prints it
    /// (`vmm-bin: terminating on signal 15 from pid 42 (kill)`); the log adds the
    /// prefix itself: `tracing::error!("{signal}")`.
    pub fn message(&self, program: &str) -> String {
        format!("{program}: {self}")
    }
}

/// QEMU's report (`qemu_kill_report`) without the program name: the sender is named by
/// the first word of its command line, as QEMU names it.
impl std::fmt::Display for Termination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.pid == 0 {
            return write!(f, "terminated by signal {}", self.signal);
        }
        let name = std::fs::read(format!("/proc/{}/cmdline", self.pid))
            .ok()
            .and_then(|cmdline| {
                let first = cmdline.split(|&b| b == 0).next()?;
                (!first.is_empty()).then(|| String::from_utf8_lossy(first).into_owned())
            })
            .unwrap_or_else(|| "<unknown process>".to_owned());
        write!(
            f,
            "terminating on signal {} from pid {} ({name})",
            self.signal, self.pid
        )
    }
}

/// SIGTERM, SIGINT and SIGHUP, blocked and readable from a `signalfd`.
#[derive(Debug)]
pub struct TerminationSignals {
    fd: SignalFd,
}

impl TerminationSignals {
    /// Blocks the termination signals in the calling thread and opens a non-blocking
    /// `signalfd` for them. Call it before spawning any thread (vCPUs, iothreads): a
    /// thread inherits the mask it is created with, and a thread that does not block
    /// them would take the default action (death) for the whole process.
    ///
    /// # Errors
    ///
    /// If the mask cannot be changed or the `signalfd` cannot be created.
    pub fn block() -> io::Result<TerminationSignals> {
        let mut set = SigSet::empty();
        for signal in SIGNALS {
            set.add(signal);
        }
        set.thread_block().map_err(io::Error::from)?;
        let fd = SignalFd::with_flags(&set, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
            .map_err(io::Error::from)?;
        Ok(TerminationSignals { fd })
    }

    /// The descriptor to watch for readability.
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The next pending signal, if any (never blocks).
    ///
    /// # Errors
    ///
    /// A failed read of the `signalfd`.
    pub fn try_read(&self) -> io::Result<Option<Termination>> {
        let info = self.fd.read_signal().map_err(io::Error::from)?;
        Ok(info.map(|info| {
            TERMINATING.store(true, Ordering::Relaxed);
            Termination {
                signal: info.ssi_signo as i32,
                pid: info.ssi_pid as i32,
            }
        }))
    }

    /// Waits for a termination signal.
    ///
    /// # Errors
    ///
    /// A failed `poll` or read.
    pub fn wait(&self) -> io::Result<Termination> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        loop {
            if let Some(t) = self.try_read()? {
                return Ok(t);
            }
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_follow_qemu() {
        let by_kernel = Termination { signal: 2, pid: 0 };
        assert_eq!(
            by_kernel.message("vmm-bin"),
            "vmm-bin: terminated by signal 2"
        );
        let me = std::process::id() as i32;
        let by_us = Termination {
            signal: 15,
            pid: me,
        };
        let text = by_us.message("vmm-bin");
        assert!(
            text.starts_with(&format!(
                "vmm-bin: terminating on signal 15 from pid {me} ("
            )),
            "{text}"
        );
        assert!(!text.contains("<unknown process>"), "{text}");
        let gone = Termination {
            signal: 1,
            pid: i32::MAX,
        };
        assert!(gone.message("x").ends_with("(<unknown process>)"));
    }

    #[test]
    fn a_signal_sent_to_a_blocking_thread_is_read_from_the_fd() {
        // On a thread of its own: the mask stays with that thread.
        std::thread::spawn(|| {
            let signals = TerminationSignals::block().unwrap();
            assert_eq!(signals.try_read().unwrap(), None);
            // Thread-directed, so no other thread of the test process can take it.
            // SAFETY: pthread_self is always valid; SIGHUP is blocked in this thread,
            // so it stays pending until the signalfd read below consumes it.
            let rc = unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGHUP) };
            assert_eq!(rc, 0);
            let t = signals.wait().unwrap();
            assert_eq!(t.signal, libc::SIGHUP);
            assert_eq!(t.pid, std::process::id() as i32);
        })
        .join()
        .unwrap();
    }
}
