//! Seed 2075200b ("Fix VM state change handlers running out of order"), replayed step
//! by step as in the commit message, on our machine and on a naive one.
//!
//! - Step 0: the virtual IDE drive goes south: all future writes fail.
//! - Steps 1-4: a write error stops the VM; the handlers run; audio stops.
//! - Steps 5-7: the user continues the VM; the handlers run with running = true.
//! - Steps 8-11: the IDE DMA restart handler comes first, fails again and stops the VM;
//!   with reentrant notification, the stop round runs *inside* the start round: audio
//!   stops (but it is not running).
//! - Steps 12-13: the start round resumes: audio starts. Oopsie: audio runs in a
//!   stopped VM.

use std::sync::{Arc, Mutex};

use bottom_half::BhList;
use runstate::{Event, RunState, RunStateMachine};

/// What the audio-like handler sees, in order, and its final state.
#[derive(Default)]
struct Audio {
    seen: Vec<(bool, RunState)>,
    playing: bool,
    errors: Vec<String>,
}

impl Audio {
    fn on_change(&mut self, running: bool, state: RunState) {
        if running == self.playing {
            self.errors.push(format!(
                "told running={running} while already {}",
                if self.playing { "playing" } else { "stopped" }
            ));
        }
        self.playing = running;
        self.seen.push((running, state));
    }
}

#[test]
fn a_restart_that_stops_the_vm_is_delivered_after_the_round() {
    let main_loop = BhList::new(|| {});
    let vm = RunStateMachine::new(&main_loop.scheduler());
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev = events.clone();
    vm.set_event_hook(move |e| ev.lock().unwrap().push(e));
    let audio = Arc::new(Mutex::new(Audio::default()));

    // ide_dma_restart_cb, registered first (comes first on start): when the VM starts,
    // restart the failed DMA, which fails again: werror=stop.
    let drive_broken = Arc::new(Mutex::new(false));
    let (vm2, broken) = (vm.clone(), drive_broken.clone());
    vm.add_handler(0, move |running, _| {
        if running && *broken.lock().unwrap() {
            vm2.stop(RunState::IoError).unwrap();
        }
    });
    let a = audio.clone();
    vm.add_handler(0, move |running, state| {
        a.lock().unwrap().on_change(running, state)
    });

    vm.start().unwrap();
    main_loop.poll();
    // 0-4: the drive goes south, a write error stops the VM.
    *drive_broken.lock().unwrap() = true;
    vm.stop(RunState::IoError).unwrap();
    assert!(!audio.lock().unwrap().playing);
    // 5-7: the user continues.
    vm.start().unwrap();
    // 8: the restart handler asked to stop from inside the round: deferred.
    assert_eq!(vm.state(), RunState::Running, "the round completes first");
    assert!(audio.lock().unwrap().playing);
    // The main loop runs the deferred stop after the round.
    assert!(main_loop.poll());
    assert_eq!(vm.state(), RunState::IoError);
    let audio = audio.lock().unwrap();
    assert!(!audio.playing, "audio must end stopped in a stopped VM");
    assert!(audio.errors.is_empty(), "{:?}", audio.errors);
    assert_eq!(
        audio.seen,
        [
            (true, RunState::Running),
            (false, RunState::IoError),
            (true, RunState::Running),
            (false, RunState::IoError)
        ],
        "every transition, in order"
    );
    assert_eq!(
        *events.lock().unwrap(),
        [Event::Resume, Event::Stop, Event::Resume, Event::Stop]
    );
}

/// QEMU before the fix: notification re-entered from a handler. Kept here to show the
/// test above would catch it.
type NaiveHandler = Box<dyn FnMut(&mut NaiveVm, bool)>;

struct NaiveVm {
    running: bool,
    handlers: Vec<NaiveHandler>,
}

impl NaiveVm {
    fn notify(&mut self, running: bool) {
        // vm_state_notify: walk the list, calling each handler, which may call vm_stop.
        for i in 0..self.handlers.len() {
            let mut h = std::mem::replace(&mut self.handlers[i], Box::new(|_, _| {}));
            h(self, running);
            self.handlers[i] = h;
        }
    }
    fn stop(&mut self) {
        if self.running {
            self.running = false;
            self.notify(false);
        }
    }
    fn start(&mut self) {
        if !self.running {
            self.running = true;
            self.notify(true);
        }
    }
}

#[test]
fn naive_reentrant_notification_leaves_audio_playing_in_a_stopped_vm() {
    let audio = Arc::new(Mutex::new(Audio::default()));
    let a = audio.clone();
    let mut vm = NaiveVm {
        running: false,
        handlers: vec![
            Box::new(|vm, running| {
                if running {
                    vm.stop(); // the restart fails again: re-entrant vm_stop
                }
            }),
            Box::new(move |_, running| a.lock().unwrap().on_change(running, RunState::Running)),
        ],
    };
    vm.start();
    assert!(!vm.running, "the VM ends stopped");
    let audio = audio.lock().unwrap();
    assert!(
        audio.playing,
        "the naive design leaves audio playing: the seed's bug"
    );
    assert!(
        !audio.errors.is_empty(),
        "and tells audio to stop while it was not playing"
    );
}
