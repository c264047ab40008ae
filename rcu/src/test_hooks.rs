//! Pause points for this crate's own unit tests. The module and every call into it are
//! `cfg(test)`: library builds (release, downstream crates, benches, integration tests)
//! contain none of it, so the read side and the writers pay nothing.
//!
//! A test installs a per-thread hook with [`set`]; the code under test calls
//! [`reached`] at the named points, where the hook may park the thread (on a channel)
//! to force an interleaving that a stress test only hits by luck.

use std::cell::RefCell;

/// Where a test can park a thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Point {
    /// `Domain::read_lock`, outermost section: the grace-period phase has been loaded
    /// but not yet stored into the reader's record (the stale-snapshot window that the
    /// two-phase wait exists for).
    ReaderSnapshot,
    /// `ListWriter::unlink`: the node is still linked, just before the writer unlinks it.
    BeforeUnlink,
}

type Hook = Box<dyn FnMut(Point)>;

thread_local! {
    static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
}

/// Installs `hook` for the calling thread, replacing any earlier one.
pub(crate) fn set(hook: impl FnMut(Point) + 'static) {
    HOOK.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
}

/// Calls the calling thread's hook, if any, with `point`.
pub(crate) fn reached(point: Point) {
    HOOK.with(|h| {
        if let Some(hook) = h.borrow_mut().as_mut() {
            hook(point);
        }
    });
}
