//! The epoll backend: level-triggered epoll, plus (when io_uring works) a side [`Ring`] for
//! operations whose completions are signalled on an eventfd (`IORING_REGISTER_EVENTFD`) that
//! epoll watches. epoll's `data` is the fd; the eventfd is recognized by its number and never
//! reported (a user fd can't share the number while the eventfd is open).

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use super::uring::Ring;
use super::{Completion, Interest, Readiness, deadline, is_errno, remaining};

/// Events taken per `epoll_wait`; more ready fds are reported by the next wait.
const MAX_EVENTS: usize = 64;
const SIDE_RING_ENTRIES: u32 = 64;

/// A ring for operations whose CQEs bump `eventfd`.
struct SideRing {
    // Dropped first: the ring's drop waits for in-flight ops, then closes it.
    ring: Ring,
    eventfd: OwnedFd,
}

/// The epoll backend.
pub(super) struct EpollMonitor {
    side: Option<SideRing>,
    epfd: OwnedFd,
    /// fd → (token, interest).
    regs: HashMap<RawFd, (u64, Interest)>,
    events: Vec<libc::epoll_event>,
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Takes ownership of a new fd returned by a syscall.
fn owned(ret: libc::c_int) -> io::Result<OwnedFd> {
    let fd = cvt(ret)?;
    // SAFETY: `fd` was just returned by the kernel, is open, and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl EpollMonitor {
    pub(super) fn new() -> io::Result<EpollMonitor> {
        // SAFETY: plain syscall without pointers.
        let epfd = owned(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        let mut monitor = EpollMonitor {
            side: None,
            epfd,
            regs: HashMap::new(),
            events: vec![libc::epoll_event { events: 0, u64: 0 }; MAX_EVENTS],
        };
        // Without io_uring this is just a monitor that can't run operations.
        monitor.side = monitor.side_ring().ok();
        Ok(monitor)
    }

    fn side_ring(&self) -> io::Result<SideRing> {
        // No DEFER_TASKRUN: the eventfd must mean "CQEs are on the CQ", and deferred task
        // work would only post them at an enter with GETEVENTS (see `uring`'s docs).
        let ring = Ring::new(SIDE_RING_ENTRIES, 2 * SIDE_RING_ENTRIES, &[], false)?;
        let flags = libc::EFD_CLOEXEC | libc::EFD_NONBLOCK;
        // SAFETY: plain syscall without pointers.
        let eventfd = owned(unsafe { libc::eventfd(0, flags) })?;
        ring.submitter().register_eventfd(eventfd.as_raw_fd())?;
        self.ctl(
            libc::EPOLL_CTL_ADD,
            eventfd.as_raw_fd(),
            libc::EPOLLIN as u32,
        )?;
        Ok(SideRing { ring, eventfd })
    }

    pub(super) fn ring(&self) -> Option<&Ring> {
        self.side.as_ref().map(|s| &s.ring)
    }

    pub(super) fn ring_mut(&mut self) -> Option<&mut Ring> {
        self.side.as_mut().map(|s| &mut s.ring)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32) -> io::Result<()> {
        let mut event = libc::epoll_event {
            events,
            u64: fd as u32 as u64,
        };
        // SAFETY: `event` is a valid epoll_event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.epfd.as_raw_fd(), op, fd, &mut event) }).map(drop)
    }

    pub(super) fn set(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        if interest.is_empty() {
            if self.regs.remove(&fd).is_none() {
                return Ok(());
            }
            return match self.ctl(libc::EPOLL_CTL_DEL, fd, 0) {
                // Closing the fd already removed it.
                Err(e) if is_errno(&e, libc::EBADF) || is_errno(&e, libc::ENOENT) => Ok(()),
                res => res,
            };
        }
        let mut events = 0;
        if interest.read {
            events |= libc::EPOLLIN as u32;
        }
        if interest.write {
            events |= libc::EPOLLOUT as u32;
        }
        match self.regs.get(&fd) {
            Some(&(_, old)) if old == interest => {}
            // ENOENT: the fd was closed (and maybe reopened) without being removed first.
            Some(_) => match self.ctl(libc::EPOLL_CTL_MOD, fd, events) {
                Err(e) if is_errno(&e, libc::ENOENT) => {
                    self.ctl(libc::EPOLL_CTL_ADD, fd, events)?
                }
                res => res?,
            },
            None => self.ctl(libc::EPOLL_CTL_ADD, fd, events)?,
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
            let ms = remaining(until).map_or(-1, |left| {
                let ms = left.as_nanos().div_ceil(1_000_000);
                ms.min(libc::c_int::MAX as u128) as libc::c_int
            });
            let (epfd, events) = (self.epfd.as_raw_fd(), &mut self.events);
            // SAFETY: `events` has room for `events.len()` entries, which the kernel fills.
            let n = unsafe { libc::epoll_wait(epfd, events.as_mut_ptr(), events.len() as _, ms) };
            let n = match cvt(n) {
                Ok(n) => n as usize,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => return Err(e),
            };
            let mut kicked = false;
            for &event in &self.events[..n] {
                let (bits, fd) = (event.events, event.u64 as RawFd);
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
                    let mut count = 0u64;
                    // SAFETY: reads 8 bytes into `count`; nonblocking, EAGAIN is harmless.
                    unsafe { libc::read(side.eventfd.as_raw_fd(), (&raw mut count).cast(), 8) };
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
