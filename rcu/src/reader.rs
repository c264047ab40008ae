//! The process-wide domain and its memb readers: each thread's record lives in a
//! thread-local, taken on first use and given back at thread exit.

use std::cell::Cell;
use std::marker::PhantomData;

use crate::domain::{Domain, Record};

/// The one domain every reader, updater and `call_rcu` callback of the process shares.
pub(crate) static DOMAIN: Domain = Domain::new();

thread_local! {
    /// This thread's record, or null before the thread's first use of RCU. No destructor,
    /// so reading it is a plain thread-pointer-relative load.
    static RECORD: Cell<*const Record> = const { Cell::new(std::ptr::null()) };
    /// Gives the record back when the thread exits. Touched only when the record is taken.
    static RELEASE_AT_EXIT: ReleaseAtExit = const { ReleaseAtExit };
}

struct ReleaseAtExit;

impl Drop for ReleaseAtExit {
    fn drop(&mut self) {
        let rec = RECORD.with(|r| r.replace(std::ptr::null()));
        // SAFETY: records of the static domain live for the rest of the process.
        let Some(rec) = (unsafe { rec.as_ref() }) else {
            return;
        };
        if Domain::in_read_section(rec) || Domain::is_online(rec) {
            // A guard or QSBR handle was leaked. References obtained under it may still
            // be in use (a leaked guard can hand out `'static` references to other
            // threads), so the read section must stay open: the record stays in use.
            return;
        }
        DOMAIN.release_record(rec);
    }
}

/// This thread's record, taking one on first use.
#[inline(always)]
pub(crate) fn current_record() -> &'static Record {
    let rec = RECORD.with(Cell::get);
    if rec.is_null() {
        return register_current_thread();
    }
    // SAFETY: non-null means `register_current_thread` stored a record of the static
    // domain, which lives for the rest of the process.
    unsafe { &*rec }
}

#[cold]
#[inline(never)]
fn register_current_thread() -> &'static Record {
    let rec = DOMAIN.acquire_record();
    RECORD.with(|r| r.set(rec));
    // Arms the exit-time release. During thread teardown the destructor may already
    // have run; then the record simply stays taken (harmless: its ctr returns to 0).
    let _ = RELEASE_AT_EXIT.try_with(|_| ());
    rec
}

/// A memb read-side critical section: while it lives, nothing published through this
/// crate that it can reach is reclaimed.
///
/// Guards nest (the nesting count is packed into the thread's counter word) and must be
/// dropped on the thread that took them, hence `!Send`. References obtained through a
/// guard borrow it, so they cannot outlive it. Leaking a guard (`mem::forget`) keeps the
/// section open forever, and with it every later grace period.
#[must_use = "the read section ends when the guard is dropped"]
pub struct Guard {
    rec: &'static Record,
    full_fence: bool,
    _not_send: PhantomData<*const ()>,
}

/// Enters a read-side critical section (the memb flavour).
///
/// Costs a load of the global phase and a store to this thread's counter, separated
/// from the section by a compiler barrier; no fence, no syscall and no allocation
/// (except on a thread's very first call, which registers it). Where the kernel lacks
/// `membarrier(2)`, the barrier is a full fence, as in [`read_mb`].
///
/// ```
/// let cell = rcu::RcuCell::new(String::from("hello"));
/// let guard = rcu::read();
/// assert_eq!(cell.load(&guard).map(String::as_str), Some("hello"));
/// ```
#[inline]
pub fn read() -> Guard {
    let rec = current_record();
    let full_fence = rec.full_fence;
    DOMAIN.read_lock(rec, full_fence);
    Guard {
        rec,
        full_fence,
        _not_send: PhantomData,
    }
}

/// Enters a read-side critical section with full fences around it: liburcu's "mb"
/// flavour and QEMU's default read side. Interoperates with [`read`]; it exists as the
/// benchmark anchor for what the memb read side saves, and for callers that want no
/// dependence on `membarrier(2)`.
#[inline]
pub fn read_mb() -> Guard {
    let rec = current_record();
    DOMAIN.read_lock(rec, true);
    Guard {
        rec,
        full_fence: true,
        _not_send: PhantomData,
    }
}

impl Drop for Guard {
    #[inline]
    fn drop(&mut self) {
        DOMAIN.read_unlock(self.rec, self.full_fence);
    }
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").finish_non_exhaustive()
    }
}

/// Waits for a grace period: returns once every read section (memb guards, and QSBR
/// readers until their next quiescent state) that was running when it was called has
/// ended. Concurrent callers share grace periods.
///
/// # Panics
///
/// If the calling thread holds a [`Guard`] or is an online QSBR reader: it would wait for
/// itself forever. A QSBR thread uses [`QsbrThread::synchronize`](crate::QsbrThread::synchronize).
pub fn synchronize() {
    assert_not_reader("synchronize");
    DOMAIN.synchronize();
}

/// Panics if the calling thread is a reader (`what` would deadlock on itself).
pub(crate) fn assert_not_reader(what: &str) {
    let rec = RECORD.with(Cell::get);
    // SAFETY: as in `current_record`.
    if let Some(rec) = unsafe { rec.as_ref() } {
        assert!(
            !Domain::in_read_section(rec),
            "rcu::{what}() called inside a read-side critical section: it would wait for itself"
        );
        assert!(
            !Domain::is_online(rec),
            "rcu::{what}() called on an online QSBR thread: it would wait for itself; \
             use the QsbrThread method or call it inside QsbrThread::offline"
        );
    }
}

/// Whether the process's grace periods use `membarrier(2)` (and readers only compiler
/// barriers), as opposed to full fences on both sides.
pub fn uses_membarrier() -> bool {
    DOMAIN.uses_membarrier()
}
