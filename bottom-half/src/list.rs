//! The owner side: the list of BHs of one event loop, and its dispatch.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::marker::PhantomData;
use std::time::Duration;

use crate::Notify;
use crate::bh::{Bh, BhInner, Callback, DELETED, IDLE, PENDING, RUNNING, SCHEDULED, enqueue};
use crate::queue::Link;
use crate::shared::Shared;
use crate::sync::{Arc, AtomicU32, Ordering, UnsafeCell};

/// How long an owner with only idle BHs pending may sleep (QEMU: 10 ms).
pub const IDLE_TIMEOUT: Duration = Duration::from_millis(10);

/// The bottom halves of one event loop, and their dispatch. One per `AioContext`.
///
/// The list is `Send` but not `Sync`: one thread at a time owns it, runs [`BhList::poll`]
/// and so runs every callback of its BHs. Other threads create, schedule and delete BHs
/// through [`BhScheduler`] and [`Bh`] handles.
///
/// # Slices and order
///
/// A poll runs the BHs that were scheduled before it began (the *slice*), in the order
/// they became pending (FIFO). A BH scheduled while the poll runs, including one that
/// reschedules itself, runs in the next poll. A nested poll (a poll called from inside a
/// callback) runs everything scheduled so far: the rest of the outer slice first, then
/// newer BHs. A BH is never re-entered: if it is scheduled again while its callback
/// runs and a nested poll reaches it, it is deferred to a poll after its callback returns.
///
/// ```
/// use bottom_half::{BhList, Notify};
/// use std::sync::atomic::{AtomicUsize, Ordering};
/// use std::sync::Arc;
///
/// struct NoWakeup;
/// impl Notify for NoWakeup {
///     fn notify(&self) {} // an event loop would write its eventfd here
/// }
///
/// let list = BhList::new(NoWakeup);
/// let runs = Arc::new(AtomicUsize::new(0));
/// let counter = runs.clone();
/// let bh = list.scheduler().new_bh(move || {
///     counter.fetch_add(1, Ordering::Relaxed);
/// });
/// bh.schedule();
/// bh.schedule(); // coalesces
/// assert!(list.poll()); // progress: one BH ran
/// assert!(!list.poll());
/// assert_eq!(runs.load(Ordering::Relaxed), 1);
/// bh.delete();
/// bh.schedule(); // a deleted BH never runs again
/// assert!(!list.poll());
/// ```
pub struct BhList {
    shared: Arc<Shared>,
    /// Popped from the queue, not yet dispatched: the current slice(s). Each entry owns
    /// the reference the queue held.
    ready: RefCell<VecDeque<Arc<BhInner>>>,
    _not_sync: PhantomData<std::cell::Cell<()>>,
}

/// Creates BHs for a [`BhList`] and schedules one-shot callbacks into it, from any
/// thread. Cheap to clone.
#[derive(Clone)]
pub struct BhScheduler {
    shared: Arc<Shared>,
}

impl BhList {
    /// An empty list; `notify` wakes its owner when a BH becomes pending.
    pub fn new(notify: impl Notify) -> BhList {
        BhList {
            shared: Shared::new(Box::new(notify)),
            ready: RefCell::new(VecDeque::new()),
            _not_sync: PhantomData,
        }
    }

    /// A handle for creating and scheduling BHs of this list from any thread.
    pub fn scheduler(&self) -> BhScheduler {
        BhScheduler {
            shared: self.shared.clone(),
        }
    }

    /// Runs `f` once in this list's next poll: [`BhScheduler::schedule_oneshot`]
    /// without a scheduler (so without its reference count traffic).
    pub fn schedule_oneshot(&self, f: impl FnOnce() + Send + 'static) {
        schedule_oneshot(&self.shared, Box::new(f));
    }

    /// Moves everything the queue holds now into the ready list.
    fn take_queued(&self) {
        let mut ready = self.ready.borrow_mut();
        // SAFETY: the list is the queue's single consumer (it is not Sync, and `Shared`
        // is consumed by others only after `close`, in `Drop`).
        while let Some(node) = unsafe { self.shared.queue.pop() } {
            // SAFETY: queued nodes are `BhInner`s pushed with a leaked reference, which
            // the ready list now owns.
            ready.push_back(unsafe { Arc::from_raw(node.cast::<BhInner>().cast_const()) });
        }
    }

    /// Runs one slice of BHs (see the type docs). Returns whether any non-idle BH ran:
    /// QEMU's progress. Callbacks may schedule, cancel, delete and create BHs, and may
    /// call `poll` again (a nested poll).
    pub fn poll(&self) -> bool {
        self.take_queued();
        let mut progress = false;
        loop {
            let Some(bh) = self.ready.borrow_mut().pop_front() else {
                break;
            };
            if bh.owner.is_none() {
                // A one-shot: without a handle, nothing can cancel, delete or requeue
                // it, so its flags never change after creation and it needs none of
                // the atomics below (the queue's pop already made its creator's
                // writes visible).
                progress = true;
                // SAFETY: only this list's thread touches callbacks, and a one-shot's
                // is taken exactly once, here.
                let callback = bh.callback.with_mut(|cb| unsafe { (*cb).take() });
                drop(bh);
                if let Some(Callback::Once(f)) = callback {
                    f();
                }
                continue;
            }
            // AcqRel: Acquire sees what the scheduler wrote before scheduling; clearing
            // PENDING hands the next schedule the right to queue the BH again.
            let flags = bh
                .flags
                .fetch_and(!(PENDING | SCHEDULED | IDLE), Ordering::AcqRel);
            if flags & (SCHEDULED | DELETED) == SCHEDULED {
                if flags & RUNNING != 0 {
                    // Nested poll inside this BH's own callback: run it afterwards.
                    enqueue(&bh, SCHEDULED | (flags & IDLE));
                    continue;
                }
                if flags & IDLE == 0 {
                    progress = true;
                }
                run(&bh);
            } else if flags & DELETED != 0 && flags & RUNNING == 0 {
                // SAFETY: only this list's thread touches callbacks, and the BH is not
                // running (a running one is cleaned up by its `Running` guard).
                drop(bh.callback.with_mut(|cb| unsafe { (*cb).take() }));
            }
        }
        progress
    }

    /// How long the owner may sleep before it must poll again: zero if a BH is
    /// scheduled, [`IDLE_TIMEOUT`] if only idle ones are, `None` if none. May move queued
    /// BHs into the current slice (they were scheduled before the next poll anyway).
    pub fn timeout(&self) -> Option<Duration> {
        self.take_queued();
        let mut timeout = None;
        for bh in self.ready.borrow().iter() {
            let flags = bh.flags.load(Ordering::Acquire);
            if flags & (SCHEDULED | DELETED) == SCHEDULED {
                if flags & IDLE == 0 {
                    return Some(Duration::ZERO);
                }
                timeout = Some(IDLE_TIMEOUT);
            } else if flags & DELETED != 0 {
                // A deletion to clean up is work too.
                return Some(Duration::ZERO);
            }
        }
        timeout
    }
}

/// Runs the callback of a BH with handles on the owner thread, marking it RUNNING
/// meanwhile.
fn run(bh: &Arc<BhInner>) {
    /// Puts the callback back (or drops it if the BH was deleted) when the call returns
    /// or unwinds.
    struct Running<'a> {
        bh: &'a BhInner,
        callback: Option<Callback>,
    }
    impl Drop for Running<'_> {
        fn drop(&mut self) {
            let flags = self.bh.flags.fetch_and(!RUNNING, Ordering::AcqRel);
            if flags & DELETED != 0 {
                // Dropped here, after the flag: its destructor may touch the BH again.
                let _dead = self.callback.take();
                return;
            }
            let callback = self.callback.take();
            // SAFETY: owner thread only (see `BhInner::callback`).
            self.bh.callback.with_mut(|cb| unsafe { *cb = callback });
        }
    }
    // SAFETY: owner thread only, and not running (checked by the caller), so nobody
    // holds the callback.
    let callback = bh.callback.with_mut(|cb| unsafe { (*cb).take() });
    bh.flags.fetch_or(RUNNING, Ordering::Relaxed);
    let mut running = Running { bh, callback };
    if let Some(Callback::Repeat(f)) = running.callback.as_mut() {
        f();
    }
}

impl Drop for BhList {
    fn drop(&mut self) {
        // Pending BHs will never run: drop their callbacks here, on the owner's thread
        // (which also breaks reference cycles through a BH's own handle), then release
        // every queued and ready reference.
        self.take_queued();
        for bh in self.ready.get_mut().drain(..) {
            // SAFETY: owner thread, outside any poll, so no callback is running.
            drop(bh.callback.with_mut(|cb| unsafe { (*cb).take() }));
        }
        self.shared.close();
    }
}

impl BhScheduler {
    /// Creates a BH whose callback runs on the list's thread. It starts unscheduled.
    pub fn new_bh(&self, callback: impl FnMut() + Send + 'static) -> Bh {
        Bh {
            inner: Arc::new(BhInner {
                link: Link::new(),
                flags: AtomicU32::new(0),
                callback: UnsafeCell::new(Some(Callback::Repeat(Box::new(callback)))),
                owner: Some(self.shared.clone()),
            }),
        }
    }

    /// Runs `f` once in the list's next poll, from any thread (QEMU's
    /// `aio_bh_schedule_oneshot`). The BH frees itself after the call.
    pub fn schedule_oneshot(&self, f: impl FnOnce() + Send + 'static) {
        schedule_oneshot(&self.shared, Box::new(f));
    }
}

/// Queues a one-shot BH into `shared`'s list. The node is born pending and scheduled,
/// and the queue holds its only reference: no handle, no owner reference, no flag
/// update (one allocation, or none with a closure that captures nothing, and one
/// swap, besides the wake-up).
fn schedule_oneshot(shared: &Shared, f: Box<dyn FnOnce() + Send>) {
    let node = Arc::new(BhInner {
        link: Link::new(),
        flags: AtomicU32::new(PENDING | SCHEDULED),
        callback: UnsafeCell::new(Some(Callback::Once(f))),
        owner: None,
    });
    let node = Arc::into_raw(node).cast_mut().cast::<Link>();
    // SAFETY: a live `BhInner` (its first field is the link), new, so in no queue; the
    // reference leaked into the queue keeps it alive until popped.
    unsafe { shared.queue.push(node) };
    shared.wake();
}

impl std::fmt::Debug for BhList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BhList")
            .field("ready", &self.ready.borrow().len())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for BhScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BhScheduler").finish_non_exhaustive()
    }
}
