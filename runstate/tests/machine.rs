//! Transitions, priorities, prepare callbacks, handler removal, posted stops and events.

use std::sync::{Arc, Mutex};
use std::thread;

use bottom_half::BhList;
use runstate::{Error, Event, Outcome, RunState, RunStateMachine};

fn machine() -> (BhList, RunStateMachine, Arc<Mutex<Vec<Event>>>) {
    let main_loop = BhList::new(|| {});
    let vm = RunStateMachine::new(&main_loop.scheduler());
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    vm.set_event_hook(move |e| ev.lock().unwrap().push(e));
    (main_loop, vm, events)
}

#[test]
fn the_transition_table_is_enforced() {
    let (_l, vm, _e) = machine();
    assert_eq!(vm.state(), RunState::Prelaunch);
    assert_eq!(
        vm.stop(RunState::Paused),
        Ok(Outcome::Unchanged),
        "stopping a stopped VM does nothing"
    );
    vm.set_state(RunState::InMigrate).unwrap();
    assert_eq!(
        vm.set_state(RunState::SaveVm),
        Err(Error::InvalidTransition {
            from: RunState::InMigrate,
            to: RunState::SaveVm
        })
    );
    vm.start().unwrap();
    assert_eq!(
        vm.stop(RunState::Running),
        Err(Error::InvalidTransition {
            from: RunState::Running,
            to: RunState::Running
        })
    );
    assert_eq!(vm.stop(RunState::RestoreVm).unwrap(), Outcome::Done);
    assert_eq!(vm.start(), Ok(Outcome::Done));
    vm.stop(RunState::Shutdown).unwrap();
    assert!(
        matches!(vm.start(), Err(Error::InvalidTransition { .. })),
        "shutdown needs a reset first"
    );
    vm.set_state(RunState::Prelaunch).unwrap();
    assert_eq!(vm.start(), Ok(Outcome::Done));
    assert_eq!(vm.start(), Ok(Outcome::Unchanged));
    // Every listed state has a name and can stay where it is.
    for s in RunState::ALL {
        assert!(s.can_transition_to(s));
        assert!(!s.qmp_name().is_empty());
    }
}

#[test]
fn start_runs_ascending_priorities_and_stop_descending_prepare_first() {
    let (_l, vm, _e) = machine();
    let log = Arc::new(Mutex::new(Vec::new()));
    for (prio, name) in [(2, "disk"), (0, "controller"), (1, "bus")] {
        let (l1, l2) = (log.clone(), log.clone());
        vm.add_handler_with_prepare(
            prio,
            move |running, _| l1.lock().unwrap().push(format!("prepare {name} {running}")),
            move |running, _| l2.lock().unwrap().push(format!("{name} {running}")),
        );
    }
    vm.start().unwrap();
    vm.stop(RunState::Paused).unwrap();
    let log = log.lock().unwrap();
    assert_eq!(
        *log,
        [
            "prepare controller true",
            "prepare bus true",
            "prepare disk true",
            "controller true",
            "bus true",
            "disk true",
            "prepare disk false",
            "prepare bus false",
            "prepare controller false",
            "disk false",
            "bus false",
            "controller false",
        ]
    );
}

#[test]
fn a_handler_may_remove_itself_and_others_during_notification() {
    let (_l, vm, _e) = machine();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let ids: Arc<Mutex<Vec<runstate::HandlerId>>> = Arc::default();
    for name in ["a", "b", "c"] {
        let (c, vm2, ids2) = (calls.clone(), vm.clone(), ids.clone());
        let id = vm.add_handler(0, move |_, _| {
            c.lock().unwrap().push(name);
            if name == "a" {
                let ids = ids2.lock().unwrap().clone();
                assert!(vm2.remove_handler(ids[0]), "removes itself");
                assert!(
                    vm2.remove_handler(ids[1]),
                    "and the next one, before it runs"
                );
            }
        });
        ids.lock().unwrap().push(id);
    }
    vm.start().unwrap();
    vm.stop(RunState::Paused).unwrap();
    assert_eq!(*calls.lock().unwrap(), ["a", "c", "c"]);
}

#[test]
fn a_posted_stop_runs_in_the_main_loop_after_its_error_event() {
    let (main_loop, vm, events) = machine();
    vm.start().unwrap();
    let (vm2, ev) = (vm.clone(), events.clone());
    thread::spawn(move || {
        vm2.request_stop_with(RunState::IoError, || {
            ev.lock()
                .unwrap()
                .push(Event::Other("BLOCK_IO_ERROR".into()))
        })
    })
    .join()
    .unwrap();
    assert_eq!(
        vm.state(),
        RunState::Running,
        "posted, not performed by the iothread"
    );
    assert!(main_loop.poll());
    assert_eq!(vm.state(), RunState::IoError);
    assert_eq!(
        *events.lock().unwrap(),
        [
            Event::Resume,
            Event::Other("BLOCK_IO_ERROR".into()),
            Event::Stop
        ]
    );
}

#[test]
fn cont_racing_a_posted_stop_still_yields_stop_then_resume() {
    let (main_loop, vm, events) = machine();
    vm.start().unwrap();
    let ev = events.clone();
    vm.request_stop_with(RunState::IoError, || {
        ev.lock()
            .unwrap()
            .push(Event::Other("BLOCK_IO_ERROR".into()))
    });
    // `cont` arrives before the main loop performed the stop.
    assert_eq!(vm.start(), Ok(Outcome::Unchanged));
    main_loop.poll();
    assert_eq!(vm.state(), RunState::Running);
    assert_eq!(
        *events.lock().unwrap(),
        [
            Event::Resume,
            Event::Other("BLOCK_IO_ERROR".into()),
            Event::Stop,
            Event::Resume
        ]
    );
}

#[test]
fn requests_from_many_threads_during_rounds_are_serialized() {
    let (main_loop, vm, _e) = machine();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    vm.add_handler(0, move |running, _| {
        s.lock().unwrap().push(running);
        std::thread::yield_now();
    });
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let vm = vm.clone();
            thread::spawn(move || {
                for _ in 0..50 {
                    if i % 2 == 0 {
                        let _ = vm.start();
                    } else {
                        let _ = vm.stop(RunState::Paused);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    while main_loop.poll() {}
    let seen = seen.lock().unwrap();
    // Rounds never overlap and alternate: start, stop, start, ...
    for pair in seen.windows(2) {
        assert_ne!(
            pair[0], pair[1],
            "two rounds of the same kind in a row: {seen:?}"
        );
    }
    assert_eq!(seen.last().copied() == Some(true), vm.is_running());
}
