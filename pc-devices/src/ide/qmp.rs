//! The monitor's side of IDE: `eject`, `blockdev-change-medium` and the IDE entries
//! of `query-block`, with QEMU 10's replies, errors and `DEVICE_TRAY_MOVED` events.

use std::path::PathBuf;

use block_node::{AttachOptions, BlockdevOptions, Cache, Claim, Driver, NodeRegistry};
use kvm_machine::Machine;
use kvm_machine::ide::IdeMedia;
use qmp::{Commands, QmpError, QmpEvents};
use runstate::RunStateMachine;
use serde_json::{Map, Value, json};

use super::{EventHook, IdeDisks, IdeDrive, State};

/// Registers `eject` and `blockdev-change-medium`, and puts the IDE devices' state into
/// `query-block` (replacing the block-node crate's command with one that adds
/// `removable`, `locked`, `tray_open` and the empty drives). Tray movements go out as
/// `DEVICE_TRAY_MOVED` on `events`.
///
/// # Errors
///
/// A command name already taken.
pub(crate) fn register_qmp(
    commands: &Commands,
    events: QmpEvents,
    machine: &Machine,
    nodes: &NodeRegistry,
    vm: &RunStateMachine,
    ide: &IdeDisks,
) -> qmp::Result<()> {
    let ctl = machine.ide().clone();
    let (state, n) = (ide.state.clone(), nodes.clone());
    commands.unregister("query-block");
    let c = ctl.clone();
    commands.register("query-block", move |args| {
        qmp::no_arguments(args)?;
        Ok(query_block(&c, &state.borrow(), n.query_block()))
    })?;

    let (state, c, ev) = (ide.state.clone(), ctl.clone(), events.clone());
    commands.register("eject", move |args| {
        check_keys(args, &["device", "id", "force"])?;
        let force = bool_arg(args, "force")?;
        let mut st = state.borrow_mut();
        let d = find(&mut st, args)?;
        let was_open = c.is_tray_open(&d.ctl_id) == Some(true);
        c.eject(&d.ctl_id, force).map_err(ide_error)?;
        d.claim = None;
        if !was_open {
            tray_moved(&ev, d, true);
        }
        Ok(json!({}))
    })?;

    let (state, c, n, vm) = (ide.state.clone(), ctl, nodes.clone(), vm.clone());
    commands.register("blockdev-change-medium", move |args| {
        check_keys(
            args,
            &[
                "device",
                "id",
                "filename",
                "format",
                "force",
                "read-only-mode",
            ],
        )?;
        let force = bool_arg(args, "force")?;
        let filename = str_arg(args, "filename")?
            .ok_or_else(|| QmpError::generic("Parameter 'filename' is missing"))?;
        let format = str_arg(args, "format")?;
        // A CD is read-only whatever the mode; only a request to write is refused.
        match str_arg(args, "read-only-mode")?.as_deref() {
            None | Some("retain" | "read-only") => {}
            Some("read-write") => {
                return Err(QmpError::generic(
                    "ide-cd: read-write media are not supported",
                ));
            }
            Some(m) => {
                return Err(QmpError::generic(format!(
                    "Parameter 'read-only-mode' does not accept value '{m}'"
                )));
            }
        }
        if let Some(f) = format.as_deref().filter(|f| *f != "raw") {
            return Err(QmpError::generic(format!("Image is not in {f} format")));
        }
        let mut st = state.borrow_mut();
        let hook = st.hook.clone();
        let d = find(&mut st, args)?;
        if d.media != IdeMedia::Cdrom {
            return Err(QmpError::generic(format!(
                "Device '{}' is not removable",
                d.name
            )));
        }
        // Open the new medium first, as QEMU: a bad file changes nothing.
        probe_medium(&n, &filename)?;
        // A locked tray refuses without `force` (and asks the guest), medium kept.
        if !force && c.is_locked(&d.ctl_id) == Some(true) {
            return Err(ide_error(
                c.eject(&d.ctl_id, false)
                    .err()
                    .unwrap_or(ide::Error::Locked(d.name.clone())),
            ));
        }
        let was_open = c.is_tray_open(&d.ctl_id) == Some(true);
        d.claim = None;
        let claim = match open_medium(&n, &vm, hook, d, &filename) {
            Ok(claim) => claim,
            Err(e) => {
                // The old disc is gone from the registry: take it out of the drive too,
                // so what the guest sees matches query-block (an open, empty tray).
                let _ = c.eject(&d.ctl_id, true);
                if !was_open {
                    tray_moved(&events, d, true);
                }
                return Err(e);
            }
        };
        c.change_medium(&d.ctl_id, claim.drive().clone(), true)
            .map_err(ide_error)?;
        d.claim = Some(claim);
        if !was_open {
            tray_moved(&events, d, true);
        }
        tray_moved(&events, d, false);
        Ok(json!({}))
    })?;
    Ok(())
}

/// Whether `filename` opens as an image (the registry's own checks: a regular file or
/// block device that can be read), through a node made and deleted at once.
fn probe_medium(nodes: &NodeRegistry, filename: &str) -> Result<(), QmpError> {
    const PROBE: &str = "#ide-medium-probe";
    let options = BlockdevOptions {
        node_name: Some(PROBE.into()),
        read_only: true,
        discard: false,
        cache: Cache::default(),
        driver: Driver::File {
            filename: PathBuf::from(filename),
        },
    };
    nodes
        .add(&options)
        .map_err(|e| QmpError::generic(e.to_string()))?;
    nodes
        .del(PROBE)
        .map_err(|e| QmpError::generic(e.to_string()))
}

/// Opens `filename` as `d`'s new disc: a drive under `d`'s name with its `-drive`'s
/// options, read-only, with the BLOCK_IO_ERROR `hook`.
fn open_medium(
    nodes: &NodeRegistry,
    vm: &RunStateMachine,
    hook: Option<EventHook>,
    d: &IdeDrive,
    filename: &str,
) -> Result<Claim, QmpError> {
    let mut options = d.options.clone();
    options.file = Some(PathBuf::from(filename));
    options.format = Some("raw".into());
    options.readonly = true;
    // The registry words its errors for the command line: drop the `-drive` prefix.
    let prefix = format!("-drive id={}: ", d.name);
    let qmp_error = |e: block_node::Error| {
        let text = e.to_string();
        QmpError::generic(text.strip_prefix(&prefix).unwrap_or(&text))
    };
    nodes.add_drive(&options, &d.name).map_err(qmp_error)?;
    let how = AttachOptions {
        qdev: Some(d.qdev.clone()),
        vm: Some(vm.clone()),
        read_only: true,
        ..AttachOptions::default()
    };
    let claim = nodes.attach(&d.name, how).map_err(qmp_error)?;
    if let Some(hook) = hook {
        claim.drive().set_event_hook(move |e| hook(e));
    }
    Ok(claim)
}

/// `query-block`: the IDE devices first (with their tray state), then the other
/// backends as the block-node registry lists them.
fn query_block(ctl: &ide::IdeController, state: &State, base: Value) -> Value {
    let Value::Array(mut rest) = base else {
        return base;
    };
    let mut list = Vec::new();
    for d in &state.drives {
        let node = d.claim.as_ref().map(|c| c.node_name().to_owned());
        let found = node.and_then(|node| {
            rest.iter()
                .position(|e| e["inserted"]["node-name"] == json!(node))
        });
        let mut entry = match found {
            Some(i) => rest.remove(i),
            None => json!({"io-status": "ok", "device": d.name, "type": "unknown"}),
        };
        let cd = d.media == IdeMedia::Cdrom;
        entry["qdev"] = json!(d.attached_id());
        entry["removable"] = json!(cd);
        entry["locked"] = json!(ctl.is_locked(&d.ctl_id).unwrap_or(false));
        if cd {
            entry["tray_open"] = json!(ctl.is_tray_open(&d.ctl_id).unwrap_or(false));
        }
        list.push(entry);
    }
    list.append(&mut rest);
    Value::Array(list)
}

fn tray_moved(events: &QmpEvents, d: &IdeDrive, open: bool) {
    events.emit(
        "DEVICE_TRAY_MOVED",
        Some(json!({"device": d.name, "tray-open": open, "id": d.attached_id()})),
    );
}

fn ide_error(e: ide::Error) -> QmpError {
    match e {
        ide::Error::NotFound(id) => QmpError::device_not_found(&id),
        e => QmpError::generic(e.to_string()),
    }
}

/// The device named by `device` (its drive name) or `id` (its qdev id or QOM path):
/// exactly one of them, as QEMU.
fn find<'a>(state: &'a mut State, args: &Map<String, Value>) -> Result<&'a mut IdeDrive, QmpError> {
    let device = str_arg(args, "device")?;
    let id = str_arg(args, "id")?;
    let (key, by_id) = match (device, id) {
        (Some(d), None) => (d, false),
        (None, Some(i)) => (i, true),
        _ => {
            return Err(QmpError::generic("Need exactly one of 'device' and 'id'"));
        }
    };
    state
        .drives
        .iter_mut()
        .find(|d| {
            if by_id {
                d.qdev_id.as_deref() == Some(key.as_str()) || d.qdev == key
            } else {
                d.name == key
            }
        })
        .ok_or_else(|| QmpError::device_not_found(&key))
}

fn check_keys(args: &Map<String, Value>, known: &[&str]) -> Result<(), QmpError> {
    match args.keys().find(|k| !known.contains(&k.as_str())) {
        Some(k) => Err(QmpError::generic(format!("Parameter '{k}' is unexpected"))),
        None => Ok(()),
    }
}

fn str_arg(args: &Map<String, Value>, key: &str) -> Result<Option<String>, QmpError> {
    match args.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(QmpError::generic(format!(
            "Invalid parameter type for '{key}', expected: string"
        ))),
    }
}

fn bool_arg(args: &Map<String, Value>, key: &str) -> Result<bool, QmpError> {
    match args.get(key) {
        None => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(QmpError::generic(format!(
            "Invalid parameter type for '{key}', expected: boolean"
        ))),
    }
}
