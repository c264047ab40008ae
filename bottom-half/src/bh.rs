//! The bottom half itself: flags, callback, and the handle users hold.

use std::fmt;

use crate::queue::Link;
use crate::shared::Shared;
use crate::sync::{Arc, AtomicU32, Ordering, UnsafeCell};

/// In the queue or in the owner's ready list; the queue then holds one reference.
pub(crate) const PENDING: u32 = 1 << 0;
/// Will run when dispatched (cleared by `cancel` and by dispatch).
pub(crate) const SCHEDULED: u32 = 1 << 1;
/// Deleted: never runs again; its callback is dropped at the next dispatch.
pub(crate) const DELETED: u32 = 1 << 2;
/// Scheduled with `schedule_idle`: not progress, and the owner may sleep up to 10 ms.
pub(crate) const IDLE: u32 = 1 << 4;
/// Its callback is executing (set and cleared by the owner thread only).
pub(crate) const RUNNING: u32 = 1 << 5;

/// A BH's callback.
pub(crate) enum Callback {
    /// A BH created with `new_bh`: runs each time it is scheduled.
    Repeat(Box<dyn FnMut() + Send>),
    /// A one-shot: runs once, consumed by the call (a closure that captures nothing
    /// costs no allocation).
    Once(Box<dyn FnOnce() + Send>),
}

/// The shared state of one bottom half. `#[repr(C)]` with the link first, so a queued
/// `*mut Link` is also a pointer to its `BhInner`.
#[repr(C)]
pub(crate) struct BhInner {
    pub(crate) link: Link,
    pub(crate) flags: AtomicU32,
    /// The callback: `None` while it runs (taken out for the call) and after deletion.
    /// Touched only by the owning list's thread (dispatch) and by `Drop`.
    pub(crate) callback: UnsafeCell<Option<Callback>>,
    /// The list the BH belongs to, for scheduling through a handle. `None` for a
    /// one-shot: it has no handle, and is queued once, by its creator, which has the
    /// list at hand.
    pub(crate) owner: Option<Arc<Shared>>,
}

// SAFETY: all fields but `callback` are Sync. `callback` holds a `Send` closure and is
// accessed only by the single thread that owns the BH's list (the queue's single
// consumer) and by `Drop` (exclusive); see `BhList`.
unsafe impl Sync for BhInner {}

/// A bottom half: a callback owned by one [`BhList`](crate::BhList) (one event loop) for
/// its whole life, that any thread can schedule.
///
/// The handle is a reference: clones refer to the same BH, and dropping handles does
/// not delete it (a pending BH still runs once). [`Bh::delete`] does: from any thread,
/// at any time, even while the BH is scheduled or running, after which it never runs
/// again and its callback is dropped on the owner's thread. No operation on a handle
/// can reach freed memory.
#[derive(Clone)]
pub struct Bh {
    pub(crate) inner: Arc<BhInner>,
}

impl Bh {
    /// Schedules the BH to run in its owner's next poll. Wait-free; coalesces with a
    /// schedule that has not run yet. Scheduling a deleted BH does nothing.
    #[inline]
    pub fn schedule(&self) {
        enqueue(&self.inner, SCHEDULED);
    }

    /// Schedules the BH as *idle*: it runs in a later poll, does not count as progress,
    /// and lets the owner sleep up to 10 ms before running it (QEMU's
    /// `qemu_bh_schedule_idle`).
    pub fn schedule_idle(&self) {
        enqueue(&self.inner, SCHEDULED | IDLE);
    }

    /// Unschedules the BH if it has not run yet. Wait-free.
    pub fn cancel(&self) {
        // Release: a dispatch that sees the cleared bit does not run the callback.
        self.inner
            .flags
            .fetch_and(!(SCHEDULED | IDLE), Ordering::AcqRel);
    }

    /// Deletes the BH: it never runs again (a call already executing finishes), and its
    /// callback is dropped on the owner's thread at its next poll.
    pub fn delete(&self) {
        enqueue(&self.inner, DELETED);
    }

    /// Whether the BH is scheduled and has not run yet.
    pub fn is_scheduled(&self) -> bool {
        let f = self.inner.flags.load(Ordering::Acquire);
        f & (SCHEDULED | DELETED) == SCHEDULED
    }

    /// Whether the BH was deleted.
    pub fn is_deleted(&self) -> bool {
        self.inner.flags.load(Ordering::Acquire) & DELETED != 0
    }
}

impl fmt::Debug for Bh {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bh")
            .field("flags", &self.inner.flags.load(Ordering::Relaxed))
            .finish()
    }
}

/// Sets `new_flags | PENDING`; queues the BH if it was not pending, and wakes the owner
/// if the BH just became scheduled (or deleted).
///
/// Only for BHs with handles (a one-shot is queued once, at creation, and never
/// again: see `BhList::poll`).
pub(crate) fn enqueue(inner: &Arc<BhInner>, new_flags: u32) {
    let owner = inner
        .owner
        .as_ref()
        .expect("only one-shots have no owner, and they are never queued again");
    // AcqRel: Release makes the caller's writes before the schedule visible to the
    // callback (the owner reads the flags with AcqRel in dispatch).
    let old = inner.flags.fetch_or(PENDING | new_flags, Ordering::AcqRel);
    if old & DELETED != 0 {
        return;
    }
    if old & PENDING == 0 {
        // The queue's reference; given back when the owner pops the node.
        let node = Arc::into_raw(inner.clone()).cast_mut().cast::<Link>();
        // SAFETY: the node is a live `BhInner` (its first field is the link), not in the
        // queue (PENDING was clear, and only the setter of PENDING pushes), and the
        // reference we just leaked keeps it alive until popped.
        unsafe { owner.queue.push(node) };
    } else if old & new_flags == new_flags {
        // Already pending with these flags: whoever set them woke the owner.
        return;
    }
    owner.wake();
}
