//! The grace-period protocol: reader records, the registry, and `synchronize`.
//!
//! This module holds no thread-locals and no globals, so loom can run it on a fresh
//! [`Domain`] per model iteration; `reader.rs` binds the process-wide domain to threads.
//!
//! # Readers
//!
//! A *memb* reader owns one word, `Record::ctr`, written only by its own thread. Its low
//! half counts nesting; the high half holds the phase bit copied from `ReadMostly::gp_ctr`
//! at the outermost lock (liburcu packs the same way; QEMU keeps a separate `depth`
//! word, which costs an extra access on every lock and unlock). A count of zero means
//! the thread is outside any read section.
//!
//! A *QSBR* reader owns `Record::qs`: zero while offline, otherwise the value of
//! `ReadMostly::qs_seq` it saw at its latest quiescent state. Its read sections cost nothing.
//!
//! # Grace periods
//!
//! `grace_period` is liburcu's urcu-memb `synchronize_rcu`, extended to QSBR readers:
//!
//! 1. heavy barrier (U1); bump `qs_seq` to a new target;
//! 2. wait until no memb reader is active with the *old* phase and every QSBR reader is
//!    offline or has reported the target;
//! 3. flip the phase of `gp_ctr`;
//! 4. wait until no memb reader is active with the old phase (now the one before the
//!    flip).
//!
//! Two phases are needed because a memb reader reads `gp_ctr` and stores it into its
//! `ctr` non-atomically: a reader preempted between the two stores a stale snapshot,
//! which a single scan could mistake for a reader that began after the grace period.
//! Across two flips such a reader is seen active with an old phase and waited for.
//!
//! A waiting updater spins `ACTIVE_ATTEMPTS` times, then sets `gp_waiting` and sleeps;
//! a reader that leaves its outermost section (or reports a quiescent state, or goes
//! offline) and finds `gp_waiting` set wakes it.

use crossbeam_utils::CachePadded;

use crate::barrier::Mode;
use crate::sync::{
    AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Condvar, Mutex, Ordering, fence,
    spin_hint, yield_now,
};

/// One level of read-side nesting in `Record::ctr`.
const NEST_COUNT: usize = 1;
/// The nesting count's bits in `Record::ctr`.
const NEST_MASK: usize = (1 << (usize::BITS / 2)) - 1;
/// The grace-period phase bit in `ReadMostly::gp_ctr` and `Record::ctr`.
const PHASE: usize = 1 << (usize::BITS / 2);
/// Set in `ReadMostly::gp_ctr` (and so in every active reader's `ctr`) when the domain
/// runs in [`Mode::Fences`]: the read side learns its barrier from the word it loads
/// anyway, with no extra memory access.
const FENCE: usize = 1 << (usize::BITS - 2);

/// How many scans an updater spins for before it sleeps until a reader wakes it.
const ACTIVE_ATTEMPTS: u32 = if cfg!(loom) { 1 } else { 100 };
/// How many of those scans spin before the rest yield the CPU between scans.
const SPIN_ATTEMPTS: u32 = 10;

/// `Domain::gp_waiting` while an updater is (about to be) asleep.
const WAITING: i32 = -1;

/// One reader's state, written only by its thread and read by updaters. A thread keeps
/// its record in a thread-local (so the read side addresses it directly, as liburcu
/// does) and publishes it to updaters through a [`Slot`].
pub(crate) struct Record {
    /// memb reader state: nesting count (low half) and phase (high half); see the
    /// module docs.
    ctr: AtomicUsize,
    /// QSBR reader state: 0 offline, else the `qs_seq` seen at the latest quiescent
    /// state.
    qs: AtomicU64,
}

impl Record {
    /// A record outside any section and offline.
    pub(crate) fn new() -> Record {
        Record {
            ctr: AtomicUsize::new(0),
            qs: AtomicU64::new(0),
        }
    }

    /// The record of a thread that has not registered (or whose registration moved, see
    /// `reader.rs`): its saturated nesting count sends `read_lock` and `read_unlock` to
    /// their cold paths, so the hot paths need no registration test.
    #[cfg(not(loom))]
    pub(crate) const fn unregistered() -> Record {
        Record {
            ctr: AtomicUsize::new(NEST_MASK),
            qs: AtomicU64::new(0),
        }
    }

    /// Makes an unregistered record a fresh one, before it is registered.
    pub(crate) fn reset(&self) {
        self.ctr.store(0, Ordering::Relaxed);
        self.qs.store(0, Ordering::Relaxed);
    }

    /// Marks the record unregistered again (after its slot stopped pointing to it).
    #[cfg(not(loom))]
    pub(crate) fn mark_unregistered(&self) {
        self.ctr.store(NEST_MASK, Ordering::Relaxed);
        self.qs.store(0, Ordering::Relaxed);
    }

    /// A heap copy of this record's state, to outlive the thread that owns this one.
    #[cfg(not(loom))]
    pub(crate) fn copy(&self) -> Record {
        Record {
            ctr: AtomicUsize::new(self.ctr.load(Ordering::Relaxed)),
            qs: AtomicU64::new(self.qs.load(Ordering::Relaxed)),
        }
    }
}

/// A registry entry: where updaters find one reader's record. Slots are never freed
/// while their domain lives; a thread that exits gives its slot back for reuse.
pub(crate) struct Slot {
    /// The registered record, or null. Changed only under `Domain::scan_lock`, so a
    /// scan that loaded a non-null pointer may use it until the lock is released.
    rec: AtomicPtr<Record>,
    /// Whether a reader owns this slot.
    in_use: AtomicBool,
    /// The next slot; set before the slot is published, then fixed.
    next: AtomicPtr<Slot>,
}

/// Grace-period bookkeeping for sharing grace periods among concurrent updaters.
struct GpSeq {
    /// Grace periods completed so far.
    completed: u64,
    /// Whether a grace period is in progress.
    running: bool,
    /// Callers blocked in `gp_done.wait` (notify only if any: a futex wake is a syscall).
    waiters: u32,
}

/// The words readers read, kept on one cache line (readers touch one shared line per
/// section pair, as with liburcu's `rcu_gp`).
struct ReadMostly {
    /// Read by every outermost memb lock: `NEST_COUNT | phase`.
    gp_ctr: AtomicUsize,
    /// QSBR grace-period sequence; never 0 (0 means offline in `Record::qs`).
    qs_seq: AtomicU64,
    /// `WAITING` while an updater sleeps for readers; read by readers as they leave.
    gp_waiting: AtomicI32,
}

/// A set of readers and the updaters that wait for them. The process has one
/// (`reader::DOMAIN`); loom models build their own.
pub(crate) struct Domain {
    /// What readers read on every section; written once or twice per grace period.
    shared: CachePadded<ReadMostly>,
    /// Head of the registry, a push-only list of slots.
    registry: AtomicPtr<Slot>,
    /// Held by each scan of the registry (one pass, never across a wait) and by every
    /// change of a slot's record pointer: a record is never read after its thread has
    /// withdrawn it.
    scan_lock: Mutex<()>,
    /// The barrier mode: 0 while unknown, else `Mode` as 1 or 2.
    mode: AtomicUsize,
    #[cfg(not(loom))]
    mode_init: std::sync::Once,
    /// Shared grace periods: who runs one, and how many have completed.
    gp: Mutex<GpSeq>,
    gp_done: Condvar,
    /// Where a sleeping updater waits for `gp_waiting` to be cleared by a reader.
    wake_lock: Mutex<()>,
    wake: Condvar,
}

macro_rules! domain_new {
    ($mode:expr) => {
        Domain {
            shared: CachePadded::new(ReadMostly {
                gp_ctr: AtomicUsize::new(NEST_COUNT),
                qs_seq: AtomicU64::new(1),
                gp_waiting: AtomicI32::new(0),
            }),
            registry: AtomicPtr::new(std::ptr::null_mut()),
            scan_lock: Mutex::new(()),
            mode: AtomicUsize::new($mode),
            #[cfg(not(loom))]
            mode_init: std::sync::Once::new(),
            gp: Mutex::new(GpSeq {
                completed: 0,
                running: false,
                waiters: 0,
            }),
            gp_done: Condvar::new(),
            wake_lock: Mutex::new(()),
            wake: Condvar::new(),
        }
    };
}

fn encode(mode: Mode) -> usize {
    match mode {
        Mode::Membarrier => 1,
        Mode::Fences => 2,
    }
}

impl Domain {
    /// A domain whose barrier mode is probed on first use.
    #[cfg(not(loom))]
    pub(crate) const fn new() -> Domain {
        domain_new!(0)
    }

    /// A domain with full fences on both sides (loom cannot model membarrier).
    #[cfg(loom)]
    pub(crate) fn new() -> Domain {
        let domain = domain_new!(2);
        domain.shared.gp_ctr.fetch_or(FENCE, Ordering::Relaxed);
        domain
    }

    /// The barrier mode, probing the kernel on first call.
    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Acquire) {
            1 => Mode::Membarrier,
            2 => Mode::Fences,
            _ => {
                #[cfg(not(loom))]
                self.mode_init.call_once(|| {
                    let mode = Mode::detect();
                    if mode == Mode::Fences {
                        // Before any record exists (records are created after `mode()`),
                        // so every reader's first snapshot carries the bit.
                        self.shared.gp_ctr.fetch_or(FENCE, Ordering::Relaxed);
                    }
                    // Release: a thread that sees the mode also sees the FENCE bit and
                    // the registration with the kernel that `detect` performed.
                    self.mode.store(encode(mode), Ordering::Release);
                });
                self.mode()
            }
        }
    }

    /// Whether this domain's updaters use membarrier (readers then use compiler barriers).
    pub(crate) fn uses_membarrier(&self) -> bool {
        self.mode() == Mode::Membarrier
    }

    fn slots(&self) -> impl Iterator<Item = &Slot> {
        // Acquire pairs with the Release CAS in `register`: a slot reached through the
        // list is fully initialised.
        let mut p = self.registry.load(Ordering::Acquire);
        std::iter::from_fn(move || {
            // SAFETY: slots are pushed fully initialised (Release/Acquire above) and are
            // freed only by `Domain::drop`, which has exclusive access; `&self` outlives
            // the returned reference.
            let slot = unsafe { p.as_ref()? };
            p = slot.next.load(Ordering::Acquire);
            Some(slot)
        })
    }

    /// Publishes `rec` to updaters, in a free slot or a new one.
    ///
    /// # Safety
    ///
    /// `rec` must stay valid until [`Domain::unregister`] or [`Domain::repoint`] on the
    /// returned slot has returned, and must be registered in no other slot.
    pub(crate) unsafe fn register(&self, rec: &Record) -> &Slot {
        // Fixes the barrier mode (and gp_ctr's FENCE bit) before the first reader exists.
        self.mode();
        let rec = std::ptr::from_ref(rec).cast_mut();
        for slot in self.slots() {
            // Acquire pairs with the Release store in `unregister`.
            if !slot.in_use.load(Ordering::Relaxed)
                && slot
                    .in_use
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                let _scan = self.scan_lock.lock().unwrap_or_else(|e| e.into_inner());
                slot.rec.store(rec, Ordering::Release);
                return slot;
            }
        }
        let slot = Box::into_raw(Box::new(Slot {
            rec: AtomicPtr::new(rec),
            in_use: AtomicBool::new(true),
            next: AtomicPtr::new(std::ptr::null_mut()),
        }));
        // SAFETY: `slot` came from Box::into_raw above; once published it lives until
        // `Domain::drop`, which needs `&mut self`, so it outlives `&self`.
        let slot_ref: &Slot = unsafe { &*slot };
        let mut head = self.registry.load(Ordering::Relaxed);
        loop {
            slot_ref.next.store(head, Ordering::Relaxed);
            // Release publishes the initialised slot (and the record's reset state) to
            // `slots()`.
            match self.registry.compare_exchange_weak(
                head,
                slot,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => head = now,
            }
        }
        slot_ref
    }

    /// Withdraws the slot's record (it may be freed once this returns) and frees the
    /// slot for reuse. The record must be outside any read section and offline.
    pub(crate) fn unregister(&self, slot: &Slot) {
        {
            let _scan = self.scan_lock.lock().unwrap_or_else(|e| e.into_inner());
            slot.rec.store(std::ptr::null_mut(), Ordering::Relaxed);
        }
        // Release pairs with the Acquire CAS of the next owner.
        slot.in_use.store(false, Ordering::Release);
    }

    /// Makes the slot point to `rec` instead of its current record, which may be freed
    /// once this returns.
    ///
    /// # Safety
    ///
    /// As for [`Domain::register`]: `rec` must stay valid while the slot points to it.
    pub(crate) unsafe fn repoint(&self, slot: &Slot, rec: &Record) {
        let _scan = self.scan_lock.lock().unwrap_or_else(|e| e.into_inner());
        slot.rec
            .store(std::ptr::from_ref(rec).cast_mut(), Ordering::Release);
    }

    /// Enters a memb read section (nestable). Returns false, having done nothing, when
    /// the nesting count is saturated: `rec` is [`Record::unregistered`] (the caller
    /// registers and retries) or the thread nested 2^32 - 1 sections.
    #[inline(always)]
    pub(crate) fn read_lock(&self, rec: &Record, always_fence: bool) -> bool {
        let tmp = rec.ctr.load(Ordering::Relaxed);
        if tmp & NEST_MASK != 0 {
            return Self::read_lock_nested(rec, tmp);
        }
        // Outermost: snapshot the phase with a count of one. The snapshot's age is
        // what the two-phase wait tolerates (module docs). Acquire (a plain load on
        // x86) pairs with the fence before the updater's phase flip: a section that
        // sees the new phase sees everything unpublished before the grace period,
        // which is why the updater needs no barrier after its last scan.
        let gp = self.shared.gp_ctr.load(Ordering::Acquire);
        #[cfg(test)]
        crate::test_hooks::reached(crate::test_hooks::Point::ReaderSnapshot);
        // Release (a plain store on x86): the previous section's accesses happen
        // before this store too, so a scan that reads this (later) value still
        // synchronizes with the previous unlock (a release sequence no longer
        // includes later plain stores of the same thread, since C++20).
        rec.ctr.store(gp, Ordering::Release);
        // Orders the ctr store before the section's loads. Pairs with the updater's
        // heavy barrier U1: either the updater's scan sees this reader active, or
        // this reader's loads see what the updater stored before U1.
        Mode::light(always_fence, gp & FENCE != 0);
        true
    }

    /// [`Domain::read_lock`] inside a section, or on a saturated record. Out of line
    /// and cold, so the outermost lock (the common case) is the straight-line path.
    #[cold]
    #[inline(never)]
    fn read_lock_nested(rec: &Record, tmp: usize) -> bool {
        if tmp & NEST_MASK == NEST_MASK {
            return false;
        }
        rec.ctr.store(tmp + NEST_COUNT, Ordering::Relaxed);
        true
    }

    /// Leaves a memb read section entered with [`Domain::read_lock`]. Returns false,
    /// having done nothing, if `rec` is saturated: its registration moved to another
    /// record while the section was open (`reader.rs`, thread exit), which the caller
    /// unlocks instead.
    #[inline(always)]
    pub(crate) fn read_unlock(&self, rec: &Record, always_fence: bool) -> bool {
        let tmp = rec.ctr.load(Ordering::Relaxed);
        debug_assert_ne!(tmp & NEST_MASK, 0, "read_unlock outside a read section");
        if tmp & NEST_MASK != NEST_COUNT {
            return Self::read_unlock_nested(rec, tmp);
        }
        let fence_mode = tmp & FENCE != 0;
        // Release (with the barrier, for fence mode) orders the section's accesses
        // before the store; pairs with the updater's Acquire scan.
        Mode::light(always_fence, fence_mode);
        rec.ctr.store(tmp - NEST_COUNT, Ordering::Release);
        // Orders the ctr store before the gp_waiting load (store-buffering against
        // the updater's `gp_waiting` store, heavy barrier, ctr load).
        Mode::light(always_fence, fence_mode);
        if self.shared.gp_waiting.load(Ordering::Relaxed) == WAITING {
            self.wake_updater();
        }
        true
    }

    /// [`Domain::read_unlock`] of an inner section, or on a saturated record (cold, as
    /// [`Domain::read_lock_nested`]).
    #[cold]
    #[inline(never)]
    fn read_unlock_nested(rec: &Record, tmp: usize) -> bool {
        if tmp & NEST_MASK == NEST_MASK {
            return false;
        }
        rec.ctr.store(tmp - NEST_COUNT, Ordering::Relaxed);
        true
    }

    /// Whether the record's thread is inside a memb read section (false for a
    /// saturated, unregistered record).
    pub(crate) fn in_read_section(rec: &Record) -> bool {
        let nest = rec.ctr.load(Ordering::Relaxed) & NEST_MASK;
        nest != 0 && nest != NEST_MASK
    }

    /// Whether the record's thread is an online QSBR reader.
    pub(crate) fn is_online(rec: &Record) -> bool {
        rec.qs.load(Ordering::Relaxed) != 0
    }

    /// Makes the record's thread an online QSBR reader: from now on grace periods wait
    /// for its quiescent states.
    pub(crate) fn online(&self, rec: &Record) {
        // Release: as in `read_lock`, a scan that reads this value synchronizes with the
        // thread's earlier reports.
        rec.qs.store(
            self.shared.qs_seq.load(Ordering::Relaxed),
            Ordering::Release,
        );
        // SeqCst fence: the store must be visible before this thread's following read
        // sections load anything (store-load, against the updater's heavy barrier U1).
        fence(Ordering::SeqCst);
    }

    /// Takes the record's thread offline: grace periods stop waiting for it.
    pub(crate) fn offline(&self, rec: &Record) {
        // Release: the thread's earlier read sections happen before an updater that
        // sees 0 with its Acquire scan.
        rec.qs.store(0, Ordering::Release);
        fence(Ordering::SeqCst);
        if self.shared.gp_waiting.load(Ordering::Relaxed) == WAITING {
            self.wake_updater();
        }
    }

    /// Reports a quiescent state for an online QSBR reader: every reference it obtained
    /// before this call is dead. Costs one load and compare when no grace period is
    /// waiting for this thread.
    #[inline]
    pub(crate) fn quiescent_state(&self, rec: &Record) {
        // Acquire pairs with the updater's SeqCst bump: once this thread reports the new
        // value, its next read sections see everything the updater did before it.
        let seq = self.shared.qs_seq.load(Ordering::Acquire);
        if rec.qs.load(Ordering::Relaxed) == seq {
            return;
        }
        // Release: the read sections before this point happen before the updater's
        // Acquire scan that sees `seq`.
        rec.qs.store(seq, Ordering::Release);
        Mode::light(
            false,
            self.shared.gp_ctr.load(Ordering::Relaxed) & FENCE != 0,
        );
        if self.shared.gp_waiting.load(Ordering::Relaxed) == WAITING {
            self.wake_updater();
        }
    }

    #[cold]
    fn wake_updater(&self) {
        let _guard = self.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
        if self.shared.gp_waiting.load(Ordering::Relaxed) == WAITING {
            self.shared.gp_waiting.store(0, Ordering::Relaxed);
            self.wake.notify_all();
        }
    }

    /// Waits until every read section that was running when the call began has ended
    /// and every online QSBR reader has passed a quiescent state. Concurrent callers
    /// share grace periods. The calling thread must not be a reader itself (it would
    /// wait for itself); `reader.rs` checks that for the process domain.
    pub(crate) fn synchronize(&self) {
        let lock = || self.gp.lock().unwrap_or_else(|e| e.into_inner());
        let mut st = lock();
        // A grace period already running may have started before our caller's updates;
        // only one that starts after this point will do.
        let need = st.completed + 1 + u64::from(st.running);
        while st.completed < need {
            if st.running {
                st.waiters += 1;
                st = self.gp_done.wait(st).unwrap_or_else(|e| e.into_inner());
                st.waiters -= 1;
                continue;
            }
            st.running = true;
            drop(st);
            // Resets `running` even if the grace period panics, so that no caller
            // waits forever for a grace period nobody runs. Completion is recorded
            // explicitly: `thread::panicking()` would also be true for a synchronize()
            // called from a destructor during an unrelated unwind, which would then
            // never count its grace periods.
            struct Finish<'a> {
                domain: &'a Domain,
                done: bool,
            }
            impl Drop for Finish<'_> {
                fn drop(&mut self) {
                    let mut st = self.domain.gp.lock().unwrap_or_else(|e| e.into_inner());
                    st.running = false;
                    if self.done {
                        st.completed += 1;
                    }
                    if st.waiters > 0 {
                        self.domain.gp_done.notify_all();
                    }
                }
            }
            let mut finish = Finish {
                domain: self,
                done: false,
            };
            self.grace_period();
            finish.done = true;
            drop(finish);
            st = lock();
        }
    }

    /// One grace period (module docs).
    fn grace_period(&self) {
        let mode = self.mode();
        // U1: pairs with every reader's lock-side light barrier.
        mode.heavy();
        // SeqCst RMW: a QSBR reader that loads the new value (Acquire) sees everything
        // this thread did before.
        let target = self.shared.qs_seq.fetch_add(1, Ordering::SeqCst) + 1;
        self.wait_for_readers(mode, Some(target));
        // Finish reading the old phase's counters before the flip is visible.
        fence(Ordering::SeqCst);
        let gp = self.shared.gp_ctr.load(Ordering::Relaxed);
        self.shared.gp_ctr.store(gp ^ PHASE, Ordering::Relaxed);
        // The flip is visible before the second scan reads counters.
        fence(Ordering::SeqCst);
        self.wait_for_readers(mode, None);
        // No second heavy barrier (liburcu issues one here): every reader state that
        // let the scans finish was written by a Release store (unlock, offline,
        // quiescent state) and read with Acquire, or is a section that began with the
        // new phase (Acquire, above); either way the reader's accesses happen before
        // whatever the caller does next, on every architecture.
    }

    /// Whether no memb reader is active with a phase other than `gp_ctr`'s and (with a
    /// target) every QSBR reader is offline or has reported `qs_target`.
    fn readers_quiescent(&self, qs_target: Option<u64>) -> bool {
        let gp = self.shared.gp_ctr.load(Ordering::Relaxed);
        let _scan = self.scan_lock.lock().unwrap_or_else(|e| e.into_inner());
        self.slots().all(|slot| {
            // Acquire pairs with the Release stores of `register` and `repoint`.
            let rec = slot.rec.load(Ordering::Acquire);
            // SAFETY: a non-null record pointer stays valid until its thread withdraws it
            // with `unregister` or `repoint`, which must take `scan_lock`, held here.
            let Some(rec) = (unsafe { rec.as_ref() }) else {
                return true;
            };
            // Acquire pairs with the Release stores of read_unlock, offline and
            // quiescent_state: the reader's sections happen before our return.
            let v = rec.ctr.load(Ordering::Acquire);
            let memb_old = v & NEST_MASK != 0 && (v ^ gp) & PHASE != 0;
            let qsbr_old = qs_target.is_some_and(|target| {
                let q = rec.qs.load(Ordering::Acquire);
                q != 0 && q < target
            });
            !memb_old && !qsbr_old
        })
    }

    fn wait_for_readers(&self, mode: Mode, qs_target: Option<u64>) {
        let mut attempts = 0;
        loop {
            let sleepy = attempts >= ACTIVE_ATTEMPTS;
            if sleepy {
                self.shared.gp_waiting.store(WAITING, Ordering::Relaxed);
                // Write gp_waiting before reading reader state (pairs with the light
                // barrier between a reader's ctr store and its gp_waiting load).
                mode.heavy();
            }
            if self.readers_quiescent(qs_target) {
                if sleepy {
                    self.shared.gp_waiting.store(0, Ordering::Relaxed);
                }
                return;
            }
            if sleepy {
                self.sleep_until_woken(mode);
            } else {
                attempts += 1;
                // Spin briefly for a reader on another CPU; then yield, in case the
                // reader we wait for is preempted and needs this CPU to finish.
                if attempts < SPIN_ATTEMPTS {
                    spin_hint();
                } else {
                    yield_now();
                }
            }
        }
    }

    fn sleep_until_woken(&self, mode: Mode) {
        // Read reader state before gp_waiting: a reader's unlock may have had no fence.
        mode.heavy();
        let mut guard = self.wake_lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.shared.gp_waiting.load(Ordering::Relaxed) == WAITING {
            guard = self.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl Drop for Domain {
    fn drop(&mut self) {
        let mut p = self.registry.load(Ordering::Relaxed);
        while !p.is_null() {
            // SAFETY: `&mut self` means no thread uses a slot any more; every slot came
            // from Box::into_raw in `register` and is freed once, here. Records belong to
            // their threads, not to the slots.
            let slot = unsafe { Box::from_raw(p) };
            p = slot.next.load(Ordering::Relaxed);
        }
    }
}
