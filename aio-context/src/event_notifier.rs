//! QEMU's `EventNotifier`: an eventfd used as a level-triggered, counter-less flag.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

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
        // SAFETY: eventfd takes an initial count and flags and returns a new fd or -1.
        let fd = unsafe { libc::eventfd(u32::from(set), libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(EventNotifier { fd })
    }

    /// Wraps an eventfd made elsewhere (an ioeventfd's, a vhost-user kick or call fd),
    /// switching it to non-blocking so that [`test_and_clear`](Self::test_and_clear)
    /// never blocks.
    ///
    /// # Errors
    ///
    /// The `fcntl` error (for example, `fd` is not open).
    pub fn from_fd(fd: OwnedFd) -> io::Result<EventNotifier> {
        let raw = fd.as_raw_fd();
        // SAFETY: F_GETFL on a descriptor we own; no pointers involved.
        let flags = unsafe { libc::fcntl(raw, libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: F_SETFL with an int argument on a descriptor we own.
        if unsafe { libc::fcntl(raw, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
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
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our own eventfd.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), (&raw const one).cast(), 8) };
        if n == 8 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        // EAGAIN: the counter is saturated, which still means "set".
        if err.kind() == io::ErrorKind::WouldBlock {
            Ok(())
        } else {
            Err(err)
        }
    }

    /// Clears the notifier; returns whether it was set. Never blocks, even on an
    /// eventfd from [`from_fd`](Self::from_fd) whose other owner cleared `O_NONBLOCK`
    /// (the flag lives on the open file description they share) and drained it first.
    pub fn test_and_clear(&self) -> bool {
        let mut value: u64 = 0;
        let iov = libc::iovec {
            iov_base: (&raw mut value).cast(),
            iov_len: 8,
        };
        // SAFETY: reads at most 8 bytes into a live u64 described by one iovec;
        // RWF_NOWAIT makes the read fail with EAGAIN instead of sleeping, whatever the
        // fd's O_NONBLOCK says (eventfds support it since Linux 5.10).
        let mut n = unsafe { libc::preadv2(self.fd.as_raw_fd(), &iov, 1, -1, libc::RWF_NOWAIT) };
        if n < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EOPNOTSUPP) {
            // An older kernel: the O_NONBLOCK that `new`/`from_fd` set must do.
            // SAFETY: as above, a plain read of at most 8 bytes.
            n = unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut value).cast(), 8) };
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
        // SAFETY: F_SETFL with an int argument on a descriptor `theirs` owns.
        let rc = unsafe { libc::fcntl(theirs.as_raw_fd(), libc::F_SETFL, 0) };
        assert_eq!(rc, 0);
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
