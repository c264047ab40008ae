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
//!    flip); heavy barrier (U2).
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
    spin_hint,
};

/// One level of read-side nesting in `Record::ctr`.
const NEST_COUNT: usize = 1;
/// The nesting count's bits in `Record::ctr`.
const NEST_MASK: usize = (1 << (usize::BITS / 2)) - 1;
/// The grace-period phase bit in `ReadMostly::gp_ctr` and `Record::ctr`.
const PHASE: usize = 1 << (usize::BITS / 2);

/// How many scans an updater spins for before it sleeps until a reader wakes it.
const ACTIVE_ATTEMPTS: u32 = if cfg!(loom) { 1 } else { 100 };

/// `Domain::gp_waiting` while an updater is (about to be) asleep.
const WAITING: i32 = -1;

/// One reader thread's state, shared with updaters. Never freed while its domain lives:
/// a thread that exits releases its record for reuse by a later thread.
pub(crate) struct Record {
    /// memb reader state: nesting count (low half) and phase (high half); see the
    /// module docs. Written only by the owning thread.
    ctr: AtomicUsize,
    /// QSBR reader state: 0 offline, else the `qs_seq` seen at the latest quiescent
    /// state. Written only by the owning thread.
    qs: AtomicU64,
    /// Whether a live thread owns this record.
    in_use: AtomicBool,
    /// Whether this record's read sections use full fences (the domain's barrier mode
    /// when the record was created; the mode never changes afterwards).
    pub(crate) full_fence: bool,
    /// The next record in the registry; set before the record is published, then fixed.
    next: AtomicPtr<CachePadded<Record>>,
}

/// Grace-period bookkeeping for sharing grace periods among concurrent updaters.
struct GpSeq {
    /// Grace periods completed so far.
    completed: u64,
    /// Whether a grace period is in progress.
    running: bool,
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
    /// Head of the registry, a push-only list of records.
    registry: AtomicPtr<CachePadded<Record>>,
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
            mode: AtomicUsize::new($mode),
            #[cfg(not(loom))]
            mode_init: std::sync::Once::new(),
            gp: Mutex::new(GpSeq {
                completed: 0,
                running: false,
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
        domain_new!(2)
    }

    /// The barrier mode, probing the kernel on first call.
    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::Acquire) {
            1 => Mode::Membarrier,
            2 => Mode::Fences,
            _ => {
                #[cfg(not(loom))]
                self.mode_init.call_once(|| {
                    // Release: a thread that sees the mode also sees the registration
                    // with the kernel that `detect` performed.
                    self.mode.store(encode(Mode::detect()), Ordering::Release);
                });
                self.mode()
            }
        }
    }

    /// Whether this domain's updaters use membarrier (readers then use compiler barriers).
    pub(crate) fn uses_membarrier(&self) -> bool {
        self.mode() == Mode::Membarrier
    }

    fn records(&self) -> impl Iterator<Item = &Record> {
        // Acquire pairs with the Release CAS in `acquire_record`: a record reached
        // through the list is fully initialised.
        let mut p = self.registry.load(Ordering::Acquire);
        std::iter::from_fn(move || {
            // SAFETY: records are pushed fully initialised (Release/Acquire above) and
            // are freed only by `Domain::drop`, which has exclusive access; `&self`
            // outlives the returned reference.
            let rec: &CachePadded<Record> = unsafe { p.as_ref()? };
            p = rec.next.load(Ordering::Acquire);
            Some(&**rec)
        })
    }

    /// Takes a free record, or adds one to the registry. The caller owns it until
    /// [`Domain::release_record`].
    pub(crate) fn acquire_record(&self) -> &Record {
        for rec in self.records() {
            // Acquire pairs with the Release store in `release_record`: the previous
            // owner's last writes (ctr and qs back to 0) are visible.
            if !rec.in_use.load(Ordering::Relaxed)
                && rec
                    .in_use
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                return rec;
            }
        }
        let full_fence = !self.uses_membarrier();
        let rec = Box::into_raw(Box::new(CachePadded::new(Record {
            ctr: AtomicUsize::new(0),
            qs: AtomicU64::new(0),
            in_use: AtomicBool::new(true),
            full_fence,
            next: AtomicPtr::new(std::ptr::null_mut()),
        })));
        // SAFETY: `rec` came from Box::into_raw above; once published it lives until
        // `Domain::drop`, which needs `&mut self`, so it outlives `&self`.
        let rec_ref: &Record = unsafe { &*rec };
        let mut head = self.registry.load(Ordering::Relaxed);
        loop {
            rec_ref.next.store(head, Ordering::Relaxed);
            // Release publishes the initialised record to `records()`.
            match self.registry.compare_exchange_weak(
                head,
                rec,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => head = now,
            }
        }
        rec_ref
    }

    /// Returns a record to the free pool. The owner must be outside any read section
    /// and offline.
    pub(crate) fn release_record(&self, rec: &Record) {
        debug_assert_eq!(rec.ctr.load(Ordering::Relaxed) & NEST_MASK, 0);
        debug_assert_eq!(rec.qs.load(Ordering::Relaxed), 0);
        // Release pairs with the Acquire CAS of the next owner.
        rec.in_use.store(false, Ordering::Release);
    }

    /// Enters a memb read section (nestable).
    #[inline(always)]
    pub(crate) fn read_lock(&self, rec: &Record, full_fence: bool) {
        let tmp = rec.ctr.load(Ordering::Relaxed);
        if tmp & NEST_MASK == 0 {
            // Outermost: snapshot the phase with a count of one. Relaxed: the snapshot's
            // age is what the two-phase wait tolerates (module docs).
            rec.ctr.store(
                self.shared.gp_ctr.load(Ordering::Relaxed),
                Ordering::Relaxed,
            );
            // Orders the ctr store before the section's loads. Pairs with the updater's
            // heavy barrier U1: either the updater's scan sees this reader active, or
            // this reader's loads see what the updater stored before U1.
            Mode::light(full_fence);
        } else {
            assert_ne!(tmp & NEST_MASK, NEST_MASK, "RCU read-side nesting overflow");
            rec.ctr.store(tmp + NEST_COUNT, Ordering::Relaxed);
        }
    }

    /// Leaves a memb read section entered with [`Domain::read_lock`].
    #[inline(always)]
    pub(crate) fn read_unlock(&self, rec: &Record, full_fence: bool) {
        let tmp = rec.ctr.load(Ordering::Relaxed);
        debug_assert_ne!(tmp & NEST_MASK, 0, "read_unlock outside a read section");
        if tmp & NEST_MASK == NEST_COUNT {
            // Release (with the barrier, for fence mode) orders the section's accesses
            // before the store; pairs with the updater's Acquire scan.
            Mode::light(full_fence);
            rec.ctr.store(tmp - NEST_COUNT, Ordering::Release);
            // Orders the ctr store before the gp_waiting load (store-buffering against
            // the updater's `gp_waiting` store, heavy barrier, ctr load).
            Mode::light(full_fence);
            if self.shared.gp_waiting.load(Ordering::Relaxed) == WAITING {
                self.wake_updater();
            }
        } else {
            rec.ctr.store(tmp - NEST_COUNT, Ordering::Relaxed);
        }
    }

    /// Whether the record's thread is inside a memb read section.
    pub(crate) fn in_read_section(rec: &Record) -> bool {
        rec.ctr.load(Ordering::Relaxed) & NEST_MASK != 0
    }

    /// Whether the record's thread is an online QSBR reader.
    pub(crate) fn is_online(rec: &Record) -> bool {
        rec.qs.load(Ordering::Relaxed) != 0
    }

    /// Makes the record's thread an online QSBR reader: from now on grace periods wait
    /// for its quiescent states.
    pub(crate) fn online(&self, rec: &Record) {
        rec.qs.store(
            self.shared.qs_seq.load(Ordering::Relaxed),
            Ordering::Relaxed,
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
        Mode::light(rec.full_fence);
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
                st = self.gp_done.wait(st).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            st.running = true;
            drop(st);
            // Resets `running` even if the grace period panics, so that no caller
            // waits forever for a grace period nobody runs.
            struct Finish<'a>(&'a Domain);
            impl Drop for Finish<'_> {
                fn drop(&mut self) {
                    let mut st = self.0.gp.lock().unwrap_or_else(|e| e.into_inner());
                    st.running = false;
                    if !std::thread::panicking() {
                        st.completed += 1;
                    }
                    self.0.gp_done.notify_all();
                }
            }
            let finish = Finish(self);
            self.grace_period();
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
        // U2: the readers' section accesses are ordered before whatever the caller
        // does next (typically, freeing).
        mode.heavy();
    }

    /// Whether no memb reader is active with a phase other than `gp_ctr`'s and (with a
    /// target) every QSBR reader is offline or has reported `qs_target`.
    fn readers_quiescent(&self, qs_target: Option<u64>) -> bool {
        let gp = self.shared.gp_ctr.load(Ordering::Relaxed);
        self.records().all(|rec| {
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
                spin_hint();
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
            // SAFETY: `&mut self` means no thread holds a record any more; every record
            // came from Box::into_raw in `acquire_record` and is freed once, here.
            let rec = unsafe { Box::from_raw(p) };
            p = rec.next.load(Ordering::Relaxed);
        }
    }
}
