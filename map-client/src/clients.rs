//! Map clients: DMA requests waiting for bounce-buffer budget. Each is a bottom half;
//! a notification schedules it in its own context and never runs it here.

use bottom_half::Bh;

use crate::sync::{AtomicU64, AtomicUsize, Mutex, MutexGuard, Ordering, fence};

/// The waiting BHs, with a count that lets a release skip the lock when nobody waits.
#[derive(Default)]
pub(crate) struct MapClients {
    list: Mutex<Vec<(u64, Bh)>>,
    /// `list.len()`, readable without the lock (fenced: see `register` and `notify`).
    waiting: AtomicUsize,
    next_id: AtomicU64,
}

impl MapClients {
    fn lock(&self) -> MutexGuard<'_, Vec<(u64, Bh)>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `bh`; then, if `budget_available()` (read after the list write), notifies at
    /// once: the release that freed the budget may have looked at the list before our
    /// write. Returns the client's id.
    pub(crate) fn register(&self, bh: Bh, budget_available: impl FnOnce() -> bool) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut list = self.lock();
        list.push((id, bh));
        self.waiting.store(list.len(), Ordering::Relaxed);
        // "Write the list, then read the budget" (QEMU's smp_mb in
        // address_space_register_map_client). Pairs with the fence in `notify`, after
        // the release's budget update: store-buffering, so at least one side sees the
        // other and the wake-up cannot be lost (tests/loom_map_client.rs).
        fence(Ordering::SeqCst);
        let woken = if budget_available() {
            Self::take_all(&mut list, &self.waiting)
        } else {
            Vec::new()
        };
        drop(list);
        Self::wake(woken);
        id
    }

    /// Removes the client `id` if it has not been notified yet. Safe against a
    /// concurrent notify: whichever takes the lock first wins; a BH that a notify
    /// already scheduled must be deleted by the caller (cancel does), so it never runs.
    pub(crate) fn unregister(&self, id: u64) -> bool {
        let mut list = self.lock();
        let Some(pos) = list.iter().position(|(i, _)| *i == id) else {
            return false;
        };
        list.swap_remove(pos);
        self.waiting.store(list.len(), Ordering::Relaxed);
        true
    }

    /// Schedules every waiting BH (each in its own context) and empties the list. Call
    /// after releasing budget.
    pub(crate) fn notify(&self) {
        // "Write the budget, then read the list": pairs with the fence in `register`.
        fence(Ordering::SeqCst);
        if self.waiting.load(Ordering::Relaxed) == 0 {
            return;
        }
        let woken = Self::take_all(&mut self.lock(), &self.waiting);
        Self::wake(woken);
    }

    /// Empties the list (under its lock); the BHs are scheduled by `wake`, after the lock
    /// is released.
    fn take_all(list: &mut Vec<(u64, Bh)>, waiting: &AtomicUsize) -> Vec<(u64, Bh)> {
        waiting.store(0, Ordering::Relaxed);
        std::mem::take(list)
    }

    /// Schedules the taken BHs. Outside the lock: scheduling runs the owner's `Notify`,
    /// and into a closed list it may drop other BHs' callbacks, whose destructors (a
    /// `Waiter`'s, say) take the list lock again.
    fn wake(woken: Vec<(u64, Bh)>) {
        for (_, bh) in woken {
            bh.schedule();
        }
    }

    /// How many clients wait.
    pub(crate) fn len(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}
