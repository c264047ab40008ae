//! The block side of the command line: `-object iothread`, `-blockdev` and `-drive`
//! turned into iothreads and block nodes (the block-node crate's registry); then every
//! device (`-drive if=virtio`'s, then each `-device` in order) through the machine's
//! device registry ([`crate::devices`]).
//!
//! - `-blockdev driver=file|raw,node-name=..,...` (or JSON): a node, kept in
//!   [`Devices::nodes`] for the monitor's `blockdev-add`/`-del` and `query-*`.
//! - `-drive file=IMG,format=raw,if=ide|virtio|none,id=ID,cache=..,aio=io_uring,werror=..,rerror=..,readonly=on`
//!   (`cache=none`/`directsync` bypass the host page cache with O_DIRECT). `if=scsi`
//!   is refused as QEMU 10 refuses it on `pc`.
//! - `-object iothread,id=ID`: an iothread (an `AioContext` on its own thread) serving
//!   the queues of the devices that name it; devices without one share a default.
//!
//! Each drive's error policy stops the VM through the runstate machine
//! (werror/rerror=stop), and its BLOCK_IO_ERROR events go to
//! [`Devices::set_io_error_hook`].

use std::rc::Rc;
use std::sync::Arc;

use aio_context::IoThread;
use block_node::NodeRegistry;
use kvm_machine::Runner;
use qdev_bus::registry::Phase;
use qemu_opts::Opts;
use tracing::warn;

use crate::cli::Config;
use crate::devices::Devices;

mod boot;

pub(crate) use block_node::shutdown::SHUTDOWN_IO_DEADLINE;
pub use block_node::shutdown::{drain, flush};

/// QEMU 10's refusal of `-drive if=scsi` on the `pc` machine, and the form that works.
fn if_scsi_refusal(bus: u32, unit: u32) -> String {
    format!(
        "-drive if=scsi: machine type does not support if=scsi,bus={bus},unit={unit} \
         (use -drive if=none,id=ID with -device virtio-scsi-pci,id=scsi0 and \
         -device scsi-hd,drive=ID,bus=scsi0.0)"
    )
}

/// The `-object iothread`s of `config`, started, in order.
fn iothreads(config: &Config) -> Result<Vec<(String, Arc<IoThread>)>, String> {
    let mut threads: Vec<(String, Arc<IoThread>)> = Vec::new();
    for o in &config.objects {
        if o.qom_type != "iothread" {
            return Err(format!(
                "-object {}: unknown object type (supported: iothread)",
                o.qom_type
            ));
        }
        let unknown =
            o.props
                .unknown_keys(&["qom-type", "id", "poll-max-ns", "poll-grow", "poll-shrink"]);
        if let Some(k) = unknown.first() {
            return Err(format!(
                "-object iothread,id={}: invalid parameter '{k}'",
                o.id
            ));
        }
        if threads.iter().any(|(id, _)| *id == o.id) {
            return Err(format!("-object iothread,id={}: duplicate id", o.id));
        }
        let t = IoThread::spawn_with_properties("-object", &o.id, |k| {
            o.props.get(k).map(str::to_owned)
        })
        .map_err(|e| e.to_string())?;
        threads.push((o.id.clone(), Arc::new(t)));
    }
    Ok(threads)
}

/// Builds the block nodes, iothreads and devices of `config` on `runner`'s machine.
///
/// # Errors
///
/// A message naming the bad option: an unknown device or object type, a drive that
/// cannot be opened, a device whose drive does not exist or is used twice.
pub fn attach(runner: &Runner, config: &Config) -> Result<Rc<Devices>, String> {
    let threads = iothreads(config)?;
    let nodes = NodeRegistry::new();
    for b in &config.blockdevs {
        nodes.add(b).map_err(|e| format!("-blockdev: {e}"))?;
    }
    // The interfaces first (nothing is opened for a command line refused anyway).
    let mut drives = Vec::new();
    for d in &config.drives {
        match d.interface.as_str() {
            // if=none drives wait for a -device.
            "none" => drives.push((d, d.id.clone().ok_or("-drive if=none needs id=")?)),
            // QEMU names an if=virtio drive after its unit.
            "virtio" => drives.push((
                d,
                d.id.clone().unwrap_or_else(|| format!("virtio{}", d.unit)),
            )),
            "scsi" => return Err(if_scsi_refusal(d.bus, d.unit)),
            // if=ide (the default): an ide-hd/ide-cd on the PIIX3 IDE controller.
            _ => {
                crate::ide::check_drive(d)?;
                let id = d.id.clone().unwrap_or_else(|| crate::ide::drive_name(d));
                drives.push((d, id));
            }
        }
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
            block_node::Error::Drive(m) => m,
            e => format!("-drive id={id}: {e}"),
        })?;
        if d.interface == "virtio" {
            let pairs = [("driver", "virtio-blk-pci"), ("drive", &id), ("id", &id)];
            let pairs = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
            let drive = format!("-drive if=virtio,id={id}");
            devices.push((drive, Opts::from_pairs("-drive", pairs.collect())));
        }
    }
    for dev in &config.devices {
        let mut pairs = vec![("driver".to_owned(), dev.driver.clone())];
        pairs.extend(dev.props.iter().map(|(k, v)| (k.to_owned(), v.to_owned())));
        let text = match dev.props.is_empty() {
            true => format!("-device {}", dev.driver),
            false => format!("-device {},{}", dev.driver, dev.props),
        };
        devices.push((text, Opts::from_pairs("-device", pairs)));
    }
    let machine = Devices::new(runner, nodes, threads);
    // The IDE drives on the PIIX3 IDE function the machine always has: before the
    // -device lines, as QEMU's machine init makes them.
    for (d, id) in ide_drives {
        let vm = runner.runstate();
        let mut boot_order = machine.boot_order_mut();
        crate::ide::attach_drive(
            runner.machine(),
            &machine.nodes,
            vm,
            &machine.ide,
            d,
            &id,
            &mut boot_order,
        )?;
    }
    for (text, opts) in devices {
        machine
            .add(opts, Phase::ColdPlug)
            .map_err(|e| format!("{text}: {e}"))?;
    }
    for id in machine.nodes.unused_drives() {
        warn!("-drive id={id} is not used by any device");
    }
    boot::configure(runner, &config.boot, &machine.boot_order())?;
    Ok(machine)
}
