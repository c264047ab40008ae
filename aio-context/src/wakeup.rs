//! The notify/sleep protocol between an event loop and the threads that give it work
//! (QEMU's `notify_me`/`notified` pair in util/async.c, with explicit fences).
//!
//! Loop, before it may sleep: `notify_me += 2`; SeqCst fence; look for work (BH queue,
//! timers); sleep only if there is none. Producer: publish work; SeqCst fence (the
//! bottom-half crate issues it before `Notify::notify`); `notified = true`; if
//! `notify_me != 0`, kick the eventfd. This is store-buffering: the two fences forbid
//! the outcome where the loop misses the work *and* the producer misses `notify_me`.
//! (QEMU once ordered this with a plain increment and a barrier on the wrong side of it,
//! and lost wake-ups on weakly ordered hosts; here each fence names its pair.) After the
//! sleep the loop drops `notify_me` and clears `notified` ("accept"), and drains the
//! eventfd, which is not progress by itself.

#[cfg(loom)]
use loom::sync::atomic::{AtomicBool, AtomicU32, Ordering, fence};
#[cfg(not(loom))]
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering, fence};

/// The shared flags; `kick` is how a producer wakes a sleeping loop.
#[derive(Debug)]
pub struct Wakeup<K> {
    /// Non-zero while the loop may sleep (2 per blocking poll level).
    notify_me: AtomicU32,
    /// Set by every notification since the loop last accepted.
    notified: AtomicBool,
    kick: K,
}

impl<K: Fn()> Wakeup<K> {
    /// Flags for a loop woken by `kick` (an eventfd write).
    pub fn new(kick: K) -> Self {
        Wakeup {
            notify_me: AtomicU32::new(0),
            notified: AtomicBool::new(false),
            kick,
        }
    }

    /// Loop side: announces that it may sleep. Look for work after this returns.
    pub fn prepare_to_sleep(&self) {
        self.notify_me.fetch_add(2, Ordering::Relaxed);
        // Pairs with the producer's fence (store-buffering, module docs).
        fence(Ordering::SeqCst);
    }

    /// Loop side: done sleeping (or decided not to). Returns whether a notification
    /// arrived meanwhile.
    pub fn finish_sleep(&self) -> bool {
        self.notify_me.fetch_sub(2, Ordering::Release);
        self.accept()
    }

    /// Loop side: consumes the notifications so far (Acquire: the work published
    /// before them is visible).
    pub fn accept(&self) -> bool {
        let was = self.notified.swap(false, Ordering::AcqRel);
        // Orders the clear before the loop's next look for work.
        fence(Ordering::SeqCst);
        was
    }

    /// Loop side: whether a notification arrived since the last accept (then the loop
    /// must not sleep: QEMU's notifier `io_poll`).
    pub fn is_notified(&self) -> bool {
        self.notified.load(Ordering::Acquire)
    }

    /// Producer side, after publishing work. `fenced`: the caller already issued a
    /// SeqCst fence after publishing (the bottom-half crate does).
    pub fn notify(&self, fenced: bool) {
        if !fenced {
            fence(Ordering::SeqCst);
        }
        self.notified.store(true, Ordering::Relaxed);
        // The fence above orders the work before this load.
        if self.notify_me.load(Ordering::Relaxed) != 0 {
            (self.kick)();
        }
    }
}
