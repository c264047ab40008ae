//! Regression (found by review): an event hook that reads the state while a stop is
//! posted from another thread must not deadlock (lock order core, stop_request, events).
use bottom_half::BhList;
use runstate::{Event, RunState, RunStateMachine};
use std::sync::mpsc;
use std::time::Duration;

#[test]
fn event_hook_reading_state_does_not_deadlock_with_start() {
    let main_loop = BhList::new(|| {});
    let vm = RunStateMachine::new(&main_loop.scheduler());
    let me = vm.clone();
    vm.set_event_hook(move |_e: Event| {
        std::thread::sleep(Duration::from_millis(50));
        let _ = me.state(); // e.g. a QMP event that reports the status
    });
    vm.start().unwrap();
    vm.stop(RunState::Paused).unwrap();
    let (tx, rx) = mpsc::channel();
    let a = vm.clone();
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        // Posts a stop and emits BLOCK_IO_ERROR under the request lock.
        a.request_stop_with(RunState::IoError, || {
            a.emit_event(Event::Other("BLOCK_IO_ERROR".into()))
        });
        tx2.send(()).unwrap();
    });
    std::thread::sleep(Duration::from_millis(10));
    let b = vm.clone();
    std::thread::spawn(move || {
        let _ = b.start(); // holds core, waits for stop_request
        tx.send(()).unwrap();
    });
    for _ in 0..2 {
        assert!(rx.recv_timeout(Duration::from_secs(3)).is_ok(), "deadlock");
    }
}
