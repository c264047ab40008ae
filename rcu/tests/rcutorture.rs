//! rcutorture, after QEMU's tests/unit/rcutorture.c.
//!
//! One updater rotates a ring of `PIPE_LEN` entries: it reinitialises the next entry,
//! publishes it, ages every other entry by one and waits for a grace period. Readers
//! load the current entry under a guard, nest a second guard, and read the entry's age
//! before leaving the outer section. An entry seen by a reader can have aged at most once
//! while the reader held it: an age of two or more means a grace period ended while a
//! read section that predates it was still running. A reader that sees `mbtest` clear
//! saw an entry that was not fully initialised when it was published.
//!
//! `RCU_TORTURE_SECS` sets the duration of each test (default 1 second).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

const PIPE_LEN: usize = 10;

struct Entry {
    age: AtomicUsize,
    mbtest: AtomicBool,
}

struct Torture {
    ring: Vec<Entry>,
    /// Index of the published entry.
    current: AtomicUsize,
    stop: AtomicBool,
    /// `ages[a]`: reads that saw age `a` (`PIPE_LEN` and above folded into the last).
    ages: Vec<AtomicU64>,
    mb_errors: AtomicU64,
    updates: AtomicU64,
    synchronizes: AtomicU64,
}

#[derive(Clone, Copy, Debug)]
enum Reader {
    /// `rcu::read()` guards (nested).
    Memb,
    /// `rcu::read_mb()` guards (nested).
    Mb,
    /// A `QsbrThread` that reports a quiescent state after each read.
    Qsbr,
}

fn duration() -> Duration {
    let secs = std::env::var("RCU_TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(miri) { 0.05 } else { 1.0 });
    Duration::from_secs_f64(secs)
}

impl Torture {
    fn new() -> Torture {
        Torture {
            ring: (0..PIPE_LEN)
                .map(|_| Entry {
                    age: AtomicUsize::new(0),
                    mbtest: AtomicBool::new(true),
                })
                .collect(),
            current: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            ages: (0..=PIPE_LEN).map(|_| AtomicU64::new(0)).collect(),
            mb_errors: AtomicU64::new(0),
            updates: AtomicU64::new(0),
            synchronizes: AtomicU64::new(0),
        }
    }

    fn record(&self, age: usize) {
        self.ages[age.min(PIPE_LEN)].fetch_add(1, Ordering::Relaxed);
    }

    /// One read: load the current entry under `enter()`, nest a second section, and
    /// read the entry's age before leaving the outer one.
    fn read_once<G>(&self, enter: fn() -> G) {
        let outer = enter();
        // Acquire pairs with the updater's Release publication.
        let p = &self.ring[self.current.load(Ordering::Acquire)];
        if !p.mbtest.load(Ordering::Relaxed) {
            self.mb_errors.fetch_add(1, Ordering::Relaxed);
        }
        {
            let _inner = enter();
            for _ in 0..100 {
                std::hint::black_box(0u64);
            }
        }
        let age = p.age.load(Ordering::Relaxed);
        drop(outer);
        self.record(age);
    }

    fn reader(&self, kind: Reader) {
        match kind {
            Reader::Memb => {
                while !self.stop.load(Ordering::Relaxed) {
                    self.read_once(rcu::read);
                }
            }
            Reader::Mb => {
                while !self.stop.load(Ordering::Relaxed) {
                    self.read_once(rcu::read_mb);
                }
            }
            Reader::Qsbr => {
                let mut thread = rcu::QsbrThread::register().unwrap();
                while !self.stop.load(Ordering::Relaxed) {
                    let age = {
                        let _guard = thread.read();
                        let p = &self.ring[self.current.load(Ordering::Acquire)];
                        if !p.mbtest.load(Ordering::Relaxed) {
                            self.mb_errors.fetch_add(1, Ordering::Relaxed);
                        }
                        for _ in 0..100 {
                            std::hint::black_box(0u64);
                        }
                        p.age.load(Ordering::Relaxed)
                    };
                    self.record(age);
                    thread.quiescent_state();
                }
            }
        }
    }

    fn updater(&self) {
        let mut idx = self.current.load(Ordering::Relaxed);
        while !self.stop.load(Ordering::Relaxed) {
            let old = idx;
            idx = (idx + 1) % PIPE_LEN;
            let p = &self.ring[idx];
            p.mbtest.store(false, Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::SeqCst);
            p.age.store(0, Ordering::Relaxed);
            p.mbtest.store(true, Ordering::Relaxed);
            // Release: readers that load `idx` see the entry initialised.
            self.current.store(idx, Ordering::Release);
            assert_ne!(old, idx);
            for (i, e) in self.ring.iter().enumerate() {
                if i != idx {
                    e.age
                        .store(e.age.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
                }
            }
            rcu::synchronize();
            self.updates.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn synchronizer(&self) {
        while !self.stop.load(Ordering::Relaxed) {
            rcu::synchronize();
            self.synchronizes.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn torture(readers: &[Reader], synchronizers: usize) {
    let t = Arc::new(Torture::new());
    let start = Arc::new(Barrier::new(readers.len() + synchronizers + 2));
    let mut threads = Vec::new();
    for &kind in readers {
        let (t, start) = (t.clone(), start.clone());
        threads.push(thread::spawn(move || {
            start.wait();
            t.reader(kind)
        }));
    }
    for _ in 0..synchronizers {
        let (t, start) = (t.clone(), start.clone());
        threads.push(thread::spawn(move || {
            start.wait();
            t.synchronizer()
        }));
    }
    {
        let (t, start) = (t.clone(), start.clone());
        threads.push(thread::spawn(move || {
            start.wait();
            t.updater()
        }));
    }
    start.wait();
    let deadline = Instant::now() + duration();
    while Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    t.stop.store(true, Ordering::Relaxed);
    for th in threads {
        th.join().unwrap();
    }
    let ages: Vec<u64> = t.ages.iter().map(|a| a.load(Ordering::Relaxed)).collect();
    let reads: u64 = ages.iter().sum();
    let updates = t.updates.load(Ordering::Relaxed);
    eprintln!(
        "rcutorture {readers:?} + {synchronizers} synchronizers: {reads} reads, {updates} updates, {} extra grace periods, ages {ages:?}",
        t.synchronizes.load(Ordering::Relaxed)
    );
    assert!(
        reads > 0 && updates > 0,
        "the torture did no work: {reads} reads, {updates} updates"
    );
    assert_eq!(
        t.mb_errors.load(Ordering::Relaxed),
        0,
        "a reader saw an uninitialised entry"
    );
    assert!(
        ages[2..].iter().all(|&n| n == 0),
        "a reader saw an entry aged two or more grace periods: ages {ages:?}"
    );
}

#[test]
fn one_memb_reader() {
    torture(&[Reader::Memb], 0);
}

#[test]
fn many_memb_readers_with_synchronizers() {
    torture(&[Reader::Memb, Reader::Memb, Reader::Memb, Reader::Memb], 2);
}

#[test]
fn one_qsbr_reader() {
    torture(&[Reader::Qsbr], 0);
}

#[test]
fn mixed_readers_with_synchronizers() {
    torture(&[Reader::Memb, Reader::Qsbr, Reader::Mb, Reader::Qsbr], 2);
}
