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

    /// Clears the notifier; returns whether it was set.
    pub fn test_and_clear(&self) -> bool {
        let mut value: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from our own non-blocking eventfd.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), (&raw mut value).cast(), 8) };
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
