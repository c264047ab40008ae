//! RCU list torture, after QEMU's tests/unit/test-rcu-list.c.
//!
//! One writer inserts and removes elements at random positions while readers walk the
//! list. Every element records its drop in a side table indexed by its id, so the test
//! sees a double drop, a drop of an element a reader is still looking at (a grace
//! period that ended too early), and a removed element that is never reclaimed.
//! Pass: removed == reclaimed exactly after `rcu::barrier()`, each element dropped once.
//!
//! `RCU_TORTURE_SECS` sets the duration (default 1 second).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use rcu::RcuList;

/// Element ids available; small under miri, which interprets every access.
const MAX_IDS: usize = if cfg!(miri) { 300 } else { 1 << 22 };

struct Stats {
    /// `dropped[id]`: whether element `id` has been dropped.
    dropped: Vec<AtomicBool>,
    reclaimed: AtomicU64,
    double_drops: AtomicU64,
    used_after_drop: AtomicU64,
}

struct Element {
    id: usize,
    stats: Arc<Stats>,
}

impl Drop for Element {
    fn drop(&mut self) {
        // Release: a reader that sees `true` would be reading after the drop.
        if self.stats.dropped[self.id].swap(true, Ordering::Release) {
            self.stats.double_drops.fetch_add(1, Ordering::Relaxed);
        }
        self.stats.reclaimed.fetch_add(1, Ordering::Relaxed);
    }
}

/// A small xorshift generator: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn duration() -> Duration {
    let secs = std::env::var("RCU_TORTURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(if cfg!(miri) { 0.05 } else { 1.0 });
    Duration::from_secs_f64(secs)
}

fn list_torture(readers: usize, qsbr: bool) {
    let stats = Arc::new(Stats {
        dropped: (0..MAX_IDS).map(|_| AtomicBool::new(false)).collect(),
        reclaimed: AtomicU64::new(0),
        double_drops: AtomicU64::new(0),
        used_after_drop: AtomicU64::new(0),
    });
    let list = Arc::new(RcuList::new());
    let stop = Arc::new(AtomicBool::new(false));
    let walks = Arc::new(AtomicU64::new(0));
    let start = Arc::new(Barrier::new(readers + 1));

    let check = |stats: &Stats, e: &Element| {
        if stats.dropped[e.id].load(Ordering::Acquire) {
            stats.used_after_drop.fetch_add(1, Ordering::Relaxed);
        }
    };
    let mut threads = Vec::new();
    for _ in 0..readers {
        let (list, stop, stats, walks, start) = (
            list.clone(),
            stop.clone(),
            stats.clone(),
            walks.clone(),
            start.clone(),
        );
        threads.push(thread::spawn(move || {
            start.wait();
            if qsbr {
                let mut t = rcu::QsbrThread::register().unwrap();
                while !stop.load(Ordering::Relaxed) {
                    for e in list.iter(&t.read()) {
                        check(&stats, e);
                    }
                    t.quiescent_state();
                    walks.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                while !stop.load(Ordering::Relaxed) {
                    let guard = rcu::read();
                    for e in list.iter(&guard) {
                        check(&stats, e);
                    }
                    walks.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }

    start.wait();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut inserted, mut removed, mut len) = (0usize, 0u64, 0usize);
    let deadline = Instant::now() + duration();
    while Instant::now() < deadline && inserted < MAX_IDS {
        for _ in 0..64 {
            let r = rng.next();
            if len > 0 && (r & 1 == 0 || len >= 100) {
                let victim = (r >> 1) as usize % len;
                let mut i = 0;
                let n = list.retain(|_| {
                    i += 1;
                    i - 1 != victim
                });
                assert_eq!(n, 1);
                removed += 1;
                len -= 1;
            } else {
                let e = Element {
                    id: inserted,
                    stats: stats.clone(),
                };
                inserted += 1;
                let pos = (r >> 1) as usize % (len + 1);
                let mut i = 0;
                list.insert_before(e, |_| {
                    i += 1;
                    i - 1 == pos
                });
                len += 1;
            }
            if inserted >= MAX_IDS {
                break;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    rcu::barrier();
    let reclaimed = stats.reclaimed.load(Ordering::Relaxed);
    eprintln!(
        "list torture ({readers} {} readers): {inserted} inserted, {removed} removed, {reclaimed} reclaimed, {} walks",
        if qsbr { "QSBR" } else { "memb" },
        walks.load(Ordering::Relaxed)
    );
    assert!(
        removed > 0 && walks.load(Ordering::Relaxed) > 0,
        "the torture did no work"
    );
    assert_eq!(
        stats.used_after_drop.load(Ordering::Relaxed),
        0,
        "a reader saw a dropped element"
    );
    assert_eq!(
        stats.double_drops.load(Ordering::Relaxed),
        0,
        "an element was dropped twice"
    );
    assert_eq!(removed, reclaimed, "removed and reclaimed differ");
    let guard = rcu::read();
    assert_eq!(list.iter(&guard).count(), len);
    drop(guard);
    drop(Arc::try_unwrap(list).ok().expect("readers are gone"));
    assert_eq!(
        stats.reclaimed.load(Ordering::Relaxed),
        inserted as u64,
        "inserted and dropped differ"
    );
}

#[test]
fn one_reader() {
    list_torture(1, false);
}

#[test]
fn many_readers() {
    list_torture(3, false);
}

#[test]
fn qsbr_readers() {
    list_torture(2, true);
}
