//! Read-copy-update (RCU) with a read side as cheap as liburcu's.
//!
//! Readers enter a read section, load shared pointers and use what they point to
//! without locks; writers publish new versions and reclaim old ones only after a *grace
//! period*: once every read section that could have seen the old version has ended.
//!
//! - **memb readers** ([`read`]): a nestable [`Guard`] that costs a load, a store and a
//!   compiler barrier on entry and exit. The updater pays instead, with
//!   `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`; where the kernel lacks it, both
//!   sides fall back to full fences at run time ([`read_mb`] is that read side, QEMU's
//!   default, kept as a benchmark anchor).
//! - **QSBR readers** ([`QsbrThread`]): read sections cost nothing; the thread reports
//!   quiescent states (an event loop does at each iteration) and goes offline around
//!   blocking calls.
//! - **Updaters**: [`synchronize`] waits for a grace period covering both kinds of
//!   reader; concurrent callers share one. [`call_rcu`] and [`defer_drop`] run work after
//!   a grace period on a background thread, in batches; [`barrier`] waits for them.
//! - **Data structures**: [`RcuCell`] (a replaceable published value) and [`RcuList`]
//!   (QEMU's `rcu_queue.h` semantics).
//! - **No blocking where it stalls reclaim**: [`assert_may_block`] panics in debug builds
//!   when a wait (an I/O drain, a rendezvous) starts inside a read section or a
//!   `call_rcu` callback; code that waits calls it first.
//!
//! The invariant: a reference obtained under a guard borrows the guard, so the borrow
//! checker proves it cannot outlive the read section, and nothing reachable by a read
//! section is freed before that section ends.
//!
//! ```
//! use rcu::RcuCell;
//! use std::sync::Arc;
//!
//! let table = Arc::new(RcuCell::new(vec![1, 2, 3]));
//! let reader = {
//!     let table = table.clone();
//!     std::thread::spawn(move || {
//!         let guard = rcu::read();
//!         table.load(&guard).map_or(0, |v| v.len()) // either version, never freed memory
//!     })
//! };
//! table.replace(vec![4, 5]); // old vector dropped after the reader's section ends
//! assert!(matches!(reader.join().unwrap(), 2 | 3));
//! rcu::barrier(); // every deferred drop so far has run
//! ```
//!
//! `DESIGN.md` beside this crate explains the algorithm, its memory-ordering argument,
//! and how it differs from QEMU's `util/rcu.c`, crossbeam-epoch and rcu-clean.
#![deny(missing_docs)]
#![cfg_attr(loom, allow(dead_code, unused_imports))]

mod barrier;
mod domain;
mod sync;
#[cfg(test)]
mod test_hooks;
#[cfg(test)]
mod tests;

#[cfg(not(loom))]
mod call_rcu;
#[cfg(not(loom))]
mod cell;
#[cfg(not(loom))]
mod list;
#[cfg(not(loom))]
mod may_block;
#[cfg(not(loom))]
mod qsbr;
#[cfg(not(loom))]
mod reader;

#[cfg(not(loom))]
pub use call_rcu::{barrier, call_rcu, defer_drop};
#[cfg(not(loom))]
pub use cell::RcuCell;
#[cfg(not(loom))]
pub use list::{Iter, ListWriter, RcuList};
#[cfg(not(loom))]
pub use may_block::{BLOCKING_CHECKS, assert_may_block, may_block};
#[cfg(not(loom))]
pub use qsbr::{QsbrGuard, QsbrThread};
#[cfg(not(loom))]
pub use reader::{Guard, MbGuard, read, read_mb, synchronize, uses_membarrier};

/// Errors of this crate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// [`QsbrThread::register`] on a thread that already has a live `QsbrThread`.
    #[error("this thread is already registered as a QSBR reader")]
    AlreadyRegistered,
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// A read-side critical section of either flavour: what [`RcuCell::load`] and
/// [`RcuList::iter`] accept as proof that the caller is a reader. Sealed.
pub trait ReadSide: private::Sealed {}

#[cfg(not(loom))]
impl ReadSide for Guard {}
#[cfg(not(loom))]
impl ReadSide for MbGuard {}
#[cfg(not(loom))]
impl ReadSide for QsbrGuard<'_> {}

mod private {
    /// Only this crate's guards are read sections.
    pub trait Sealed {}
    #[cfg(not(loom))]
    impl Sealed for crate::Guard {}
    #[cfg(not(loom))]
    impl Sealed for crate::MbGuard {}
    #[cfg(not(loom))]
    impl Sealed for crate::QsbrGuard<'_> {}
}

/// The grace-period protocol on a private domain, for loom models (`tests/loom_*.rs`).
#[cfg(loom)]
pub mod loom_model {
    use crate::domain::{Domain, Record, Slot};

    /// A private set of readers and updaters, with full fences on both sides.
    pub struct ModelDomain(Domain);

    /// A reader thread's record in a [`ModelDomain`].
    pub struct ModelReader<'d> {
        domain: &'d Domain,
        rec: Box<Record>,
        slot: &'d Slot,
    }

    impl ModelDomain {
        /// A fresh domain.
        pub fn new() -> Self {
            ModelDomain(Domain::new())
        }
        /// Registers a reader.
        pub fn register(&self) -> ModelReader<'_> {
            let rec = Box::new(Record::new());
            // SAFETY: the box moves into the returned reader, whose `Drop` withdraws
            // the record before the box is freed.
            let slot = unsafe { self.0.register(&rec) };
            ModelReader {
                domain: &self.0,
                rec,
                slot,
            }
        }
        /// Waits for a grace period.
        pub fn synchronize(&self) {
            self.0.synchronize()
        }
    }

    impl ModelReader<'_> {
        /// Enters a memb read section.
        pub fn lock(&self) {
            assert!(self.domain.read_lock(&self.rec, false));
        }
        /// Leaves a memb read section.
        pub fn unlock(&self) {
            assert!(self.domain.read_unlock(&self.rec, false));
        }
        /// Goes online as a QSBR reader.
        pub fn online(&self) {
            self.domain.online(&self.rec)
        }
        /// Goes offline as a QSBR reader.
        pub fn offline(&self) {
            self.domain.offline(&self.rec)
        }
        /// Reports a QSBR quiescent state.
        pub fn quiescent_state(&self) {
            self.domain.quiescent_state(&self.rec)
        }
        /// Withdraws the record, then frees it (as dropping the reader does).
        pub fn unregister(self) {}
    }

    impl Drop for ModelReader<'_> {
        fn drop(&mut self) {
            // Runs before the fields drop: the record is withdrawn before it is freed.
            self.domain.unregister(self.slot);
        }
    }
}
