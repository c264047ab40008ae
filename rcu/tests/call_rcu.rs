//! Deferred reclamation: `call_rcu`, `defer_drop` and `barrier`.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::Duration;

#[test]
fn callbacks_run_in_queue_order() {
    let seen = Arc::new(Mutex::new(Vec::new()));
    for i in 0..1000 {
        let seen = seen.clone();
        rcu::call_rcu(move || seen.lock().unwrap().push(i));
    }
    rcu::barrier();
    assert_eq!(*seen.lock().unwrap(), (0..1000).collect::<Vec<_>>());
}

#[test]
fn callbacks_wait_for_readers_that_were_running() {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let ran = Arc::new(AtomicBool::new(false));
    let reader = thread::spawn(move || {
        let _guard = rcu::read();
        entered_tx.send(()).unwrap();
        release_rx.recv().unwrap();
    });
    entered_rx.recv().unwrap();
    let flag = ran.clone();
    rcu::call_rcu(move || flag.store(true, Ordering::SeqCst));
    thread::sleep(Duration::from_millis(50));
    assert!(
        !ran.load(Ordering::SeqCst),
        "a callback ran while a reader that predates it was running"
    );
    release_tx.send(()).unwrap();
    reader.join().unwrap();
    rcu::barrier();
    assert!(ran.load(Ordering::SeqCst));
}

#[test]
fn barrier_covers_callbacks_of_every_thread() {
    let per_thread = if cfg!(miri) { 100 } else { 10_000 };
    let count = Arc::new(AtomicUsize::new(0));
    let producers: Vec<_> = (0..4)
        .map(|_| {
            let count = count.clone();
            thread::spawn(move || {
                for _ in 0..per_thread {
                    let count = count.clone();
                    rcu::call_rcu(move || {
                        count.fetch_add(1, Ordering::Relaxed);
                    });
                }
            })
        })
        .collect();
    for p in producers {
        p.join().unwrap();
    }
    rcu::barrier();
    assert_eq!(count.load(Ordering::Relaxed), 4 * per_thread);
}

#[test]
fn defer_drop_drops_exactly_once() {
    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }
    let drops = Arc::new(AtomicUsize::new(0));
    for _ in 0..100 {
        rcu::defer_drop(Counted(drops.clone()));
    }
    rcu::barrier();
    assert_eq!(drops.load(Ordering::SeqCst), 100);
}

#[test]
fn a_panicking_callback_does_not_stop_the_others() {
    let ran = Arc::new(AtomicBool::new(false));
    rcu::call_rcu(|| panic!("deliberate panic in a call_rcu callback (test)"));
    let flag = ran.clone();
    rcu::call_rcu(move || flag.store(true, Ordering::SeqCst));
    rcu::barrier();
    assert!(ran.load(Ordering::SeqCst));
}

#[test]
fn callbacks_may_queue_callbacks_and_take_guards() {
    let ran = Arc::new(AtomicBool::new(false));
    let flag = ran.clone();
    rcu::call_rcu(move || {
        let _guard = rcu::read();
        rcu::call_rcu(move || flag.store(true, Ordering::SeqCst));
    });
    rcu::barrier(); // runs the outer callback, which queues the inner one
    rcu::barrier(); // runs the inner one
    assert!(ran.load(Ordering::SeqCst));
}

#[test]
#[should_panic(expected = "inside a read-side critical section")]
fn barrier_inside_a_guard_panics_instead_of_deadlocking() {
    let _guard = rcu::read();
    rcu::barrier();
}
