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
use std::rc::Rc;
use std::sync::Arc;

use block_dma::{BlockIoError, Drive};
use block_node::drive::DriveOptions;
use block_node::{AttachOptions, Claim};
use kvm_machine::ide::{IdeMedia, ide_boot_path};
use pc_platform::fw_cfg::bootorder::BootOrder;

mod qmp;

pub(crate) use qmp::register_qmp;

/// The BLOCK_IO_ERROR hook every IDE drive gets (also those inserted later).
pub(crate) type EventHook = Arc<dyn Fn(&BlockIoError) + Send + Sync>;

/// One IDE device and what it holds.
pub(crate) struct IdeDrive {
    /// The name `query-block` and `eject`'s `device` use: the drive id.
    pub(crate) name: String,
    /// The controller's id for it.
    pub(crate) ctl_id: String,
    /// `-device`'s `id=` (QMP `id` names it), if any.
    pub(crate) qdev_id: Option<String>,
    /// Its QOM path (`query-block`'s `qdev`).
    pub(crate) qdev: String,
    pub(crate) media: IdeMedia,
    /// What a new medium is opened with (the `-drive`'s options).
    pub(crate) options: DriveOptions,
    /// The medium's drive (none: an empty CD drive).
    pub(crate) claim: Option<Claim>,
}

impl IdeDrive {
    /// What QEMU's monitor calls the device (`query-block`'s `qdev`, DEVICE_TRAY_MOVED's
    /// `id`): its `id=` if it has one, else its QOM path.
    pub(crate) fn attached_id(&self) -> &str {
        self.qdev_id.as_deref().unwrap_or(&self.qdev)
    }
}

#[derive(Default)]
pub(crate) struct State {
    pub(crate) drives: Vec<IdeDrive>,
    pub(crate) hook: Option<EventHook>,
}

/// The machine's IDE devices (cheap to clone; main thread only).
#[derive(Clone, Default)]
pub struct IdeDisks {
    pub(crate) state: Rc<RefCell<State>>,
}

/// One IDE device to attach ([`attach_ide_device`]).
pub(crate) struct IdeDeviceSpec<'a> {
    /// 0 (primary, `ide.0`) or 1 (secondary, `ide.1`).
    pub(crate) bus: usize,
    /// 0 (master) or 1 (slave).
    pub(crate) unit: usize,
    /// `ide-hd` or `ide-cd`.
    pub(crate) media: IdeMedia,
    /// A `-drive` id or a `-blockdev` node name; `None`: an empty CD drive.
    pub(crate) drive: Option<&'a str>,
    /// The name of an empty drive (`query-block`'s `device`) when `drive` is `None`.
    pub(crate) empty_name: &'a str,
    /// `-device`'s `id=`.
    pub(crate) qdev_id: Option<&'a str>,
    /// The options a new medium is opened with (`blockdev-change-medium`).
    pub(crate) options: DriveOptions,
    /// Firmware boot priority (negative: none).
    pub(crate) bootindex: i32,
    /// IDENTIFY's serial number (`None`: QEMU's `QM000NN`).
    pub(crate) serial: Option<&'a str>,
}

/// Attaches an `ide-hd`/`ide-cd` to the machine's IDE controller on its drive from
/// the devices' block nodes, adds its `bootindex` to `order`, and records it in
/// [`Devices::ide`](crate::Devices::ide) for the monitor. The entry point for `-drive if=ide` and for the `-device ide-hd|ide-cd`
/// factories (`crate::devices::ide`).
///
/// # Errors
///
/// A drive that does not exist or is in use, a place taken, a bootindex used twice:
/// QEMU's words, without the option's text (the caller puts it in front).
pub(crate) fn attach_ide_device(
    devices: &crate::Devices,
    spec: IdeDeviceSpec<'_>,
    order: &mut BootOrder,
) -> Result<(), String> {
    let (ctl, nodes, vm, ide) = (
        &devices.ide_controller(),
        &devices.nodes,
        devices.runstate(),
        &devices.ide,
    );
    let driver = spec.media.driver();
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
                    format!("Property '{driver}.drive' can't find value '{r}'")
                }
                e => e.to_string(),
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
    let (bus, unit, media) = (spec.bus, spec.unit, spec.media);
    kvm_machine::ide::attach(ctl, bus, unit, &ctl_id, media, drive, spec.serial)?;
    order
        .add(spec.bootindex, ide_boot_path(spec.bus, spec.unit))
        .map_err(|e| e.to_string())?;
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
pub(crate) fn attach_drive(
    devices: &crate::Devices,
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
        serial: None,
    };
    attach_ide_device(devices, spec, order).map_err(|e| format!("-device {}: {e}", media.driver()))
}

/// Refuses an `if=ide` drive the `pc` machine cannot take, in QEMU 10's words: a
/// place past its two channels, a disk without an image (only a CD drive may be empty).
///
/// # Errors
///
/// The message for a bus past 1 or an empty disk.
pub(crate) fn check_drive(drive: &DriveOptions) -> Result<(), String> {
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
pub(crate) fn drive_name(drive: &DriveOptions) -> String {
    let kind = if drive.cdrom { "cd" } else { "hd" };
    format!("ide{}-{kind}{}", drive.bus, drive.unit)
}

/// Whether `drive` is an empty CD drive (`-drive if=ide,media=cdrom` without `file=`):
/// it has no node.
pub(crate) fn is_empty_cdrom(drive: &DriveOptions) -> bool {
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
}
