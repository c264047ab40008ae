//! Regression (found by review): synchronize() called from a destructor during an
//! unrelated unwind must return (it once never counted its grace periods).
use std::sync::mpsc;
use std::time::Duration;

struct SyncOnDrop;
impl Drop for SyncOnDrop {
    fn drop(&mut self) {
        rcu::synchronize();
    }
}

#[test]
fn synchronize_during_unwind_returns() {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = std::panic::catch_unwind(|| {
            let _d = SyncOnDrop;
            panic!("boom");
        });
        tx.send(()).unwrap();
    });
    assert!(
        rx.recv_timeout(Duration::from_secs(5)).is_ok(),
        "rcu::synchronize() inside a Drop during unwinding did not return within 5 s"
    );
}
