//! QEMU's `EventNotifier`: an eventfd used as a level-triggered, counter-less flag.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::eventfd::{EfdFlags, EventFd};

/// An eventfd that one side sets and the other tests and clears. Handlers registered
/// with [`AioContext::set_event_notifier`](crate::AioContext::set_event_notifier) run
/// while it is set.
#[derive(Debug)]
pub struct EventNotifier {
    fd: OwnedFd,
}

impl EventNotifier {
    /// A new notifier, initially set or clear.
    pub fn new(set: bool) -> io::Result<EventNotifier> {
        let flags = EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK;
        let fd = EventFd::from_value_and_flags(u32::from(set), flags)?;
        Ok(EventNotifier { fd: fd.into() })
    }

    /// Wraps an eventfd made elsewhere (an ioeventfd's, a vhost-user kick or call fd),
    /// switching it to non-blocking so that [`test_and_clear`](Self::test_and_clear)
    /// never blocks.
    ///
    /// # Errors
    ///
    /// The `fcntl` error (for example, `fd` is not open).
    pub fn from_fd(fd: OwnedFd) -> io::Result<EventNotifier> {
        let flags = OFlag::from_bits_retain(fcntl(&fd, FcntlArg::F_GETFL)?);
        fcntl(&fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(EventNotifier { fd })
    }

    /// A second notifier on the same eventfd (for the other side: an irqfd, a kick
    /// source).
    ///
    /// # Errors
    ///
    /// The `dup` error.
    pub fn try_clone(&self) -> io::Result<EventNotifier> {
        Ok(EventNotifier {
            fd: self.fd.try_clone()?,
        })
    }

    /// Sets the notifier (idempotent until cleared). Safe from any thread.
    ///
    /// On an eventfd shared with a process that can clear `O_NONBLOCK` and fill the
    /// counter, this write can sleep (eventfds take no `RWF_NOWAIT` writes): signal such
    /// an fd with an io_uring write instead, as vmm-bin's vhost-user call fds do.
    pub fn set(&self) -> io::Result<()> {
        match nix::unistd::write(&self.fd, &1u64.to_ne_bytes()) {
            // EAGAIN: the counter is saturated, which still means "set".
            Ok(_) | Err(Errno::EAGAIN) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Clears the notifier; returns whether it was set. Never blocks, even on an
    /// eventfd from [`from_fd`](Self::from_fd) whose other owner cleared `O_NONBLOCK`
    /// (the flag lives on the open file description they share) and drained it first.
    pub fn test_and_clear(&self) -> bool {
        // libc, not nix: nix wraps `preadv` but not `preadv2`, and only `preadv2` takes
        // per-call flags (RWF_NOWAIT); `O_NONBLOCK` alone is not enough here (see above).
        let mut value: u64 = 0;
        let iov = libc::iovec {
            iov_base: (&raw mut value).cast(),
            iov_len: 8,
        };
        // SAFETY: reads at most 8 bytes into a live u64 described by one iovec;
        // RWF_NOWAIT makes the read fail with EAGAIN instead of sleeping, whatever the
        // fd's O_NONBLOCK says (eventfds support it since Linux 5.10).
        let n = unsafe { libc::preadv2(self.fd.as_raw_fd(), &iov, 1, -1, libc::RWF_NOWAIT) };
        if n < 0 && Errno::last() == Errno::EOPNOTSUPP {
            // An older kernel: the O_NONBLOCK that `new`/`from_fd` set must do.
            let mut buf = [0u8; 8];
            return nix::unistd::read(&self.fd, &mut buf) == Ok(8) && u64::from_ne_bytes(buf) > 0;
        }
        n == 8 && value > 0
    }
}

impl AsFd for EventNotifier {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for EventNotifier {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A foreign eventfd whose other owner cleared O_NONBLOCK (shared through the open
    /// file description) and drained it: test_and_clear still returns at once (issue
    /// 14: a vhost-user frontend blocked the export's iothread this way).
    #[test]
    fn test_and_clear_never_blocks_on_a_shared_blocking_eventfd() {
        let theirs = EventNotifier::new(false).unwrap();
        let ours = EventNotifier::from_fd(theirs.fd.try_clone().unwrap()).unwrap();
        fcntl(&theirs, FcntlArg::F_SETFL(OFlag::empty())).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(ours.test_and_clear());
        });
        let result = rx.recv_timeout(std::time::Duration::from_secs(10));
        // Unblock a reader that did block, so the test process can end.
        theirs.set().unwrap();
        assert_eq!(
            result,
            Ok(false),
            "test_and_clear blocked on an empty eventfd"
        );
    }
}
