//! Many threads schedule, cancel and delete BHs while the owner dispatches them.
//! `BH_STRESS_SECS` sets the duration (default 1 second).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use bottom_half::BhList;

fn spin(n: u32) {
    for _ in 0..n {
        std::hint::spin_loop();
    }
}

fn duration() -> Duration {
    let secs = std::env::var("BH_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok());
    Duration::from_secs_f64(secs.unwrap_or(if cfg!(miri) { 0.05 } else { 1.0 }))
}

/// Every schedule is eventually run: producers bump `requested` before scheduling, the
/// callback records the highest value it saw, and after the producers stop the last run
/// has seen them all. Runs never exceed schedules (coalescing only merges).
#[test]
fn no_schedule_is_lost() {
    let list = BhList::new(|| {});
    let requested = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(AtomicUsize::new(0));
    let runs = Arc::new(AtomicUsize::new(0));
    let (r, s, n) = (requested.clone(), seen.clone(), runs.clone());
    let bh = list.scheduler().new_bh(move || {
        n.fetch_add(1, Ordering::Relaxed);
        s.fetch_max(r.load(Ordering::SeqCst), Ordering::SeqCst);
    });
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = (0..3)
        .map(|_| {
            let (bh, requested, stop) = (bh.clone(), requested.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    requested.fetch_add(1, Ordering::SeqCst);
                    bh.schedule();
                }
            })
        })
        .collect();
    let deadline = Instant::now() + duration();
    while Instant::now() < deadline {
        list.poll();
    }
    stop.store(true, Ordering::Relaxed);
    for p in producers {
        p.join().unwrap();
    }
    while list.poll() {}
    let total = requested.load(Ordering::SeqCst);
    eprintln!("{total} schedules, {} runs", runs.load(Ordering::Relaxed));
    assert_eq!(seen.load(Ordering::SeqCst), total, "a schedule was lost");
    assert!(runs.load(Ordering::Relaxed) <= total);
}

/// Deletions `delete_races_schedule_and_dispatch` checks at the least.
const MIN_CYCLES: usize = if cfg!(miri) { 2 } else { 30 };

/// The owner's poll count, published so other threads can tell when every poll that
/// was under way at some instant has finished.
#[derive(Default)]
struct PollEpochs {
    started: AtomicUsize,
    finished: AtomicUsize,
}

impl PollEpochs {
    fn poll(&self, list: &BhList) {
        self.started.fetch_add(1, Ordering::SeqCst);
        list.poll();
        self.finished.fetch_add(1, Ordering::SeqCst);
    }

    /// Waits until `n` polls have finished; false if `stop` was raised first.
    fn wait_finished(&self, n: usize, stop: &AtomicBool) -> bool {
        while self.finished.load(Ordering::SeqCst) < n {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            thread::yield_now();
        }
        true
    }
}

/// Threads delete BHs while others schedule them and the owner runs them. Once
/// `delete` has returned, a BH runs zero more times. The only run that may still happen
/// after that instant is one the owner claimed before it (in a poll already under way),
/// so the test waits for the polls under way to finish, then requires the run count to
/// stay exactly where it is through two further polls. Every callback is freed exactly
/// once by the end.
#[test]
fn delete_races_schedule_and_dispatch() {
    let list = BhList::new(|| {});
    let scheduler = list.scheduler();
    let witness = Arc::new(());
    let stop = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(3));
    let violations = Arc::new(AtomicUsize::new(0));
    let epochs = Arc::new(PollEpochs::default());
    let made = Arc::new(AtomicUsize::new(0));
    let (bhs_tx, bhs_rx) = std::sync::mpsc::sync_channel(64);

    // Creates BHs and hands each to the scheduler thread and (later) deletes it.
    let maker = {
        let (stop, start, witness, violations, epochs, made) = (
            stop.clone(),
            start.clone(),
            witness.clone(),
            violations.clone(),
            epochs.clone(),
            made.clone(),
        );
        thread::spawn(move || {
            start.wait();
            while !stop.load(Ordering::Relaxed) {
                let runs = Arc::new(AtomicUsize::new(0));
                let (r, w) = (runs.clone(), witness.clone());
                let bh = scheduler.new_bh(move || {
                    let _keep = &w;
                    r.fetch_add(1, Ordering::SeqCst);
                });
                if bhs_tx.send(bh.clone()).is_err() {
                    break;
                }
                spin(200);
                bh.delete();
                // Every poll that could have claimed the BH before the deletion had
                // started by now; once those have finished, the count is final.
                let under_way = epochs.started.load(Ordering::SeqCst);
                if !epochs.wait_finished(under_way, &stop) {
                    break;
                }
                let settled = runs.load(Ordering::SeqCst);
                if !epochs.wait_finished(under_way + 2, &stop) {
                    break;
                }
                if runs.load(Ordering::SeqCst) != settled {
                    violations.fetch_add(1, Ordering::Relaxed);
                }
                made.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    let schedulers = {
        let (stop, start) = (stop.clone(), start.clone());
        thread::spawn(move || {
            start.wait();
            let mut live = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                while let Ok(bh) = bhs_rx.try_recv() {
                    live.push(bh);
                    if live.len() > 16 {
                        live.remove(0);
                    }
                }
                for bh in &live {
                    bh.schedule();
                }
            }
        })
    };
    start.wait();
    // At least MIN_CYCLES deletions however slow the machine (or a sanitizer) is; the
    // hard deadline only bounds a hang.
    let deadline = Instant::now() + duration();
    let hard_deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline
        || (made.load(Ordering::SeqCst) < MIN_CYCLES && Instant::now() < hard_deadline)
    {
        epochs.poll(&list);
    }
    stop.store(true, Ordering::SeqCst);
    maker.join().unwrap();
    let made = made.load(Ordering::SeqCst);
    schedulers.join().unwrap();
    while list.poll() {}
    list.poll();
    eprintln!("{made} BHs created and deleted");
    assert!(made >= MIN_CYCLES, "only {made} deletions in 120 s");
    assert_eq!(
        violations.load(Ordering::Relaxed),
        0,
        "a BH ran after its deletion returned (beyond a run the owner had already claimed)"
    );
    drop(list);
    assert_eq!(Arc::strong_count(&witness), 1, "a callback was leaked");
}
