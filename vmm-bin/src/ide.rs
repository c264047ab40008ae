//! IDE on the command line and the monitor: `-hda`..`-hdd`, `-cdrom` and
//! `-drive if=ide` become `ide-hd`/`ide-cd` devices on the machine's PIIX3 IDE
//! controller (kvm-machine's `ide` module: 00:01.1, always present), and the QMP
//! commands `eject`, `blockdev-change-medium` and the IDE side of `query-block`.
//!
//! A device sits on a block-node drive ([`Claim`]); ejecting drops the claim (the
//! `-drive`'s nodes go with it, as QEMU deletes an ejected medium's nodes), a new medium
//! is a new drive under the same name with the old one's options (error policy,
//! cache). `-device ide-hd|ide-cd` calls [`attach_ide_device`] the same way.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use block_dma::{BlockIoError, Drive};
use block_node::drive::DriveOptions;
use block_node::{AttachOptions, BlockdevOptions, Cache, Claim, Driver, NodeRegistry};
use kvm_machine::Machine;
use kvm_machine::ide::{IdeMedia, ide_boot_path};
use pc_platform::fw_cfg::bootorder::BootOrder;
use qmp::{Commands, QmpError, QmpEvents};
use runstate::RunStateMachine;
use serde_json::{Map, Value, json};
use tracing::warn;

/// The BLOCK_IO_ERROR hook every IDE drive gets (also those inserted later).
type EventHook = Arc<dyn Fn(&BlockIoError) + Send + Sync>;

/// One IDE device and what it holds.
struct IdeDrive {
    /// The name `query-block` and `eject`'s `device` use: the drive id.
    name: String,
    /// The controller's id for it.
    ctl_id: String,
    /// `-device`'s `id=` (QMP `id` names it), if any.
    qdev_id: Option<String>,
    /// Its QOM path (`query-block`'s `qdev`).
    qdev: String,
    media: IdeMedia,
    /// What a new medium is opened with (the `-drive`'s options).
    options: DriveOptions,
    /// The medium's drive (none: an empty CD drive).
    claim: Option<Claim>,
}

#[derive(Default)]
struct State {
    drives: Vec<IdeDrive>,
    hook: Option<EventHook>,
}

/// The machine's IDE devices (cheap to clone; main thread only).
#[derive(Clone, Default)]
pub struct IdeDisks {
    state: Rc<RefCell<State>>,
}

/// One IDE device to attach ([`attach_ide_device`]).
pub struct IdeDeviceSpec<'a> {
    /// 0 (primary, `ide.0`) or 1 (secondary, `ide.1`).
    pub bus: usize,
    /// 0 (master) or 1 (slave).
    pub unit: usize,
    /// `ide-hd` or `ide-cd`.
    pub media: IdeMedia,
    /// A `-drive` id or a `-blockdev` node name; `None`: an empty CD drive.
    pub drive: Option<&'a str>,
    /// The name of an empty drive (`query-block`'s `device`) when `drive` is `None`.
    pub empty_name: &'a str,
    /// `-device`'s `id=`.
    pub qdev_id: Option<&'a str>,
    /// The options a new medium is opened with (`blockdev-change-medium`).
    pub options: DriveOptions,
    /// Firmware boot priority (negative: none).
    pub bootindex: i32,
}

/// Attaches an `ide-hd`/`ide-cd` to `machine`'s IDE controller on its drive from
/// `nodes`, adds its `bootindex` to `order`, and records it in `ide` for the monitor.
/// The entry point for `-drive if=ide` and for a `-device ide-hd|ide-cd` factory.
///
/// # Errors
///
/// A drive that does not exist or is in use, a place taken, a bootindex used twice.
pub fn attach_ide_device(
    machine: &Machine,
    nodes: &NodeRegistry,
    vm: &RunStateMachine,
    ide: &IdeDisks,
    spec: IdeDeviceSpec<'_>,
    order: &mut BootOrder,
) -> Result<(), String> {
    let driver = match spec.media {
        IdeMedia::Disk => "ide-hd",
        IdeMedia::Cdrom => "ide-cd",
    };
    let mut state = ide.state.borrow_mut();
    // QEMU's QOM paths: `/machine/peripheral/ID` for a -device with an id, else an
    // unattached device (QEMU 10's pc numbers its first IDE device 4).
    let qdev = match spec.qdev_id {
        Some(id) => format!("/machine/peripheral/{id}"),
        None => format!("/machine/unattached/device[{}]", 4 + state.drives.len()),
    };
    let claim = match spec.drive {
        Some(reference) => {
            let how = AttachOptions {
                qdev: Some(qdev.clone()),
                vm: Some(vm.clone()),
                read_only: spec.media == IdeMedia::Cdrom,
                ..AttachOptions::default()
            };
            Some(nodes.attach(reference, how).map_err(|e| match e {
                block_node::Error::NotFound(r) => {
                    format!("-device {driver}: Property '{driver}.drive' can't find value '{r}'")
                }
                e => format!("-device {driver},drive={reference}: {e}"),
            })?)
        }
        None => None,
    };
    let name = claim
        .as_ref()
        .map_or(spec.empty_name, |c| c.device())
        .to_owned();
    let ctl_id = spec
        .qdev_id
        .map_or_else(|| name.clone(), str::to_owned)
        .to_owned();
    let drive = claim.as_ref().map(|c| c.drive().clone());
    if let (Some(drive), Some(hook)) = (&drive, &state.hook) {
        let hook = hook.clone();
        drive.set_event_hook(move |e| hook(e));
    }
    kvm_machine::ide::attach(machine, spec.bus, spec.unit, &ctl_id, spec.media, drive)
        .map_err(|e| format!("-device {driver}: {e}"))?;
    order
        .add(spec.bootindex, ide_boot_path(spec.bus, spec.unit))
        .map_err(|e| format!("-device {driver}: {e}"))?;
    state.drives.push(IdeDrive {
        name,
        ctl_id,
        qdev_id: spec.qdev_id.map(str::to_owned),
        qdev,
        media: spec.media,
        options: spec.options,
        claim,
    });
    Ok(())
}

/// `-drive if=ide` (and `-hda`..`-hdd`, `-cdrom`): the device QEMU makes for it, named
/// `id` (`ide<bus>-hd<unit>`/`ide<bus>-cd<unit>` by default, see [`drive_name`]).
///
/// # Errors
///
/// A bus past 1 (QEMU's words), or [`attach_ide_device`]'s.
pub fn attach_drive(
    machine: &Machine,
    nodes: &NodeRegistry,
    vm: &RunStateMachine,
    ide: &IdeDisks,
    drive: &DriveOptions,
    id: &str,
    order: &mut BootOrder,
) -> Result<(), String> {
    let media = if drive.cdrom {
        IdeMedia::Cdrom
    } else {
        IdeMedia::Disk
    };
    let empty = drive.cdrom && drive.file.is_none();
    let spec = IdeDeviceSpec {
        bus: drive.bus as usize,
        unit: drive.unit as usize,
        media,
        drive: (!empty).then_some(id),
        empty_name: id,
        qdev_id: None,
        options: drive.clone(),
        bootindex: -1,
    };
    attach_ide_device(machine, nodes, vm, ide, spec, order)
}

/// Refuses an `if=ide` drive the `pc` machine cannot take, in QEMU 10's words: a
/// place past its two channels, a disk without an image (only a CD drive may be empty).
///
/// # Errors
///
/// The message for a bus past 1 or an empty disk.
pub fn check_drive(drive: &DriveOptions) -> Result<(), String> {
    if drive.bus > 1 {
        return Err(format!(
            "-drive if=ide: machine type does not support if=ide,bus={},unit={}",
            drive.bus, drive.unit
        ));
    }
    if !drive.cdrom && drive.file.is_none() {
        return Err("-drive if=ide: Device needs media, but drive is empty".into());
    }
    Ok(())
}

/// QEMU's name for an `if=ide` drive without `id=`: `ide<bus>-hd<unit>` or
/// `ide<bus>-cd<unit>`.
pub fn drive_name(drive: &DriveOptions) -> String {
    let kind = if drive.cdrom { "cd" } else { "hd" };
    format!("ide{}-{kind}{}", drive.bus, drive.unit)
}

/// Whether `drive` is an empty CD drive (`-drive if=ide,media=cdrom` without `file=`):
/// it has no node.
pub fn is_empty_cdrom(drive: &DriveOptions) -> bool {
    drive.cdrom && drive.file.is_none()
}

impl IdeDisks {
    /// Sends every IDE drive's BLOCK_IO_ERROR (also of media inserted later) to `hook`.
    pub fn set_event_hook(&self, hook: impl Fn(&BlockIoError) + Send + Sync + 'static) {
        let hook: EventHook = Arc::new(hook);
        let mut state = self.state.borrow_mut();
        for d in &state.drives {
            if let Some(c) = &d.claim {
                let hook = hook.clone();
                c.drive().set_event_hook(move |e| hook(e));
            }
        }
        state.hook = Some(hook);
    }

    /// `(node name, QOM path)` of each device with a medium now, for the events.
    pub fn qom_paths(&self) -> Vec<(String, String)> {
        let state = self.state.borrow();
        state
            .drives
            .iter()
            .filter_map(|d| Some((d.claim.as_ref()?.node_name().to_owned(), d.qdev.clone())))
            .collect()
    }

    /// The writable drives (for the flush at exit).
    pub fn writable_drives(&self) -> Vec<(String, Drive)> {
        let state = self.state.borrow();
        state
            .drives
            .iter()
            .filter_map(|d| d.claim.as_ref().map(|c| (d.name.clone(), c)))
            .filter(|(_, c)| !c.read_only())
            .map(|(n, c)| (n, c.drive().clone()))
            .collect()
    }

    /// QEMU's exit for the IDE drives: flush every writable image (their I/O ran on the
    /// main loop, which has stopped). Problems are reported; the process exits anyway.
    pub fn flush_at_exit(&self, deadline: Instant) {
        let drives = self.writable_drives();
        if drives.is_empty() {
            return;
        }
        let thread = match aio_context::IoThread::spawn("ide-exit-flush") {
            Ok(t) => t,
            Err(e) => {
                warn!("cannot flush the IDE drives at exit: {e}");
                return;
            }
        };
        for (name, drive) in drives {
            if let Err(e) = crate::disks::flush(&thread, drive.backend().clone(), deadline) {
                warn!("flushing drive {name}: {e}");
            }
        }
    }
}

/// Registers `eject` and `blockdev-change-medium`, and puts the IDE devices' state into
/// `query-block` (replacing the block-node crate's command with one that adds
/// `removable`, `locked`, `tray_open` and the empty drives). Tray movements go out as
/// `DEVICE_TRAY_MOVED` on `events`.
///
/// # Errors
///
/// A command name already taken.
pub fn register_qmp(
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
        entry["qdev"] = json!(d.qdev);
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
        Some(json!({"device": d.name, "tray-open": open, "id": d.qdev})),
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
