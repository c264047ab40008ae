//! Loom models of the BH protocol: schedule vs delete vs dispatch, and no lost
//! notification. Run with `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p
//! bottom-half --release --test loom_bh`.

#![cfg(loom)]

use loom::sync::Arc;
use std::time::Duration;

use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering, fence};
use loom::thread;

use bottom_half::BhList;

/// One thread schedules, another deletes, the owner dispatches: the callback runs at
/// most once, and once the owner has seen the deletion it is freed.
#[test]
fn schedule_delete_dispatch() {
    loom::model(|| {
        let list = BhList::new(|| {});
        let runs = Arc::new(AtomicUsize::new(0));
        let witness = Arc::new(());
        let (r, w) = (runs.clone(), witness.clone());
        let bh = list.scheduler().new_bh(move || {
            let _keep = &w;
            r.fetch_add(1, Ordering::Relaxed);
        });
        let scheduler = {
            let bh = bh.clone();
            thread::spawn(move || bh.schedule())
        };
        let deleter = {
            let bh = bh.clone();
            thread::spawn(move || bh.delete())
        };
        list.poll();
        scheduler.join().unwrap();
        deleter.join().unwrap();
        list.poll();
        assert!(runs.load(Ordering::Relaxed) <= 1);
        list.poll();
        drop(bh);
        assert_eq!(
            Arc::strong_count(&witness),
            1,
            "the callback of a deleted BH was not freed"
        );
        drop(list);
    });
}

/// The owner's side of the wake-up protocol the [`bottom_half::Notify`] contract is
/// written for (aio-context's `Wakeup`): before it sleeps the owner raises its "may
/// sleep" flag, issues a SeqCst fence and looks for work; the notifier tests the flag
/// with a relaxed load and kicks the owner's eventfd only if it is raised. The notifier
/// here does exactly that, so a notification that the real loop would not have seen
/// (sent without the fence the contract promises, or not sent) leaves `kicked` clear.
struct SleepyOwner {
    may_sleep: AtomicBool,
    kicked: AtomicBool,
}

impl SleepyOwner {
    fn notify(&self) {
        if self.may_sleep.load(Ordering::Relaxed) {
            self.kicked.store(true, Ordering::Relaxed);
        }
    }
}

/// A schedule from another thread either is found by the owner's look for work before
/// it sleeps, or kicks the sleeping owner: never neither (a lost wake-up: the owner
/// would sleep with a BH pending).
#[test]
fn no_lost_wakeup() {
    loom::model(|| {
        let owner = Arc::new(SleepyOwner {
            may_sleep: AtomicBool::new(false),
            kicked: AtomicBool::new(false),
        });
        let o = owner.clone();
        let list = BhList::new(move || o.notify());
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let bh = list.scheduler().new_bh(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        let producer = {
            let bh = bh.clone();
            thread::spawn(move || bh.schedule())
        };
        // The owner's "about to sleep": raise the flag, fence, look for work.
        owner.may_sleep.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let found = list.timeout() == Some(Duration::ZERO);
        producer.join().unwrap();
        // It now sleeps unless it found work; only a kick can wake it.
        assert!(
            found || owner.kicked.load(Ordering::Relaxed),
            "lost wake-up: the owner sleeps with a BH pending and nobody kicks it"
        );
        owner.may_sleep.store(false, Ordering::Relaxed);
        list.poll();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        bh.delete();
        list.poll();
    });
}

/// Two producers race to queue the same BH: it is queued once and runs once per poll.
#[test]
fn concurrent_schedules_coalesce() {
    loom::model(|| {
        let list = BhList::new(|| {});
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let bh = list.scheduler().new_bh(move || {
            r.fetch_add(1, Ordering::Relaxed);
        });
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let bh = bh.clone();
                thread::spawn(move || bh.schedule())
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        list.poll();
        assert_eq!(runs.load(Ordering::Relaxed), 1);
        bh.delete();
        list.poll();
    });
}

/// The owner deletes a BH that another thread is scheduling: no later poll runs it,
/// whichever way the race goes, and its callback is freed.
#[test]
fn deleted_bh_never_runs() {
    loom::model(|| {
        let list = BhList::new(|| {});
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let bh = list.scheduler().new_bh(move || {
            r.fetch_add(1, Ordering::Relaxed);
        });
        let scheduler = {
            let bh = bh.clone();
            thread::spawn(move || bh.schedule())
        };
        bh.delete();
        list.poll();
        scheduler.join().unwrap();
        list.poll();
        assert_eq!(runs.load(Ordering::Relaxed), 0, "a deleted BH ran");
    });
}

/// One-shots from two threads while the owner dispatches (their own path through
/// `poll`: born queued, no handle, no flag updates): each closure runs exactly once, on
/// the owner, sees what its scheduler wrote before scheduling, and is freed.
#[test]
fn oneshots_from_other_threads_run_once_and_are_freed() {
    loom::model(|| {
        let list = BhList::new(|| {});
        let runs = Arc::new(AtomicUsize::new(0));
        let witness = Arc::new(());
        let producers: Vec<_> = (0..2)
            .map(|_| {
                let scheduler = list.scheduler();
                let (r, w) = (runs.clone(), witness.clone());
                thread::spawn(move || {
                    let data = Arc::new(AtomicUsize::new(0));
                    // Written before the schedule: the callback must see it.
                    data.store(7, Ordering::Relaxed);
                    scheduler.schedule_oneshot(move || {
                        let _keep = &w;
                        assert_eq!(data.load(Ordering::Relaxed), 7);
                        r.fetch_add(1, Ordering::Relaxed);
                    });
                })
            })
            .collect();
        list.poll();
        for p in producers {
            p.join().unwrap();
        }
        list.poll();
        list.poll();
        assert_eq!(runs.load(Ordering::Relaxed), 2, "each one-shot ran once");
        assert_eq!(
            Arc::strong_count(&witness),
            1,
            "the one-shot closures were freed"
        );
        drop(list);
    });
}
