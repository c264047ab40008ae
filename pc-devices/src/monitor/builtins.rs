//! The VMM's built-in QMP commands, registered into the [`qmp`] crate's table:
//! `query-status`, `stop`, `cont`, `system_reset`, `quit` (the protocol's own
//! `qmp_capabilities`, `query-version` and `query-commands` come with [`qmp::Server`]).

use std::rc::Rc;

use qmp::{AfterReply, Commands, QmpError, QmpResult, no_arguments};
use runstate::{Event, RunState, RunStateMachine};
use serde_json::{Value, json};

use super::MachineControl;

/// `query-status`'s return value (QEMU 10's `StatusInfo`).
pub(crate) fn status(vm: &RunStateMachine) -> Value {
    let state = vm.state();
    json!({"status": state.qmp_name(), "running": state == RunState::Running})
}

/// QEMU's `qmp_cont`.
fn cont(vm: &RunStateMachine) -> QmpResult {
    match vm.state() {
        // QEMU's runstate_needs_reset.
        RunState::InternalError | RunState::Shutdown => {
            return Err(QmpError::generic(
                "Resetting the Virtual Machine is required",
            ));
        }
        RunState::Suspended => return Ok(json!({})),
        RunState::FinishMigrate => {
            return Err(QmpError::generic("Migration is not finalized yet"));
        }
        _ => {}
    }
    vm.start()
        .map(|_| json!({}))
        .map_err(|e| QmpError::generic(e.to_string()))
}

/// Registers the built-in commands. `quit` defers [`MachineControl::quit`] to
/// `after_reply`, so its reply is on its way before the VMM starts to exit.
pub(crate) fn register_builtins(
    commands: &Commands,
    vm: &RunStateMachine,
    machine: &Rc<dyn MachineControl>,
    after_reply: &AfterReply,
) -> qmp::Result<()> {
    let v = vm.clone();
    commands.register("query-status", move |args| {
        no_arguments(args)?;
        Ok(status(&v))
    })?;
    let v = vm.clone();
    commands.register("stop", move |args| {
        no_arguments(args)?;
        if v.state() == RunState::InMigrate {
            return Ok(json!({})); // QEMU: clears autostart; nothing runs yet
        }
        v.stop(RunState::Paused)
            .map(|_| json!({}))
            .map_err(|e| QmpError::generic(e.to_string()))
    })?;
    let v = vm.clone();
    commands.register("cont", move |args| {
        no_arguments(args)?;
        cont(&v)
    })?;
    let (v, m) = (vm.clone(), machine.clone());
    commands.register("system_reset", move |args| {
        no_arguments(args)?;
        m.system_reset();
        v.emit_event(Event::Reset { guest: false });
        // QEMU's main loop: a VM that was not running is in prelaunch after a reset,
        // so `cont` starts it (also out of `shutdown`).
        let state = v.state();
        if !matches!(
            state,
            RunState::Running | RunState::InMigrate | RunState::FinishMigrate
        ) {
            let _ = v.set_state(RunState::Prelaunch);
        }
        Ok(json!({}))
    })?;
    let (v, m, after) = (vm.clone(), machine.clone(), after_reply.clone());
    commands.register("quit", move |args| {
        no_arguments(args)?;
        v.emit_event(Event::Shutdown {
            guest: false,
            reason: "host-qmp-quit".into(),
        });
        let m = m.clone();
        after.push(move || m.quit());
        Ok(json!({}))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bottom_half::BhList;
    use std::cell::Cell;

    /// Counts resets and quits.
    struct Fake(Rc<Cell<u32>>, Rc<Cell<u32>>);
    impl MachineControl for Fake {
        fn system_reset(&self) {
            self.0.set(self.0.get() + 1);
        }
        fn quit(&self) {
            self.1.set(self.1.get() + 1);
        }
    }

    #[test]
    fn run_state_commands() {
        let bhs = BhList::new(|| {});
        let vm = RunStateMachine::new(&bhs.scheduler());
        let (resets, quits) = (Rc::new(Cell::new(0)), Rc::new(Cell::new(0)));
        let machine: Rc<dyn MachineControl> = Rc::new(Fake(resets.clone(), quits.clone()));
        let (c, after) = (Commands::new(), AfterReply::default());
        register_builtins(&c, &vm, &machine, &after).unwrap();
        let run = |name: &str, args: Value| {
            let Value::Object(args) = args else {
                unreachable!()
            };
            c.call(name, &args)
                .map_err(|e| format!("{}: {}", e.class.as_str(), e.desc))
        };
        let q = || run("query-status", json!({}));
        assert_eq!(
            q().unwrap(),
            json!({"status": "prelaunch", "running": false})
        );
        run("cont", json!({})).unwrap();
        assert!(vm.is_running());
        let err = run("stop", json!({"x": 1})).unwrap_err();
        assert_eq!(err, "GenericError: Parameter 'x' is unexpected");
        run("stop", json!({})).unwrap();
        assert_eq!(q().unwrap(), json!({"status": "paused", "running": false}));
        run("system_reset", json!({})).unwrap();
        assert_eq!((resets.get(), vm.state()), (1, RunState::Prelaunch));
        vm.start().unwrap();
        vm.stop(RunState::Shutdown).unwrap();
        let err = run("cont", json!({})).unwrap_err();
        assert_eq!(
            err,
            "GenericError: Resetting the Virtual Machine is required"
        );
        // `quit` exits only once its reply has been sent.
        run("quit", json!({})).unwrap();
        assert_eq!(quits.get(), 0);
        after.run();
        assert_eq!(quits.get(), 1);
    }
}
