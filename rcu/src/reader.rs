//! The process-wide domain and its memb readers.
//!
//! Each thread's [`Record`] lives in a thread-local, so `read()` addresses its counter
//! directly (one thread-pointer-relative load and store, as liburcu's TLS counter), and
//! is published to updaters through a registry [`Slot`] on the thread's first read.
//!
//! # Thread exit
//!
//! A thread-local destructor withdraws the record (under the domain's scan lock, so no
//! updater reads it afterwards) and frees the slot for reuse. If the thread is still a
//! reader at that point (a guard or `QsbrThread` kept in another thread-local, or
//! leaked), its state moves to a leaked heap copy, the slot points there, and the
//! thread-local record is marked unregistered: its saturated count sends the thread's
//! later locks and unlocks to the cold paths below, which follow `FORWARD` to the copy.
//! A leaked section thus stays open forever (as it must: a leaked guard can lend
//! `'static` references to other threads), and one that a later destructor closes is
//! closed on the record the updaters see. A thread that reads after its destructor ran
//! gets a leaked record of its own the same way.

use std::cell::Cell;
use std::marker::PhantomData;
use std::ptr;

use crate::domain::{Domain, Record, Slot};

/// The one domain every reader, updater and `call_rcu` callback of the process shares.
pub(crate) static DOMAIN: Domain = Domain::new();

thread_local! {
    /// This thread's record; saturated (see [`Record::unregistered`]) until the first
    /// read registers it. Const-initialised and without destructor, so accessing it
    /// compiles to a plain thread-pointer-relative address.
    static READER: Record = const { Record::unregistered() };
    /// This thread's registry slot while `READER` is registered, else null.
    static SLOT: Cell<*const Slot> = const { Cell::new(ptr::null()) };
    /// Where this thread's reader state lives after thread-exit release (module docs).
    static FORWARD: Cell<Option<&'static Record>> = const { Cell::new(None) };
    /// Withdraws the record when the thread exits; armed at registration.
    static RELEASE_AT_EXIT: ReleaseAtExit = const { ReleaseAtExit };
}

/// A pointer to this thread's `READER`.
fn reader_ptr() -> *const Record {
    READER.with(ptr::from_ref)
}

/// Dereferences a record pointer of the calling thread.
///
/// # Safety
///
/// `rec` must be this thread's `READER` (valid until the thread's thread-locals are
/// freed, after every use the thread can make of it) or a leaked orphan (`'static`).
unsafe fn deref<'a>(rec: *const Record) -> &'a Record {
    // SAFETY: per the contract.
    unsafe { &*rec }
}

struct ReleaseAtExit;

impl Drop for ReleaseAtExit {
    fn drop(&mut self) {
        let slot = SLOT.replace(ptr::null());
        // SAFETY: `SLOT` holds slots of the static domain, which are never freed.
        let Some(slot) = (unsafe { slot.as_ref() }) else {
            return;
        };
        // SAFETY: our own READER, used within this thread's lifetime.
        let rec = unsafe { deref(reader_ptr()) };
        if Domain::in_read_section(rec) || Domain::is_online(rec) {
            let orphan: &'static Record = Box::leak(Box::new(rec.copy()));
            // SAFETY: the orphan is leaked, so valid for as long as the slot points to it.
            unsafe { DOMAIN.repoint(slot, orphan) };
            FORWARD.set(Some(orphan));
        } else {
            DOMAIN.unregister(slot);
        }
        rec.mark_unregistered();
    }
}

/// The record this thread's sections use now, registering the thread if needed.
fn registered_record() -> *const Record {
    if let Some(orphan) = FORWARD.get() {
        return orphan;
    }
    let rec = reader_ptr();
    if !SLOT.get().is_null() {
        return rec;
    }
    if RELEASE_AT_EXIT.try_with(|_| ()).is_err() {
        // Thread teardown, past our destructor: the thread-local record may not be
        // registered any more (it would dangle), so this thread gets a leaked one.
        let orphan: &'static Record = Box::leak(Box::new(Record::new()));
        // SAFETY: leaked, so valid for as long as the slot points to it.
        unsafe { DOMAIN.register(orphan) };
        FORWARD.set(Some(orphan));
        return orphan;
    }
    // SAFETY: our own READER.
    let reader = unsafe { deref(rec) };
    reader.reset();
    // SAFETY: READER stays valid until this thread's thread-locals are freed, and
    // RELEASE_AT_EXIT (armed above, so its destructor will run) withdraws it before.
    let slot = unsafe { DOMAIN.register(reader) };
    SLOT.set(slot);
    rec
}

/// This thread's current record (registering the thread if needed), for QSBR.
pub(crate) fn current_record<'a>() -> &'a Record {
    // SAFETY: `registered_record` returns our READER or a leaked orphan.
    unsafe { deref(registered_record()) }
}

/// The cold path of [`read`] and [`read_mb`]: the thread's first section, a section
/// after thread-exit release, or a nesting overflow.
#[cold]
#[inline(never)]
fn read_lock_slow(always_fence: bool) -> *const Record {
    let rec = registered_record();
    // SAFETY: our READER or a leaked orphan.
    let locked = DOMAIN.read_lock(unsafe { deref(rec) }, always_fence);
    assert!(locked, "RCU read-side nesting overflow");
    rec
}

/// The cold path of a guard's drop: the thread's state moved to `FORWARD`.
#[cold]
#[inline(never)]
fn read_unlock_slow(always_fence: bool) {
    let orphan = FORWARD
        .get()
        .expect("read_unlock on a record that was never registered");
    let unlocked = DOMAIN.read_unlock(orphan, always_fence);
    debug_assert!(unlocked);
}

#[inline(always)]
fn read_lock(always_fence: bool) -> *const Record {
    READER.with(|rec| {
        if DOMAIN.read_lock(rec, always_fence) {
            ptr::from_ref(rec)
        } else {
            read_lock_slow(always_fence)
        }
    })
}

#[inline(always)]
fn read_unlock(rec: *const Record, always_fence: bool) {
    // SAFETY: `rec` came from `read_lock` on this thread (guards are !Send).
    if !DOMAIN.read_unlock(unsafe { deref(rec) }, always_fence) {
        read_unlock_slow(always_fence);
    }
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
    /// The record locked: this thread's READER, or its orphan (module docs).
    rec: *const Record,
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
    Guard {
        rec: read_lock(false),
        _not_send: PhantomData,
    }
}

impl Drop for Guard {
    #[inline]
    fn drop(&mut self) {
        read_unlock(self.rec, false);
    }
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").finish_non_exhaustive()
    }
}

/// A read-side critical section with full fences around it: see [`read_mb`].
#[must_use = "the read section ends when the guard is dropped"]
pub struct MbGuard {
    rec: *const Record,
    _not_send: PhantomData<*const ()>,
}

/// Enters a read-side critical section with full fences around it: liburcu's "mb"
/// flavour and QEMU's default read side. Interoperates with [`read`] (they nest). It
/// exists as the benchmark anchor for what the memb read side saves.
#[inline]
pub fn read_mb() -> MbGuard {
    MbGuard {
        rec: read_lock(true),
        _not_send: PhantomData,
    }
}

impl Drop for MbGuard {
    #[inline]
    fn drop(&mut self) {
        read_unlock(self.rec, true);
    }
}

impl std::fmt::Debug for MbGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MbGuard").finish_non_exhaustive()
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
/// In debug builds also inside a `call_rcu` callback ([`assert_may_block`](crate::assert_may_block)):
/// it would hold up every later reclaim for a whole grace period.
pub fn synchronize() {
    assert_not_reader("synchronize");
    crate::assert_may_block("rcu::synchronize");
    DOMAIN.synchronize();
}

/// Whether the calling thread is inside a memb read section (a live [`Guard`] or
/// [`MbGuard`]). Does not register the thread.
pub(crate) fn in_read_section() -> bool {
    // SAFETY: our READER or a leaked orphan.
    let rec = unsafe { deref(FORWARD.get().map_or_else(reader_ptr, ptr::from_ref)) };
    Domain::in_read_section(rec)
}

/// Panics if the calling thread is a reader (`what` would deadlock on itself).
pub(crate) fn assert_not_reader(what: &str) {
    // SAFETY: our READER or a leaked orphan.
    let rec = unsafe { deref(FORWARD.get().map_or_else(reader_ptr, ptr::from_ref)) };
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

/// Whether the process's grace periods use `membarrier(2)` (and readers only compiler
/// barriers), as opposed to full fences on both sides.
pub fn uses_membarrier() -> bool {
    DOMAIN.uses_membarrier()
}
