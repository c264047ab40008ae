//! Draining a backend's requests before a shrink (QEMU's `bdrv_drained_begin` around
//! the truncate in `block_resize`), without stopping new ones.
//!
//! Requests count themselves in one of two epochs while in flight. A shrink first
//! publishes the smaller size, then flips the epoch and waits for the old epoch's
//! count to reach zero: every request that could have been checked against the old
//! size has then completed, and every later one is checked against the new size.
//! New requests flow meanwhile (they count in the new epoch), so a busy device
//! cannot starve the drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aio_context::AioContext;

/// The two epochs' counts of one backend.
#[derive(Debug, Default)]
pub(crate) struct Drain {
    epoch: AtomicUsize,
    count: [AtomicUsize; 2],
}

/// A request in flight; dropping it (after the request's completion ran) ends it.
#[derive(Debug)]
pub(crate) struct DrainToken {
    drain: Arc<Drain>,
    epoch: usize,
}

impl Drop for DrainToken {
    fn drop(&mut self) {
        // SeqCst: the drainer's load in `wait_old` must see this decrement after
        // everything the request did, its completion included.
        self.drain.count[self.epoch].fetch_sub(1, Ordering::SeqCst);
    }
}

impl Drain {
    /// A request starts: call BEFORE loading the size it is checked against.
    ///
    /// Every access is SeqCst, and so are the size's store in a shrink and its load in
    /// `submit`: in that single order, either the drainer's flip comes after this
    /// count (it waits for us) or our size load comes after its store (we see the new
    /// size). The re-check moves a request that raced with a flip into the new epoch,
    /// so a token left in the old epoch was counted before the flip.
    pub(crate) fn enter(self: &Arc<Drain>) -> DrainToken {
        loop {
            let epoch = self.epoch.load(Ordering::SeqCst);
            self.count[epoch].fetch_add(1, Ordering::SeqCst);
            if self.epoch.load(Ordering::SeqCst) == epoch {
                return DrainToken {
                    drain: self.clone(),
                    epoch,
                };
            }
            self.count[epoch].fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Flips the epoch and waits until every request of the old one has completed.
    /// Call with resizes serialized, after publishing the new size. If the calling
    /// thread has an `AioContext`, it is polled meanwhile (requests submitted there
    /// complete only through it: a VMM's devices without an iothread).
    pub(crate) fn wait_old(&self) {
        let old = self.epoch.load(Ordering::SeqCst);
        self.epoch.store(old ^ 1, Ordering::SeqCst);
        let ctx = AioContext::current();
        let start = Instant::now();
        let mut warned = false;
        while self.count[old].load(Ordering::SeqCst) != 0 {
            if let Some(ctx) = &ctx {
                ctx.poll(false);
            }
            if !warned && start.elapsed() > Duration::from_secs(5) {
                warned = true;
                tracing::warn!(
                    "block_resize: still waiting for {} request(s) in flight before the shrink",
                    self.count[old].load(Ordering::SeqCst)
                );
            }
            std::thread::sleep(Duration::from_micros(50));
        }
    }

    /// Requests in flight (both epochs).
    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.count[0].load(Ordering::SeqCst) + self.count[1].load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shrink_waits_for_the_old_epoch_only() {
        let d = Arc::new(Drain::default());
        let old = d.enter();
        let d2 = d.clone();
        let waiter = std::thread::spawn(move || d2.wait_old());
        // Wait for the flip, then a new request comes: the drain does not wait for it.
        while d.epoch.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        let new = d.enter();
        assert_eq!(d.in_flight(), 2);
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !waiter.is_finished(),
            "drained with a request of the old epoch in flight"
        );
        drop(old);
        waiter.join().unwrap();
        assert_eq!(d.in_flight(), 1);
        drop(new);
        assert_eq!(d.in_flight(), 0);
    }
}
