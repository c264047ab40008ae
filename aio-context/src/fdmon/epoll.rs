//! The epoll backend: level-triggered epoll, plus (when io_uring works) a side [`Ring`] for
//! operations whose completions are signalled on an eventfd (`IORING_REGISTER_EVENTFD`) that
//! epoll watches. epoll's `data` is the fd; the eventfd is recognized by its number and never
//! reported (a user fd can't share the number while the eventfd is open).
//!
//! The side ring may have a kernel submission thread (`AIO_URING_SQPOLL`, see
//! [`super::sqpoll_from_env`]): only operations go through it, so the fd monitoring
//! semantics (a zero-timeout wait reports an fd that is ready now) are epoll's, which a
//! submission thread cannot delay. That is why SQPOLL lives here and not on the
//! io_uring monitor's ring, whose fd polls would be armed on the thread's schedule.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};

use super::uring::Ring;
use super::{Completion, Interest, Readiness, deadline, remaining};

/// Events taken per `epoll_wait`; more ready fds are reported by the next wait.
const MAX_EVENTS: usize = 64;
const SIDE_RING_ENTRIES: u32 = 64;

/// A ring for operations whose CQEs bump `eventfd`.
struct SideRing {
    // Dropped first: the ring's drop waits for in-flight ops, then closes it.
    ring: Ring,
    eventfd: EventFd,
}

/// The epoll backend.
pub(super) struct EpollMonitor {
    side: Option<SideRing>,
    epoll: Epoll,
    /// fd → (token, interest).
    regs: HashMap<RawFd, (u64, Interest)>,
    events: Vec<EpollEvent>,
}

/// What `epoll_ctl` should do with an fd.
#[derive(Clone, Copy)]
enum Ctl {
    Add,
    Modify,
    Delete,
}

impl EpollMonitor {
    /// `sqpoll`: the side ring's submission thread idle time, in ms (`None`: no thread).
    pub(super) fn new(sqpoll: Option<u32>) -> io::Result<EpollMonitor> {
        let mut monitor = EpollMonitor {
            side: None,
            epoll: Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)?,
            regs: HashMap::new(),
            events: vec![EpollEvent::empty(); MAX_EVENTS],
        };
        // Without io_uring this is just a monitor that can't run operations.
        monitor.side = match (sqpoll, monitor.side_ring(sqpoll)) {
            (Some(idle_ms), Err(e)) => {
                tracing::warn!(
                    "io_uring: no ring with a submission thread (SQPOLL, {idle_ms} ms idle): \
                     {e}; operations are submitted by the event loop"
                );
                monitor.side_ring(None).ok()
            }
            (_, ring) => ring.ok(),
        };
        Ok(monitor)
    }

    fn side_ring(&self, sqpoll: Option<u32>) -> io::Result<SideRing> {
        // No DEFER_TASKRUN: the eventfd must mean "CQEs are on the CQ", and deferred task
        // work would only post them at an enter with GETEVENTS (see `uring`'s docs).
        let ring = Ring::new(SIDE_RING_ENTRIES, 2 * SIDE_RING_ENTRIES, &[], false, sqpoll)?;
        let eventfd = EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        self.epoll.add(
            &eventfd,
            EpollEvent::new(EpollFlags::EPOLLIN, eventfd.as_raw_fd() as u32 as u64),
        )?;
        Ok(SideRing { ring, eventfd })
    }

    pub(super) fn ring(&self) -> Option<&Ring> {
        self.side.as_ref().map(|s| &s.ring)
    }

    pub(super) fn ring_mut(&mut self) -> Option<&mut Ring> {
        self.side.as_mut().map(|s| &mut s.ring)
    }

    /// `epoll_ctl` on a registered fd number. epoll's `data` is the fd itself.
    fn ctl(&self, op: Ctl, fd: RawFd, events: EpollFlags) -> Result<(), Errno> {
        if fd < 0 {
            // What the kernel answers for a negative fd; `borrow_raw` must not see -1.
            return Err(Errno::EBADF);
        }
        // SAFETY: `fd` is not -1 (checked above), and `FdMonitor::set`'s contract is that
        // a registered fd stays open until it is removed. The fd comes in by number
        // (`AioContext::set_fd_handler` takes a `RawFd`, as QEMU's `aio_set_fd_handler`),
        // and the borrow lasts for this one `epoll_ctl`, which only hands the number to
        // the kernel: no Rust code reads or writes through it. A caller that closed the
        // fd before removing it gets EBADF or ENOENT from the kernel (handled in `set`),
        // exactly as with the raw syscall.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let mut event = EpollEvent::new(events, fd.as_raw_fd() as u32 as u64);
        match op {
            Ctl::Add => self.epoll.add(fd, event),
            Ctl::Modify => self.epoll.modify(fd, &mut event),
            Ctl::Delete => self.epoll.delete(fd),
        }
    }

    pub(super) fn set(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        if interest.is_empty() {
            if self.regs.remove(&fd).is_none() {
                return Ok(());
            }
            return match self.ctl(Ctl::Delete, fd, EpollFlags::empty()) {
                // Closing the fd already removed it.
                Err(Errno::EBADF | Errno::ENOENT) => Ok(()),
                res => res.map_err(io::Error::from),
            };
        }
        let mut events = EpollFlags::empty();
        if interest.read {
            events |= EpollFlags::EPOLLIN;
        }
        if interest.write {
            events |= EpollFlags::EPOLLOUT;
        }
        match self.regs.get(&fd) {
            Some(&(_, old)) if old == interest => {}
            // ENOENT: the fd was closed (and maybe reopened) without being removed first.
            Some(_) => match self.ctl(Ctl::Modify, fd, events) {
                Err(Errno::ENOENT) => self.ctl(Ctl::Add, fd, events)?,
                res => res?,
            },
            None => self.ctl(Ctl::Add, fd, events)?,
        }
        self.regs.insert(fd, (token, interest));
        Ok(())
    }

    pub(super) fn wait(
        &mut self,
        timeout: Option<Duration>,
        ready: &mut Vec<(u64, Readiness)>,
        completions: &mut Vec<Completion>,
    ) -> io::Result<()> {
        if let Some(side) = &mut self.side {
            side.ring.submit()?;
        }
        let until = deadline(timeout);
        let (ready_len, completions_len) = (ready.len(), completions.len());
        loop {
            // Milliseconds, rounded up so that a short timeout doesn't spin (QEMU does the same).
            let timeout = remaining(until).map_or(EpollTimeout::NONE, |left| {
                let ms = left.as_nanos().div_ceil(1_000_000);
                EpollTimeout::try_from(ms).unwrap_or(EpollTimeout::MAX)
            });
            let n = match self.epoll.wait(&mut self.events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => return Err(e.into()),
            };
            let mut kicked = false;
            for event in &self.events[..n] {
                let (bits, fd) = (event.events().bits() as u32, event.data() as RawFd);
                match &self.side {
                    Some(side) if side.eventfd.as_raw_fd() == fd => kicked = true,
                    _ => {
                        if let Some(&(token, interest)) = self.regs.get(&fd) {
                            let readiness = Readiness::from_poll_bits(bits, interest);
                            if readiness.any() {
                                ready.push((token, readiness));
                            }
                        }
                    }
                }
            }
            if let Some(side) = &mut self.side {
                if kicked {
                    // Reset the eventfd *before* reaping, so a CQE posted in between is either
                    // reaped now or signals the eventfd again.
                    // Nonblocking: EAGAIN (already reset) is harmless.
                    let _ = side.eventfd.read();
                }
                side.ring.reap(completions, |_, _| {});
            }
            let progress = ready.len() > ready_len || completions.len() > completions_len;
            // n == 0: timed out (or interrupted, or a zero timeout).
            if progress || n == 0 {
                return Ok(());
            }
        }
    }
}
