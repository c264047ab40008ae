//! What a BH list shares with every thread that schedules into it.

use crate::Notify;
use crate::bh::BhInner;
use crate::queue::Mpsc;
use crate::sync::{Arc, AtomicBool, Mutex, Ordering, fence};

/// The pending queue, the owner's wake-up, and the state after the owner is gone.
pub(crate) struct Shared {
    pub(crate) queue: Mpsc,
    notify: Box<dyn Notify>,
    /// Set when the `BhList` is dropped: nobody will dispatch any more.
    closed: AtomicBool,
    /// After `closed`, the consumer role passes to whoever holds this lock (the dropping
    /// list, then producers that queued late), so queued references are never leaked.
    orphan_drain: Mutex<()>,
}

impl Shared {
    pub(crate) fn new(notify: Box<dyn Notify>) -> Arc<Shared> {
        let shared = Arc::new(Shared {
            queue: Mpsc::new(),
            notify,
            closed: AtomicBool::new(false),
            orphan_drain: Mutex::new(()),
        });
        shared.queue.init();
        shared
    }

    /// Tells the owner that a BH became pending. Called after the enqueue.
    pub(crate) fn wake(&self) {
        // SeqCst fence: orders the enqueue before the `closed` load (store-buffering
        // against `close`: closed store, fence, drain), and before whatever the
        // notifier reads (an event loop's "may I sleep?" flag), as its contract says.
        fence(Ordering::SeqCst);
        // Acquire pairs with the Release in `close`: a producer that sees `closed` also
        // sees every pop the owner made before closing (its `tail`), so it never pops a
        // node the owner already took.
        if self.closed.load(Ordering::Acquire) {
            self.drain_orphans();
        } else {
            self.notify.notify();
        }
    }

    /// Called once by the dropping list: from now on nothing is dispatched, and every
    /// queued reference is released (by us now, or by the producer that queues later).
    pub(crate) fn close(&self) {
        // Release: publishes the owner's pops (see `wake`). The fence then orders the store
        // before our own drain's reads of the links (store-buffering with `wake`).
        self.closed.store(true, Ordering::Release);
        fence(Ordering::SeqCst);
        self.drain_orphans();
    }

    fn drain_orphans(&self) {
        let mut orphans = Vec::new();
        {
            let _consumer = self.orphan_drain.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: single consumer. Before `closed` only the list pops; it stops before
            // publishing `closed` (Release), and every later consumer acquired `closed` (so
            // sees the list's last pops) and holds `orphan_drain`: one at a time.
            while let Some(node) = unsafe { self.queue.pop() } {
                // SAFETY: queued nodes are `BhInner`s pushed with a leaked reference.
                orphans.push(unsafe { Arc::from_raw(node.cast::<BhInner>().cast_const()) });
            }
        }
        // Dropped outside the lock: a callback's destructor may schedule again.
        drop(orphans);
    }
}
