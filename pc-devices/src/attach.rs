//! The block side of the machine: `-blockdev` and `-drive` turned into block nodes (the
//! block-node crate's registry), then every device (`-drive if=ide`'s on the PIIX3 IDE
//! function, `-drive if=virtio`'s, then each `-device` in order) through the machine's
//! device registry ([`crate::Devices`]), then the firmware's boot configuration.
//!
//! - `-blockdev driver=file|raw,node-name=..,...` (or JSON): a node, kept in
//!   [`Devices::nodes`] for the monitor's `blockdev-add`/`-del` and `query-*`.
//! - `-drive file=IMG,format=raw,if=ide|virtio|none,id=ID,cache=..,aio=io_uring,werror=..,rerror=..,readonly=on`
//!   (`cache=none`/`directsync` bypass the host page cache with O_DIRECT). `if=scsi`
//!   is refused as QEMU 10 refuses it on `pc`.
//! - The iothreads (`-object iothread,id=ID`) are the caller's: started before, handed
//!   in by id; devices without one share a default started on first use.
//!
//! Each drive's error policy stops the VM through the runstate machine
//! (werror/rerror=stop), and its BLOCK_IO_ERROR events go to
//! [`Devices::set_io_error_hook`].

use std::rc::Rc;
use std::sync::Arc;

use aio_context::IoThread;
use block_node::{BlockdevOptions, DriveOptions, NodeRegistry};
use kvm_machine::Runner;
use qdev_bus::registry::{DeviceError, Phase};
use qemu_opts::{BootOptions, Opts};
use tracing::warn;

use crate::devices::Devices;

/// One `-device` option (other than those the machine builds in, like
/// `isa-debug-exit`): the driver and its properties, as the user wrote them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceOption {
    /// The device type (`virtio-blk-pci`, `scsi-hd`, ...).
    pub driver: String,
    /// Its properties (`drive=`, `id=`, `bootindex=`, ...).
    pub props: Opts,
}

impl DeviceOption {
    /// The `id=` property.
    pub fn id(&self) -> Option<&str> {
        self.props.get("id")
    }

    /// The option as the user wrote it, for errors (`-device scsi-hd,drive=d0`).
    fn text(&self) -> String {
        match self.props.is_empty() {
            true => format!("-device {}", self.driver),
            false => format!("-device {},{}", self.driver, self.props),
        }
    }

    /// The registry's request: `driver=` and the properties.
    fn opts(&self) -> Opts {
        let mut pairs = vec![("driver".to_owned(), self.driver.clone())];
        pairs.extend(self.props.iter().map(|(k, v)| (k.to_owned(), v.to_owned())));
        Opts::from_pairs("-device", pairs)
    }
}

/// What the machine's disks and devices are made of: the command line's block and
/// device options, already parsed (the binary translates its command line into this).
#[derive(Clone, Debug, Default)]
pub struct DevicesConfig {
    /// `-blockdev ...`, in order.
    pub blockdevs: Vec<BlockdevOptions>,
    /// `-drive ...` (and `-hda`..`-hdd`, `-cdrom`), in order.
    pub drives: Vec<DriveOptions>,
    /// `-device ...`, in order.
    pub devices: Vec<DeviceOption>,
    /// `-boot`: order, once, menu, splash-time, strict.
    pub boot: BootOptions,
    /// The iothreads (`-object iothread`), started, by id.
    pub iothreads: Vec<(String, Arc<IoThread>)>,
}

/// Why the machine's devices could not be built. Each message names the option, in
/// QEMU's words where QEMU has them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A `-blockdev` that cannot be added.
    #[error("-blockdev: {0}")]
    Blockdev(#[source] block_node::Error),
    /// A `-drive` the machine refuses or cannot open (the message names it).
    #[error("{0}")]
    Drive(String),
    /// A device the registry or its factory refused.
    #[error("{option}: {source}")]
    Device {
        /// The option as the user wrote it (`-device scsi-hd,drive=d0`).
        option: String,
        /// The refusal.
        #[source]
        source: DeviceError,
    },
    /// The firmware's boot configuration could not be written.
    #[error("{0}")]
    Boot(String),
}

/// QEMU 10's refusal of `-drive if=scsi` on the `pc` machine, and the form that works.
fn if_scsi_refusal(bus: u32, unit: u32) -> String {
    format!(
        "-drive if=scsi: machine type does not support if=scsi,bus={bus},unit={unit} \
         (use -drive if=none,id=ID with -device virtio-scsi-pci,id=scsi0 and \
         -device scsi-hd,drive=ID,bus=scsi0.0)"
    )
}

/// Builds the block nodes and devices of `config` on `runner`'s machine.
///
/// # Errors
///
/// An [`Error`] naming the bad option: an unknown device type, a drive that cannot be
/// opened, a device whose drive does not exist or is used twice.
pub fn attach(runner: &Runner, config: DevicesConfig) -> Result<Rc<Devices>, Error> {
    let nodes = NodeRegistry::new();
    for b in &config.blockdevs {
        nodes.add(b).map_err(Error::Blockdev)?;
    }
    // The interfaces first (nothing is opened for a command line refused anyway).
    let mut drives = Vec::new();
    for d in &config.drives {
        let id = match d.interface.as_str() {
            // if=none drives wait for a -device.
            "none" => {
                d.id.clone()
                    .ok_or(Error::Drive("-drive if=none needs id=".into()))?
            }
            // QEMU names an if=virtio drive after its unit.
            "virtio" => d.id.clone().unwrap_or_else(|| format!("virtio{}", d.unit)),
            "scsi" => return Err(Error::Drive(if_scsi_refusal(d.bus, d.unit))),
            // if=ide (the default): an ide-hd/ide-cd on the PIIX3 IDE controller.
            _ => {
                crate::ide::check_drive(d).map_err(Error::Drive)?;
                d.id.clone().unwrap_or_else(|| crate::ide::drive_name(d))
            }
        };
        drives.push((d, id));
    }
    // if=virtio drives get their device first, then the -device ones, in order.
    // Each with the option as the user wrote it, for errors (`-device scsi-hd,...: `).
    let mut devices: Vec<(String, Opts)> = Vec::new();
    let mut ide_drives = Vec::new();
    for (d, id) in drives {
        if d.interface == "ide" {
            ide_drives.push((d, id.clone()));
            if crate::ide::is_empty_cdrom(d) {
                continue; // an empty CD drive has no node
            }
        }
        nodes.add_drive(d, &id).map_err(|e| match e {
            block_node::Error::Drive(m) => Error::Drive(m),
            e => Error::Drive(format!("-drive id={id}: {e}")),
        })?;
        if d.interface == "virtio" {
            let pairs = [("driver", "virtio-blk-pci"), ("drive", &id), ("id", &id)];
            let pairs = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
            let drive = format!("-drive if=virtio,id={id}");
            devices.push((drive, Opts::from_pairs("-drive", pairs.collect())));
        }
    }
    devices.extend(config.devices.iter().map(|d| (d.text(), d.opts())));
    let machine = Devices::new(runner, nodes, config.iothreads.clone());
    // The IDE drives on the PIIX3 IDE function the machine always has: before the
    // -device lines, as QEMU's machine init makes them.
    for (d, id) in ide_drives {
        let mut boot_order = machine.boot_order_mut();
        crate::ide::attach_drive(&machine, d, &id, &mut boot_order).map_err(Error::Drive)?;
    }
    for (option, opts) in devices {
        machine
            .add(opts, Phase::ColdPlug)
            .map_err(|source| Error::Device { option, source })?;
    }
    for id in machine.nodes.unused_drives() {
        warn!("-drive id={id} is not used by any device");
    }
    crate::boot::configure(runner, &config.boot, &machine.boot_order()).map_err(Error::Boot)?;
    Ok(machine)
}
