//! Regression (found by review): a direct start or stop must not overtake a request
//! deferred earlier (the user's last `cont` wins).
use bottom_half::BhList;
use runstate::{Outcome, RunState, RunStateMachine};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[test]
fn later_cont_is_not_overtaken_by_earlier_deferred_stop() {
    let main_loop = BhList::new(|| {});
    let vm = RunStateMachine::new(&main_loop.scheduler());
    let me = vm.clone();
    let once = Arc::new(AtomicBool::new(true));
    vm.add_handler(0, move |running, _| {
        if running && once.swap(false, Ordering::Relaxed) {
            // werror=stop: the restart hits an error and stops the VM from inside the round.
            assert_eq!(me.stop(RunState::IoError).unwrap(), Outcome::Deferred);
        }
    });
    assert_eq!(vm.start().unwrap(), Outcome::Done); // request 1 (IoError) deferred
    // The monitor's `stop` (request 2) and `cont` (request 3) arrive before the main
    // loop runs the deferral BH: they queue behind request 1 instead of overtaking it.
    assert_eq!(vm.stop(RunState::Paused).unwrap(), Outcome::Deferred);
    assert_eq!(vm.start().unwrap(), Outcome::Deferred);
    main_loop.poll(); // requests 1, 2, 3 run in order
    assert_eq!(
        vm.state(),
        RunState::Running,
        "the user's later `cont` was undone by an earlier deferred stop"
    );
}
