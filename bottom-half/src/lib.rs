//! Bottom halves (BHs): QEMU's deferred callbacks, each owned by one event loop.
//!
//! A [`Bh`] is a callback that belongs to one [`BhList`] for its whole life (the list of
//! one `AioContext`, after QEMU commit a9716f5b "aio: introduce AioContext, move bottom
//! halves there"). Any thread may schedule it, wait-free; the list's owner runs it in
//! its next [`BhList::poll`]. The owner learns that work arrived through the small
//! [`Notify`] trait, which the event loop implements (an eventfd write, if it sleeps).
//!
//! The invariant (design.md, invariant 1): a BH belongs to one list for life;
//! scheduling is wait-free and allowed from any thread; deleting a BH while another
//! thread schedules it, or while the owner is dispatching BHs (including from inside a
//! nested poll), is safe and never runs a deleted BH. No use-after-free is expressible:
//! handles are reference-counted, the queue holds a reference while a BH is pending,
//! and a dispatch holds one while the callback runs.
//!
//! ```
//! use bottom_half::{BhList, Notify};
//! use std::sync::mpsc;
//!
//! struct Ignore;
//! impl Notify for Ignore {
//!     fn notify(&self) {}
//! }
//!
//! let list = BhList::new(Ignore);
//! let (tx, rx) = mpsc::channel();
//! let scheduler = list.scheduler();
//! std::thread::spawn(move || scheduler.schedule_oneshot(move || tx.send("ran").unwrap()))
//!     .join()
//!     .unwrap();
//! assert!(list.poll()); // the one-shot runs here, on the owner's thread
//! assert_eq!(rx.recv().unwrap(), "ran");
//! ```
//!
//! `DESIGN.md` beside this crate describes the queue, the flags and the slice rules.
#![deny(missing_docs)]

mod bh;
mod list;
mod queue;
mod shared;
mod sync;

pub use bh::Bh;
pub use list::{BhList, BhScheduler, IDLE_TIMEOUT};

/// How a [`BhList`] wakes its owner when a BH becomes pending.
///
/// `notify` runs on the scheduling thread, after the BH was queued and after a
/// sequentially consistent fence; an event loop can therefore test its "may sleep" flag
/// with a relaxed load and write its eventfd only if the owner may be asleep.
pub trait Notify: Send + Sync + 'static {
    /// Wakes the owner (or does nothing if it is known to be awake).
    fn notify(&self);
}

impl<F: Fn() + Send + Sync + 'static> Notify for F {
    fn notify(&self) {
        self()
    }
}
