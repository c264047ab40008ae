//! The debug check behind invariant 7 of the workspace design: nothing blocks inside an
//! RCU read section or inside a `call_rcu` callback.
//!
//! A blocking wait in a read section (an I/O drain reached from a vCPU's port dispatch,
//! a lock held by a thread that may synchronize) holds up every grace period for as long
//! as it waits, and deadlocks outright if what it waits for needs one. A blocking wait in
//! a `call_rcu` callback stalls the one reclaim thread, and with it every later
//! callback of the process. Code that waits (drains, cross-thread rendezvous,
//! [`synchronize`](crate::synchronize)) calls [`assert_may_block`] first, so that tests
//! and debug builds catch a wait that a path change moved into such a place.

use std::cell::Cell;

thread_local! {
    /// Depth of `call_rcu` callbacks running on this thread (the reclaim thread sets it
    /// around each callback).
    static IN_CALLBACK: Cell<u32> = const { Cell::new(0) };
}

/// Marks the current thread as running a `call_rcu` callback until dropped.
pub(crate) struct CallbackScope(());

impl CallbackScope {
    pub(crate) fn enter() -> CallbackScope {
        IN_CALLBACK.with(|c| c.set(c.get() + 1));
        CallbackScope(())
    }
}

impl Drop for CallbackScope {
    fn drop(&mut self) {
        IN_CALLBACK.with(|c| c.set(c.get().saturating_sub(1)));
    }
}

/// Where a blocking wait on the calling thread would be wrong, if anywhere.
fn forbidden_here() -> Option<&'static str> {
    if crate::reader::in_read_section() {
        Some("inside an RCU read section (it holds up every grace period)")
    } else if IN_CALLBACK.with(Cell::get) > 0 {
        Some("inside a call_rcu callback (it stalls every later reclaim)")
    } else {
        None
    }
}

/// Whether the calling thread may block: it holds no memb read guard ([`read`](crate::read),
/// [`read_mb`](crate::read_mb)) and is not running a [`call_rcu`](crate::call_rcu)
/// callback. (An online QSBR thread may block: its read sections end at its next
/// quiescent state, which an event loop reports between callbacks.)
///
/// ```
/// assert!(rcu::may_block());
/// let guard = rcu::read();
/// assert!(!rcu::may_block());
/// drop(guard);
/// ```
pub fn may_block() -> bool {
    forbidden_here().is_none()
}

/// Whether [`assert_may_block`] checks (this crate was built with debug assertions).
/// Evaluated in this crate, so a caller built with another profile (a doctest under
/// `cargo test --release`) reads the truth.
pub const BLOCKING_CHECKS: bool = cfg!(debug_assertions);

/// Reports a blocking wait named `what` (an I/O drain, a rendezvous with another thread)
/// that is about to start where it must not: inside a read section or inside a
/// `call_rcu` callback.
///
/// In debug builds (and so in tests) it panics, naming `what` and the place; in release
/// builds it does nothing and costs nothing. Call it at the top of every function that
/// waits for another thread or for I/O.
///
/// ```
/// rcu::assert_may_block("drain"); // fine: not a reader
/// let result = std::panic::catch_unwind(|| {
///     let _guard = rcu::read();
///     rcu::assert_may_block("drain");
/// });
/// assert_eq!(result.is_err(), rcu::BLOCKING_CHECKS);
/// ```
///
/// # Panics
///
/// In debug builds, where [`may_block`] is false.
#[inline]
#[track_caller]
pub fn assert_may_block(what: &str) {
    if BLOCKING_CHECKS {
        if let Some(place) = forbidden_here() {
            panic!("blocking wait `{what}` {place}");
        }
    }
}
