//! QEMU's tests/unit/test-aio-multithread.c: iothread lifecycle, and work hopping
//! between five iothreads with no lost wake-up, no double schedule, exact counters.
//! `AIO_MT_SECS` sets the hopping duration (default 1 second).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use aio_context::{AioContext, AioHandle, IoThread};

const NUM_CONTEXTS: usize = 5;

fn duration() -> Duration {
    let secs = std::env::var("AIO_MT_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    Duration::from_secs_f64(secs)
}

#[test]
fn lifecycle() {
    let threads: Vec<IoThread> = (0..NUM_CONTEXTS)
        .map(|i| IoThread::spawn(&format!("iothread{i}")).unwrap())
        .collect();
    for (i, t) in threads.iter().enumerate() {
        assert_eq!(t.name(), format!("iothread{i}"));
        assert!(t.thread_id() > 0);
        let name = t.run(|| thread::current().name().map(str::to_owned));
        assert_eq!(name.as_deref(), Some(t.name()));
        assert!(t.run(|| AioContext::current().is_some()));
    }
    for t in threads {
        t.stop();
    }
}

/// A unit of work that hops: each run counts, then schedules itself into a random
/// context. `running` catches a double schedule (two runs at once).
struct Hopper {
    running: AtomicBool,
    runs: AtomicU64,
}

struct Shared {
    handles: Vec<AioHandle>,
    hoppers: Vec<Hopper>,
    scheduled: AtomicU64,
    double_runs: AtomicUsize,
    stop: AtomicBool,
    seed: AtomicU64,
    done: Mutex<usize>,
}

impl Shared {
    fn random(&self) -> usize {
        // A shared xorshift: contention on it is part of the stress.
        let mut x = self
            .seed
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        (x >> 33) as usize
    }

    fn hop(self: &Arc<Self>, who: usize) {
        let target = self.random() % self.handles.len();
        self.scheduled.fetch_add(1, Ordering::Relaxed);
        let me = self.clone();
        self.handles[target].schedule_oneshot(move || me.run(who));
    }

    fn run(self: &Arc<Self>, who: usize) {
        let h = &self.hoppers[who];
        if h.running.swap(true, Ordering::AcqRel) {
            self.double_runs.fetch_add(1, Ordering::Relaxed);
        }
        h.runs.fetch_add(1, Ordering::Relaxed);
        h.running.store(false, Ordering::Release);
        if self.stop.load(Ordering::Acquire) {
            *self.done.lock().unwrap() += 1;
        } else {
            self.hop(who);
        }
    }
}

#[test]
fn schedule_hopping_between_iothreads() {
    let threads: Vec<IoThread> = (0..NUM_CONTEXTS)
        .map(|i| IoThread::spawn(&format!("hop{i}")).unwrap())
        .collect();
    let hoppers = 16;
    let shared = Arc::new(Shared {
        handles: threads.iter().map(|t| t.handle().clone()).collect(),
        hoppers: (0..hoppers)
            .map(|_| Hopper {
                running: AtomicBool::new(false),
                runs: AtomicU64::new(0),
            })
            .collect(),
        scheduled: AtomicU64::new(0),
        double_runs: AtomicUsize::new(0),
        stop: AtomicBool::new(false),
        seed: AtomicU64::new(1),
        done: Mutex::new(0),
    });
    for who in 0..hoppers {
        shared.hop(who);
    }
    thread::sleep(duration());
    shared.stop.store(true, Ordering::Release);
    // Every hopper finishes its last hop: none was lost in a sleeping context.
    let deadline = Instant::now() + Duration::from_secs(10);
    while *shared.done.lock().unwrap() < hoppers {
        assert!(
            Instant::now() < deadline,
            "a hop was lost: {} of {hoppers} hoppers finished",
            shared.done.lock().unwrap()
        );
        thread::sleep(Duration::from_millis(1));
    }
    for t in threads {
        t.stop();
    }
    let runs: u64 = shared
        .hoppers
        .iter()
        .map(|h| h.runs.load(Ordering::Relaxed))
        .sum();
    let scheduled = shared.scheduled.load(Ordering::Relaxed);
    eprintln!("{scheduled} hops scheduled, {runs} ran");
    assert_eq!(runs, scheduled, "every scheduled hop ran exactly once");
    assert_eq!(
        shared.double_runs.load(Ordering::Relaxed),
        0,
        "a hopper ran twice at once"
    );
}

/// A future's waker is woken from many threads at once: the task only ever runs on its
/// context's thread, and wakes coalesce into at most one run each.
#[test]
fn task_wakers_from_other_threads_run_the_task_at_home() {
    let io = IoThread::spawn("home").unwrap();
    let home = io.run(|| thread::current().id());
    let polls = Arc::new(AtomicUsize::new(0));
    let (tx, rx) = std::sync::mpsc::channel();
    let p = polls.clone();
    io.handle().spawn(async move {
        let mut woken = 0;
        std::future::poll_fn(move |cx| {
            assert_eq!(thread::current().id(), home, "the task ran away from home");
            p.fetch_add(1, Ordering::SeqCst);
            woken += 1;
            if woken == 1 {
                tx.send(cx.waker().clone()).unwrap();
            }
            if woken < 50 {
                std::task::Poll::Pending
            } else {
                std::task::Poll::Ready(())
            }
        })
        .await;
    });
    let waker = rx.recv().unwrap();
    let wakers: Vec<_> = (0..4)
        .map(|_| {
            let w = waker.clone();
            let p = polls.clone();
            thread::spawn(move || {
                while p.load(Ordering::SeqCst) < 50 {
                    w.wake_by_ref();
                    thread::yield_now();
                }
            })
        })
        .collect();
    for w in wakers {
        w.join().unwrap();
    }
    io.run(|| ());
    assert_eq!(polls.load(Ordering::SeqCst), 50);
    io.stop();
}
