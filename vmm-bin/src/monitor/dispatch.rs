//! Command dispatch (QEMU's `monitor_qmp_dispatch` and `qmp_dispatch`) and the built-in
//! commands: `qmp_capabilities`, `query-status`, `stop`, `cont`, `system_reset`, `quit`,
//! `query-version`, `query-commands`.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use runstate::{Event, RunState, RunStateMachine};
use serde_json::{Map, Value, json};

use super::commands::{Commands, no_arguments};
use super::protocol::{ErrorClass, QmpError, QmpResult, Version, check_request};
use super::{MachineControl, Result};

/// What a client has negotiated.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Session {
    /// `qmp_capabilities` succeeded: commands and events are on.
    pub(crate) negotiated: bool,
    /// The `oob` capability is enabled (`exec-oob` accepted).
    pub(crate) oob: bool,
}

const NEGOTIATE_FIRST: &str = "Expecting capabilities negotiation with 'qmp_capabilities'";

/// Runs one parsed request (its `id` already taken out) for a client in `session`.
pub(crate) fn dispatch(commands: &Commands, session: &mut Session, request: Value) -> QmpResult {
    let request = check_request(request, session.oob)?;
    if request.command == "qmp_capabilities" {
        if session.negotiated {
            return Err(QmpError::new(
                ErrorClass::CommandNotFound,
                "Capabilities negotiation is already complete, command ignored",
            ));
        }
        session.oob = capabilities(&request.arguments)?;
        session.negotiated = true;
        return Ok(json!({}));
    }
    if !session.negotiated {
        // QEMU rewrites every CommandNotFound in negotiation mode to this text.
        return Err(QmpError::new(ErrorClass::CommandNotFound, NEGOTIATE_FIRST));
    }
    let Some((handler, allow_oob)) = commands.get(&request.command) else {
        return Err(QmpError::new(
            ErrorClass::CommandNotFound,
            format!("The command {} has not been found", request.command),
        ));
    };
    if request.oob && !allow_oob {
        return Err(QmpError::generic(format!(
            "The command {} does not support OOB",
            request.command
        )));
    }
    handler(&request.arguments)
}

/// `qmp_capabilities`'s arguments: `{"enable": ["oob"]}` or nothing. Returns whether
/// OOB is enabled.
fn capabilities(args: &Map<String, Value>) -> std::result::Result<bool, QmpError> {
    let mut oob = false;
    for (key, value) in args {
        if key != "enable" {
            return Err(QmpError::generic(format!(
                "Parameter '{key}' is unexpected"
            )));
        }
        let Value::Array(caps) = value else {
            return Err(QmpError::generic(
                "Invalid parameter type for 'enable', expected: array",
            ));
        };
        for cap in caps {
            match cap.as_str() {
                Some("oob") => oob = true,
                Some(other) => {
                    return Err(QmpError::generic(format!(
                        "Parameter 'enable' does not accept value '{other}'"
                    )));
                }
                None => {
                    return Err(QmpError::generic(
                        "Invalid parameter type for 'enable[0]', expected: string",
                    ));
                }
            }
        }
    }
    Ok(oob)
}

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

/// Registers the built-in commands. `quit_requested` is set by `quit`; the server calls
/// [`MachineControl::quit`] after the reply is on its way.
pub(crate) fn register_builtins(
    commands: &Commands,
    vm: &RunStateMachine,
    machine: &Rc<dyn MachineControl>,
    version: &Rc<RefCell<Version>>,
    quit_requested: &Rc<Cell<bool>>,
) -> Result<()> {
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
    let (v, q) = (vm.clone(), quit_requested.clone());
    commands.register("quit", move |args| {
        no_arguments(args)?;
        v.emit_event(Event::Shutdown {
            guest: false,
            reason: "host-qmp-quit".into(),
        });
        q.set(true);
        Ok(json!({}))
    })?;
    let ver = version.clone();
    commands.register("query-version", move |args| {
        no_arguments(args)?;
        Ok(ver.borrow().to_value())
    })?;
    let table = commands.downgrade();
    commands.register("query-commands", move |args| {
        no_arguments(args)?;
        let mut names = table.names();
        names.push("qmp_capabilities".into());
        Ok(Value::Array(
            names.into_iter().map(|n| json!({"name": n})).collect(),
        ))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bottom_half::BhList;

    struct Fake(Rc<Cell<u32>>);
    impl MachineControl for Fake {
        fn system_reset(&self) {
            self.0.set(self.0.get() + 1);
        }
        fn quit(&self) {}
    }

    fn setup() -> (
        Commands,
        RunStateMachine,
        Rc<Cell<u32>>,
        Rc<Cell<bool>>,
        BhList,
    ) {
        let bhs = BhList::new(|| {});
        let vm = RunStateMachine::new(&bhs.scheduler());
        let resets = Rc::new(Cell::new(0));
        let machine: Rc<dyn MachineControl> = Rc::new(Fake(resets.clone()));
        let quit = Rc::new(Cell::new(false));
        let c = Commands::new();
        let version = Rc::new(RefCell::new(Version::default()));
        register_builtins(&c, &vm, &machine, &version, &quit).unwrap();
        (c, vm, resets, quit, bhs)
    }

    fn run(c: &Commands, s: &mut Session, v: Value) -> std::result::Result<Value, String> {
        dispatch(c, s, v).map_err(|e| format!("{}: {}", e.class.as_str(), e.desc))
    }

    #[test]
    fn negotiation() {
        let (c, _vm, _, _, _bhs) = setup();
        let mut s = Session::default();
        let err = run(&c, &mut s, json!({"execute": "query-status"})).unwrap_err();
        assert_eq!(err, format!("CommandNotFound: {NEGOTIATE_FIRST}"));
        // Envelope errors are reported as they are.
        let err = run(&c, &mut s, json!({"execute": 1})).unwrap_err();
        assert!(err.starts_with("GenericError: QMP input member 'execute'"));
        let err = run(
            &c,
            &mut s,
            json!({"execute": "qmp_capabilities", "arguments": {"enable": ["foo"]}}),
        )
        .unwrap_err();
        assert_eq!(
            err,
            "GenericError: Parameter 'enable' does not accept value 'foo'"
        );
        run(
            &c,
            &mut s,
            json!({"execute": "qmp_capabilities", "arguments": {"enable": ["oob"]}}),
        )
        .unwrap();
        assert_eq!(
            s,
            Session {
                negotiated: true,
                oob: true
            }
        );
        let err = run(&c, &mut s, json!({"execute": "qmp_capabilities"})).unwrap_err();
        assert_eq!(
            err,
            "CommandNotFound: Capabilities negotiation is already complete, command ignored"
        );
        let err = run(&c, &mut s, json!({"exec-oob": "query-status"})).unwrap_err();
        assert_eq!(
            err,
            "GenericError: The command query-status does not support OOB"
        );
        let err = run(&c, &mut s, json!({"execute": "nope"})).unwrap_err();
        assert_eq!(err, "CommandNotFound: The command nope has not been found");
    }

    #[test]
    fn run_state_commands() {
        let (c, vm, resets, quit, _bhs) = setup();
        let mut s = Session {
            negotiated: true,
            oob: false,
        };
        let q = |c: &Commands, s: &mut Session| run(c, s, json!({"execute": "query-status"}));
        assert_eq!(
            q(&c, &mut s).unwrap(),
            json!({"status": "prelaunch", "running": false})
        );
        run(&c, &mut s, json!({"execute": "cont"})).unwrap();
        assert!(vm.is_running());
        let err = run(
            &c,
            &mut s,
            json!({"execute": "stop", "arguments": {"x": 1}}),
        )
        .unwrap_err();
        assert_eq!(err, "GenericError: Parameter 'x' is unexpected");
        run(&c, &mut s, json!({"execute": "stop"})).unwrap();
        assert_eq!(
            q(&c, &mut s).unwrap(),
            json!({"status": "paused", "running": false})
        );
        run(&c, &mut s, json!({"execute": "system_reset"})).unwrap();
        assert_eq!((resets.get(), vm.state()), (1, RunState::Prelaunch));
        vm.start().unwrap();
        vm.stop(RunState::Shutdown).unwrap();
        let err = run(&c, &mut s, json!({"execute": "cont"})).unwrap_err();
        assert_eq!(
            err,
            "GenericError: Resetting the Virtual Machine is required"
        );
        run(&c, &mut s, json!({"execute": "quit"})).unwrap();
        assert!(quit.get());
        let names = run(&c, &mut s, json!({"execute": "query-commands"})).unwrap();
        assert!(
            names
                .as_array()
                .unwrap()
                .contains(&json!({"name": "qmp_capabilities"}))
        );
        assert!(
            names
                .as_array()
                .unwrap()
                .contains(&json!({"name": "system_reset"}))
        );
    }
}
