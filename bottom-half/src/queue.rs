//! The queue of pending bottom halves: Dmitry Vyukov's intrusive multi-producer,
//! single-consumer queue.
//!
//! `push` is wait-free: one swap and one store, whatever the other threads do. The
//! consumer never blocks: when it meets a producer between its swap and its store, the
//! queue looks shorter for a moment and `pop` returns `None`; that producer notifies the
//! owner after its store, so the rest is popped by a later poll. FIFO: nodes pop in the
//! order their swaps happened.

use crate::sync::{AtomicPtr, Ordering};

/// The link every queued node starts with (`#[repr(C)]` first field).
#[repr(C)]
pub(crate) struct Link {
    next: AtomicPtr<Link>,
}

impl Link {
    pub(crate) fn new() -> Link {
        Link {
            next: AtomicPtr::new(std::ptr::null_mut()),
        }
    }
}

/// The queue. Must not move once used (the stub is linked by address), so it lives in
/// an `Arc`.
pub(crate) struct Mpsc {
    /// Producers' end: the most recently pushed node.
    head: AtomicPtr<Link>,
    /// Consumer's end: the next node to pop (or the stub). Only the consumer touches it.
    tail: AtomicPtr<Link>,
    /// Placeholder that keeps the queue non-empty.
    stub: Link,
}

impl Mpsc {
    /// An empty queue; [`Mpsc::init`] must run once it is at its final address.
    pub(crate) fn new() -> Mpsc {
        Mpsc {
            head: AtomicPtr::new(std::ptr::null_mut()),
            tail: AtomicPtr::new(std::ptr::null_mut()),
            stub: Link::new(),
        }
    }

    /// Points both ends at the stub (at the queue's final address).
    pub(crate) fn init(&self) {
        let stub = self.stub_ptr();
        self.head.store(stub, Ordering::Relaxed);
        self.tail.store(stub, Ordering::Relaxed);
    }

    fn stub_ptr(&self) -> *mut Link {
        std::ptr::from_ref(&self.stub).cast_mut()
    }

    /// Appends `node`. Wait-free.
    ///
    /// # Safety
    ///
    /// `node` must be valid and not in the queue, and stay valid until popped.
    pub(crate) unsafe fn push(&self, node: *mut Link) {
        // SAFETY: valid per the contract; not in the queue, so nobody else writes it.
        unsafe { (*node).next.store(std::ptr::null_mut(), Ordering::Relaxed) };
        // AcqRel: Release publishes the node (and whatever the caller wrote before) to
        // the consumer, which reaches it through `prev.next`; Acquire orders our store
        // to `prev.next` after `prev`'s own initialisation.
        let prev = self.head.swap(node, Ordering::AcqRel);
        // SAFETY: `prev` was the head: either the stub or a pushed node, which the
        // consumer cannot pop (nor free) before this store links its successor.
        unsafe { (*prev).next.store(node, Ordering::Release) };
    }

    /// Removes the oldest node, or returns `None` if the queue is empty or a producer is
    /// between its two steps.
    ///
    /// # Safety
    ///
    /// Only one thread may pop at a time (the single consumer).
    pub(crate) unsafe fn pop(&self) -> Option<*mut Link> {
        let stub = self.stub_ptr();
        let mut tail = self.tail.load(Ordering::Relaxed);
        // SAFETY: `tail` is the stub or a pushed, not yet returned node, valid per
        // `push`'s contract (the same holds for each deref below).
        let mut next = unsafe { (*tail).next.load(Ordering::Acquire) };
        if tail == stub {
            if next.is_null() {
                return None;
            }
            self.tail.store(next, Ordering::Relaxed);
            tail = next;
            // SAFETY: as above.
            next = unsafe { (*next).next.load(Ordering::Acquire) };
        }
        if !next.is_null() {
            self.tail.store(next, Ordering::Relaxed);
            return Some(tail);
        }
        if tail != self.head.load(Ordering::Acquire) {
            // A producer swapped the head but has not linked it yet.
            return None;
        }
        // `tail` is the last node: put the stub behind it so it can be detached.
        // SAFETY: the stub is not in the queue (tail != stub here) and lives in `self`.
        unsafe { self.push(stub) };
        // SAFETY: as above.
        next = unsafe { (*tail).next.load(Ordering::Acquire) };
        if !next.is_null() {
            self.tail.store(next, Ordering::Relaxed);
            return Some(tail);
        }
        None
    }
}
