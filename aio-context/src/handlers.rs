//! fd handlers: registered callbacks keyed by fd, safe to change and remove from inside
//! their own callbacks.
//!
//! A handler's callbacks are taken out of the table while they run and put back only if
//! the handler still exists with the same generation, so a callback may replace or
//! remove its own handler (or any other) without aliasing or use-after-free: QEMU's
//! "deleted" flag and `aio_free_deleted_handlers`, expressed as ownership.

use std::collections::HashMap;
use std::os::fd::RawFd;

use slab::Slab;

use crate::fdmon::Interest;

/// A read or write callback.
pub(crate) type IoCallback = Box<dyn FnMut()>;
/// A busy-poll callback: returns whether there is work (then the ready callback runs).
pub(crate) type PollCallback = Box<dyn FnMut() -> bool>;

/// One registered fd.
pub(crate) struct Handler {
    pub(crate) fd: RawFd,
    pub(crate) generation: u32,
    pub(crate) read: Option<IoCallback>,
    pub(crate) write: Option<IoCallback>,
    pub(crate) poll: Option<PollCallback>,
    /// Runs when `poll` found work (QEMU's `io_poll_ready`); defaults to `read`.
    pub(crate) poll_ready: Option<IoCallback>,
    /// This handler's adaptive busy-poll window, in nanoseconds.
    pub(crate) poll_ns: u64,
}

impl Handler {
    pub(crate) fn interest(&self) -> Interest {
        Interest {
            read: self.read.is_some(),
            write: self.write.is_some(),
        }
    }
}

/// Which callback of a handler to take out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    Read,
    Write,
    PollReady,
}

/// The context's handler table.
#[derive(Default)]
pub(crate) struct Handlers {
    slab: Slab<Handler>,
    by_fd: HashMap<RawFd, usize>,
    next_generation: u32,
}

/// Packs a handler's slab key and generation into an fd-monitor token.
pub(crate) fn token(key: usize, generation: u32) -> u64 {
    ((key as u64) << 32) | u64::from(generation)
}

fn untoken(token: u64) -> (usize, u32) {
    ((token >> 32) as usize, token as u32)
}

impl Handlers {
    /// Inserts a handler for `fd`, replacing any previous one (whose callbacks, if one
    /// is running, are dropped when it returns). Returns the new token and the old one.
    pub(crate) fn insert(&mut self, mut handler: Handler) -> (u64, Option<(u64, Handler)>) {
        let old = self.remove(handler.fd);
        self.next_generation = self.next_generation.wrapping_add(1);
        handler.generation = self.next_generation;
        let (fd, generation) = (handler.fd, handler.generation);
        let key = self.slab.insert(handler);
        self.by_fd.insert(fd, key);
        (token(key, generation), old)
    }

    /// Removes the handler of `fd`; returns it (to be dropped outside the borrow) and
    /// its token.
    pub(crate) fn remove(&mut self, fd: RawFd) -> Option<(u64, Handler)> {
        let key = self.by_fd.remove(&fd)?;
        let h = self.slab.remove(key);
        Some((token(key, h.generation), h))
    }

    /// The handler a token names, if it still exists.
    pub(crate) fn get_mut(&mut self, token: u64) -> Option<&mut Handler> {
        let (key, generation) = untoken(token);
        self.slab
            .get_mut(key)
            .filter(|h| h.generation == generation)
    }

    fn place(h: &mut Handler, slot: Slot) -> &mut Option<IoCallback> {
        match slot {
            Slot::Read => &mut h.read,
            Slot::Write => &mut h.write,
            Slot::PollReady => &mut h.poll_ready,
        }
    }

    /// Takes one callback out for a call.
    pub(crate) fn take(&mut self, token: u64, slot: Slot) -> Option<IoCallback> {
        Self::place(self.get_mut(token)?, slot).take()
    }

    /// Puts a callback back after its call; returns it if its handler was removed or
    /// replaced meanwhile (the caller drops it, outside the borrow).
    pub(crate) fn put_back(
        &mut self,
        token: u64,
        slot: Slot,
        cb: IoCallback,
    ) -> Option<IoCallback> {
        match self.get_mut(token) {
            Some(h) => {
                *Self::place(h, slot) = Some(cb);
                None
            }
            None => Some(cb),
        }
    }

    /// Takes a busy-poll callback out for a call.
    pub(crate) fn take_poll(&mut self, token: u64) -> Option<PollCallback> {
        self.get_mut(token)?.poll.take()
    }

    /// Puts a busy-poll callback back (see [`Handlers::put_back`]).
    pub(crate) fn put_back_poll(&mut self, token: u64, cb: PollCallback) -> Option<PollCallback> {
        match self.get_mut(token) {
            Some(h) => {
                h.poll = Some(cb);
                None
            }
            None => Some(cb),
        }
    }

    /// Tokens of the handlers that have a busy-poll callback.
    pub(crate) fn pollable(&self) -> impl Iterator<Item = u64> + '_ {
        self.slab
            .iter()
            .filter(|(_, h)| h.poll.is_some())
            .map(|(k, h)| token(k, h.generation))
    }
}
