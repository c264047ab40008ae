//! Readers at thread exit: thread-local destructors that still hold or take read
//! sections after the crate's own exit-time release has run. Each test fails by hanging
//! (a grace period that never ends) or by a use of freed memory under miri.

use std::cell::RefCell;
use std::sync::Arc;
use std::thread;

/// Runs `body` on a fresh thread whose thread-local `LATE` is registered (touched)
/// before the crate's own destructor is armed by the first read, so that `LATE`'s
/// destructor runs after it (thread-local destructors run in reverse order).
fn on_thread_with_late_destructor(body: impl FnOnce() + Send + 'static) {
    thread::spawn(body).join().unwrap();
    // Every section the thread opened has been closed by its destructors: a grace
    // period must complete, and deferred work must run.
    rcu::synchronize();
    rcu::barrier();
}

#[test]
fn a_guard_dropped_by_a_later_destructor_closes_its_section() {
    thread_local! {
        static LATE: RefCell<Option<rcu::Guard>> = const { RefCell::new(None) };
    }
    on_thread_with_late_destructor(|| {
        LATE.with(|_| ());
        let guard = rcu::read();
        LATE.with(|late| *late.borrow_mut() = Some(guard));
    });
}

#[test]
fn a_qsbr_thread_dropped_by_a_later_destructor_goes_offline() {
    thread_local! {
        static LATE: RefCell<Option<rcu::QsbrThread>> = const { RefCell::new(None) };
    }
    on_thread_with_late_destructor(|| {
        LATE.with(|_| ());
        let t = rcu::QsbrThread::register().unwrap();
        LATE.with(|late| *late.borrow_mut() = Some(t));
    });
}

#[test]
fn a_later_destructor_can_still_read() {
    struct ReadsOnDrop(Arc<rcu::RcuCell<u32>>);
    impl Drop for ReadsOnDrop {
        fn drop(&mut self) {
            let guard = rcu::read();
            assert_eq!(self.0.load(&guard), Some(&7));
            drop(guard);
            let _nested = (rcu::read(), rcu::read_mb());
        }
    }
    thread_local! {
        static LATE: RefCell<Option<ReadsOnDrop>> = const { RefCell::new(None) };
    }
    let cell = Arc::new(rcu::RcuCell::new(7));
    on_thread_with_late_destructor(move || {
        LATE.with(|late| *late.borrow_mut() = Some(ReadsOnDrop(cell)));
        drop(rcu::read());
    });
}

#[test]
fn many_short_lived_reader_threads_recycle_their_slots() {
    for _ in 0..200 {
        thread::spawn(|| {
            let _g = rcu::read();
        })
        .join()
        .unwrap();
    }
    rcu::synchronize();
}
