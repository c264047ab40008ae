//! What `synchronize()` waits for, and what it refuses to do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::Duration;

/// Starts `synchronize()` on another thread while `hold` keeps a read section open, and
/// checks that it returns only after `release` ends the section.
fn synchronize_waits_for(hold: impl FnOnce(&dyn Fn()) + Send + 'static) {
    let (entered_tx, entered_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel::<()>();
    let released = Arc::new(AtomicBool::new(false));
    let reader = {
        let released = released.clone();
        thread::spawn(move || {
            hold(&|| {
                entered_tx.send(()).unwrap();
                release_rx.recv().unwrap();
                released.store(true, Ordering::SeqCst);
            })
        })
    };
    entered_rx.recv().unwrap();
    let updater = {
        let released = released.clone();
        thread::spawn(move || {
            rcu::synchronize();
            released.load(Ordering::SeqCst)
        })
    };
    thread::sleep(Duration::from_millis(50));
    assert!(
        !updater.is_finished(),
        "synchronize() returned while a reader was in its section"
    );
    release_tx.send(()).unwrap();
    assert!(
        updater.join().unwrap(),
        "synchronize() returned before the section ended"
    );
    reader.join().unwrap();
}

#[test]
fn waits_for_a_memb_reader() {
    synchronize_waits_for(|wait| {
        let _guard = rcu::read();
        wait();
    });
}

#[test]
fn waits_for_a_nested_memb_reader_until_the_outermost_guard_drops() {
    synchronize_waits_for(|wait| {
        let outer = rcu::read();
        drop(rcu::read());
        wait();
        drop(outer);
    });
}

#[test]
fn waits_for_an_mb_reader() {
    synchronize_waits_for(|wait| {
        let _guard = rcu::read_mb();
        wait();
    });
}

#[test]
fn waits_for_an_online_qsbr_reader_until_its_quiescent_state() {
    synchronize_waits_for(|wait| {
        let mut t = rcu::QsbrThread::register().unwrap();
        let _ = t.read();
        wait();
        t.quiescent_state();
    });
}

#[test]
fn does_not_wait_for_an_offline_qsbr_reader() {
    let mut t = rcu::QsbrThread::register().unwrap();
    let (parked_tx, parked_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let updater = thread::spawn(move || {
        parked_rx.recv().unwrap();
        rcu::synchronize();
        done_tx.send(()).unwrap();
    });
    // Blocks until the updater's grace period has ended: it must not need us.
    t.offline(|| {
        parked_tx.send(()).unwrap();
        done_rx.recv().unwrap();
    });
    updater.join().unwrap();
}

#[test]
fn does_not_wait_for_sections_that_start_later() {
    // A reader that re-enters sections back to back never blocks a grace period.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let stop = stop.clone();
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _g = rcu::read();
            }
        })
    };
    for _ in 0..100 {
        rcu::synchronize();
    }
    stop.store(true, Ordering::Relaxed);
    reader.join().unwrap();
}

#[test]
fn concurrent_callers_all_return() {
    let n = 8;
    let start = Arc::new(Barrier::new(n));
    let threads: Vec<_> = (0..n)
        .map(|_| {
            let start = start.clone();
            thread::spawn(move || {
                start.wait();
                for _ in 0..50 {
                    rcu::synchronize();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
}

#[test]
#[should_panic(expected = "inside a read-side critical section")]
fn synchronize_inside_a_guard_panics_instead_of_deadlocking() {
    let _guard = rcu::read();
    rcu::synchronize();
}

#[test]
#[should_panic(expected = "online QSBR thread")]
fn synchronize_on_an_online_qsbr_thread_panics_instead_of_deadlocking() {
    let _t = rcu::QsbrThread::register().unwrap();
    rcu::synchronize();
}

#[test]
fn qsbr_thread_synchronize_goes_offline_meanwhile() {
    let mut t = rcu::QsbrThread::register().unwrap();
    t.synchronize();
    t.barrier();
}

#[test]
fn one_qsbr_handle_per_thread() {
    let _t = rcu::QsbrThread::register().unwrap();
    assert_eq!(
        rcu::QsbrThread::register().unwrap_err(),
        rcu::Error::AlreadyRegistered
    );
}

#[test]
fn a_thread_can_register_again_after_dropping_its_handle() {
    drop(rcu::QsbrThread::register().unwrap());
    let _t = rcu::QsbrThread::register().unwrap();
}

#[test]
fn exited_threads_do_not_block_grace_periods() {
    for _ in 0..64 {
        thread::spawn(|| drop(rcu::read())).join().unwrap();
        thread::spawn(|| drop(rcu::QsbrThread::register().unwrap()))
            .join()
            .unwrap();
    }
    rcu::synchronize();
}

#[test]
fn reports_the_barrier_mode() {
    let membarrier = rcu::uses_membarrier();
    eprintln!(
        "grace periods use {}",
        if membarrier {
            "membarrier(2)"
        } else {
            "full fences"
        }
    );
    if std::env::var_os("RCU_BARRIER").is_some_and(|v| v == "fences") {
        assert!(!membarrier);
    }
}
