//! Regression (found by review): a nested blocking poll used to sleep while still an
//! online QSBR reader, so a grace period that the awaited event depends on never ended.
use aio_context::AioContext;
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn nested_block_on_waiting_for_call_rcu() {
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let ctx = AioContext::new().unwrap();
        let handle = ctx.handle();
        let (tx, rx) = mpsc::channel::<()>();
        ctx.schedule_oneshot(move || {
            let ctx = AioContext::current().unwrap();
            // e.g. device_del: wait (AIO_WAIT_WHILE-style) until the deferred drop ran.
            let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
            let f2 = flag.clone();
            rcu::call_rcu(move || {
                f2.store(true, std::sync::atomic::Ordering::Release);
                handle.notify();
            });
            while !flag.load(std::sync::atomic::Ordering::Acquire) {
                ctx.poll(true); // nested: depth 1, stays online while asleep
            }
            tx.send(()).unwrap();
        });
        ctx.poll(true);
        rx.recv().unwrap();
        done_tx.send(()).unwrap();
    });
    assert!(
        done_rx.recv_timeout(Duration::from_secs(5)).is_ok(),
        "deadlock: nested poll sleeps online"
    );
}

/// Invariant 7: a poll that may sleep inside a memb read section would hold up every
/// grace period while it sleeps. Debug builds report it (`rcu::assert_may_block`); a
/// non-blocking poll there is fine.
#[test]
fn a_blocking_poll_inside_a_read_section_is_reported_in_debug_builds() {
    std::thread::spawn(|| {
        let ctx = AioContext::new().unwrap();
        let timer = ctx.new_timer(|| {});
        timer.arm_in(Duration::from_millis(50));
        let guard = rcu::read();
        ctx.poll(false); // never sleeps: allowed (and consumes the arming's notification)
        let blocked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| ctx.poll(true)));
        drop(guard);
        assert_eq!(
            blocked.is_err(),
            rcu::BLOCKING_CHECKS,
            "a blocking poll inside rcu::read() must be reported in debug builds only"
        );
        timer.delete();
    })
    .join()
    .unwrap();
}
