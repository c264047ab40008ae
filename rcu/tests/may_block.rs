//! The debug check of invariant 7: a blocking wait (`rcu::assert_may_block`) inside a
//! read section or inside a `call_rcu` callback is reported; elsewhere it is silent.
//! (Regression guard for issue 14: a virtio reset drained I/O inside a vCPU's dispatch
//! guard, and a device's `Drop` drained I/O on the reclaim thread.)

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;

/// Whether `f` panicked with a message containing `needle`.
fn panics_with(f: impl FnOnce(), needle: &str) -> bool {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(()) => false,
        Err(payload) => {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            assert!(msg.contains(needle), "unexpected panic message: {msg}");
            true
        }
    }
}

#[test]
fn a_wait_outside_any_section_is_fine() {
    assert!(rcu::may_block());
    rcu::assert_may_block("test wait");
    let guard = rcu::read();
    drop(guard);
    assert!(rcu::may_block(), "the section ended");
    rcu::assert_may_block("test wait");
}

#[test]
fn a_wait_inside_a_read_section_is_reported() {
    let _outer = rcu::read();
    let _inner = rcu::read_mb(); // nested sections count too
    assert!(!rcu::may_block());
    if rcu::BLOCKING_CHECKS {
        assert!(panics_with(
            || rcu::assert_may_block("device drain"),
            "blocking wait `device drain` inside an RCU read section"
        ));
    } else {
        eprintln!("SKIPPED the panic check: release build (the check is debug-only)");
    }
}

#[test]
fn a_wait_inside_a_call_rcu_callback_is_reported() {
    let (tx, rx) = mpsc::channel();
    rcu::call_rcu(move || {
        let may = rcu::may_block();
        let reported = panics_with(
            || rcu::assert_may_block("drop drains I/O"),
            "blocking wait `drop drains I/O` inside a call_rcu callback",
        );
        // synchronize() in a callback would stall the reclaim thread a grace period.
        let sync_reported = panics_with(rcu::synchronize, "inside a call_rcu callback");
        tx.send((may, reported, sync_reported)).unwrap();
    });
    let (may, reported, sync_reported) = rx.recv().unwrap();
    assert!(!may, "a callback may not block");
    assert_eq!(reported, rcu::BLOCKING_CHECKS);
    assert_eq!(sync_reported, rcu::BLOCKING_CHECKS);
    // The flag ends with the callback: a later callback that does not wait is fine, and
    // the reclaim thread keeps running.
    let (tx, rx) = mpsc::channel();
    rcu::call_rcu(move || tx.send(()).unwrap());
    rcu::barrier();
    rx.recv().unwrap();
}

#[test]
fn a_qsbr_thread_may_block_between_its_sections() {
    let thread = rcu::QsbrThread::register().unwrap();
    assert!(
        rcu::may_block(),
        "QSBR sections end at quiescent states, not here"
    );
    drop(thread);
}
