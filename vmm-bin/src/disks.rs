//! Disks of the VMM: `-blockdev`, `-drive`, `-device virtio-blk-pci` and `-object
//! iothread` turned into block nodes (the block-node crate's registry), virtio-blk
//! devices and virtio-pci functions on the machine.
//!
//! - `-blockdev driver=file|raw,node-name=..,...` (or JSON): a node, kept in
//!   [`Disks::nodes`] for the monitor's `blockdev-add`/`-del` and `query-*`.
//! - `-drive file=IMG,format=raw,if=virtio|none,id=ID,cache=..,aio=io_uring,werror=..,rerror=..,readonly=on`
//!   (`cache=none`/`directsync` bypass the host page cache with O_DIRECT).
//! - `-device virtio-blk-pci,drive=ID|NODE[,id=..][,iothread=..][,num-queues=N][,queue-size=N][,serial=..][,bootindex=N][,addr=SLOT]`:
//!   `drive=` names a `-drive` id or a `-blockdev` node, as in QEMU.
//! - `-object iothread,id=ID`: an iothread (an `AioContext` on its own thread) serving
//!   the queues of the devices that name it; devices without one share a default.
//!
//! Each drive's error policy stops the VM through the runstate machine
//! (werror/rerror=stop), and its BLOCK_IO_ERROR events go to [`Disks::set_event_hook`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use aio_context::{IoThread, PollParams};
use block_dma::{BlockIoError, Drive};
use block_node::{AttachOptions, Claim, NodeRegistry};
use qdev_bus::PciAddress;

use crate::cli::{Config, DeviceConfig};
use pc_platform::fw_cfg::bootorder::{BootOrder, virtio_blk_pci_path};

mod boot;
mod io;

use io::SHUTDOWN_IO_DEADLINE;
pub use io::{drain, flush};
use kvm_machine::{KvmIoEvents, KvmMsi, Runner};
use virtio_blk::{BlkOptions, VirtioBlk};
use virtio_pci::VirtioPci;

/// One attached disk.
pub struct Disk {
    /// The `-device` id (or the drive id for `if=virtio`).
    pub id: String,
    /// The drive id (empty for a device on a `-blockdev` node, as QEMU's device name).
    pub drive_id: String,
    /// The root node's name.
    pub node_name: String,
    /// The drive.
    pub drive: Drive,
    /// The device's hold on its node (released with the disk).
    pub claim: Claim,
    /// Whether it is read-only.
    pub read_only: bool,
    /// PCI slot.
    pub slot: u8,
    /// The iothread serving its queues.
    pub iothread: Arc<IoThread>,
}

/// The disks of a machine and the iothreads that serve them.
pub struct Disks {
    /// In command-line order.
    pub disks: Vec<Disk>,
    /// `-object iothread` ids, and the default one (`"main-iothread"`) if used.
    pub iothreads: Vec<(String, Arc<IoThread>)>,
    /// Every block node and drive (for the monitor's block commands).
    pub nodes: NodeRegistry,
    /// The IDE devices (`-hda`, `-cdrom`, `-drive if=ide`), for the monitor.
    pub ide: crate::ide::IdeDisks,
}

impl Disks {
    /// What QEMU's exit does to the disks (`vm_shutdown`: drain, then flush): waits
    /// until no request is in flight on any iothread, then flushes every writable
    /// image. Call it after the vCPUs have stopped (nothing submits new requests).
    /// Problems are reported on stderr; the process exits regardless.
    pub fn drain_and_flush(&self) {
        let deadline = Instant::now() + SHUTDOWN_IO_DEADLINE;
        for (name, thread) in &self.iothreads {
            if !drain(thread, deadline) {
                eprintln!("vmm-bin: iothread {name}: I/O still in flight at exit");
            }
        }
        for d in self.disks.iter().filter(|d| !d.read_only) {
            if let Err(e) = flush(&d.iothread, d.drive.backend().clone(), deadline) {
                eprintln!("vmm-bin: flushing drive {}: {e}", d.drive_id);
            }
        }
        self.ide.flush_at_exit(deadline);
    }

    /// Sends every drive's BLOCK_IO_ERROR to `hook`.
    pub fn set_event_hook(&self, hook: impl Fn(&BlockIoError) + Send + Sync + Clone + 'static) {
        for d in &self.disks {
            d.drive.set_event_hook(hook.clone());
        }
        self.ide.set_event_hook(hook);
    }
}

/// `-device ...,addr=SLOT[.FUNCTION]` (hex, `0x` optional): the slot; only function 0
/// (there is no multifunction device to put beside it).
fn parse_pci_slot(addr: &str) -> Result<u8, String> {
    let hex = |t: &str| u8::from_str_radix(t.trim_start_matches("0x"), 16).ok();
    let (slot, function) = match addr.split_once('.') {
        Some((s, f)) => (hex(s), hex(f)),
        None => (hex(addr), Some(0)),
    };
    match (slot, function) {
        (Some(slot), Some(0)) if slot < 32 => Ok(slot),
        (Some(slot), Some(f)) if slot < 32 && f < 8 => Err(format!(
            "-device virtio-blk-pci: addr={addr}: only function 0 is supported"
        )),
        _ => Err(format!(
            "-device virtio-blk-pci: Property 'virtio-blk-pci.addr' doesn't take value '{addr}'"
        )),
    }
}

/// Starts the iothread of `-object iothread,id=ID` (qemu-storage-daemon's `--object`
/// too) with QEMU's polling properties read through `prop`: `poll-max-ns`,
/// `poll-grow`, `poll-shrink` (absent ones keep [`PollParams::IOTHREAD`]'s).
///
/// # Errors
///
/// A property that is not a number; a thread that cannot start.
pub fn spawn_iothread(
    option: &str,
    id: &str,
    prop: impl Fn(&str) -> Option<String>,
) -> Result<Arc<IoThread>, String> {
    let mut poll = PollParams::IOTHREAD;
    for (key, field) in [
        ("poll-max-ns", &mut poll.max_ns),
        ("poll-grow", &mut poll.grow),
        ("poll-shrink", &mut poll.shrink),
    ] {
        if let Some(v) = prop(key) {
            *field = v.parse().map_err(|_| {
                format!("{option} iothread,id={id}: Parameter '{key}' expects uint64")
            })?;
        }
    }
    let thread = IoThread::spawn(id).map_err(|e| format!("{option} iothread,id={id}: {e}"))?;
    if poll != PollParams::IOTHREAD {
        thread.set_poll_params(poll);
    }
    Ok(Arc::new(thread))
}

/// Builds and plugs every disk of `config` into `runner`'s machine.
///
/// # Errors
///
/// A message naming the bad option: an unknown device or object type, a drive that
/// cannot be opened, a device whose drive does not exist or is used twice.
pub fn attach(runner: &Runner, config: &Config) -> Result<Disks, String> {
    let mut iothreads: HashMap<String, Arc<IoThread>> = HashMap::new();
    let mut order = Vec::new();
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
        if iothreads.contains_key(&o.id) {
            return Err(format!("-object iothread,id={}: duplicate id", o.id));
        }
        let t = spawn_iothread("-object", &o.id, |k| o.props.get(k).map(str::to_owned))?;
        iothreads.insert(o.id.clone(), t.clone());
        order.push((o.id.clone(), t));
    }
    let mut default_iothread: Option<Arc<IoThread>> = None;
    let mut default_io =
        |order: &mut Vec<(String, Arc<IoThread>)>| -> Result<Arc<IoThread>, String> {
            if let Some(t) = &default_iothread {
                return Ok(t.clone());
            }
            let t = Arc::new(IoThread::spawn("main-iothread").map_err(|e| e.to_string())?);
            order.push(("main-iothread".into(), t.clone()));
            default_iothread = Some(t.clone());
            Ok(t)
        };

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
            "scsi" => {
                // QEMU 10's refusal on the pc machine.
                return Err(format!(
                    "-drive if=scsi: machine type does not support if=scsi,bus={},unit={}",
                    d.bus, d.unit
                ));
            }
            // if=ide (the default): an ide-hd/ide-cd on the PIIX3 IDE controller.
            _ => {
                crate::ide::check_drive(d)?;
                let id = d.id.clone().unwrap_or_else(|| crate::ide::drive_name(d));
                drives.push((d, id));
            }
        }
    }
    // if=virtio drives get their device now, before the -device ones.
    let mut devices: Vec<DeviceConfig> = Vec::new();
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
            let pairs = vec![("drive".into(), id.clone()), ("id".into(), id)];
            devices.push(DeviceConfig {
                driver: "virtio-blk-pci".into(),
                props: qemu_opts::Opts::from_pairs("-drive", pairs),
            });
        }
    }
    for dev in &config.devices {
        if dev.driver != "virtio-blk-pci" {
            return Err(format!(
                "-device {}: unknown device (supported: virtio-blk-pci, isa-debug-exit)",
                dev.driver
            ));
        }
        if dev.props.get("drive").is_none() {
            return Err("-device virtio-blk-pci: drive= is required".into());
        }
        devices.push(dev.clone());
    }

    let machine = runner.machine();
    let mut disks = Vec::new();
    let mut next_slot = 3u8;
    let mut boot_order = BootOrder::new();
    for dev in devices {
        let props = &dev.props;
        let known = [
            "driver",
            "drive",
            "id",
            "iothread",
            "num-queues",
            "queue-size",
            "serial",
            "bootindex",
            "addr",
        ];
        if let Some(k) = props.unknown_keys(&known).first() {
            return Err(format!("-device virtio-blk-pci: invalid parameter '{k}'"));
        }
        // A -drive id or a -blockdev node name (checked above that it is there).
        let reference = props.get("drive").unwrap_or_default().to_owned();
        let id = props
            .get("id")
            .map(str::to_owned)
            .unwrap_or_else(|| format!("{reference}-dev"));
        let num = |key: &str, default: u16| -> Result<u16, String> {
            props.get(key).map_or(Ok(default), |v| {
                v.parse()
                    .map_err(|_| format!("-device virtio-blk-pci: {key}={v} is not a number"))
            })
        };
        let options = BlkOptions {
            num_queues: num("num-queues", 1)?,
            queue_size: num("queue-size", 256)?,
            serial: props.get("serial").unwrap_or_default().to_owned(),
            ..BlkOptions::default()
        };
        let iothread = match props.get("iothread") {
            Some(name) => iothreads
                .get(name)
                .cloned()
                .ok_or_else(|| format!("-device virtio-blk-pci: no -object iothread,id={name}"))?,
            None => default_io(&mut order)?,
        };
        let slot = match props.get("addr") {
            Some(a) => parse_pci_slot(a)?,
            None => {
                next_slot += 1;
                next_slot - 1
            }
        };
        let bootindex = match props.get("bootindex") {
            None => -1,
            Some(v) => v.parse::<i32>().map_err(|_| {
                format!("-device virtio-blk-pci,id={id}: Parameter 'bootindex' expects integer")
            })?,
        };
        boot_order
            .add(bootindex, virtio_blk_pci_path(slot, 0))
            .map_err(|e| format!("-device virtio-blk-pci,id={id}: {e}"))?;
        let how = AttachOptions {
            qdev: Some(format!("/machine/peripheral/{id}/virtio-backend")),
            vm: Some(runner.runstate().clone()),
            ..AttachOptions::default()
        };
        let claim = nodes.attach(&reference, how).map_err(|e| match e {
            // QEMU's words for a drive= that names nothing.
            block_node::Error::NotFound(r) => format!(
                "-device virtio-blk-pci: Property 'virtio-blk-device.drive' can't find value '{r}'"
            ),
            e => format!("-device virtio-blk-pci,drive={reference}: {e}"),
        })?;
        let drive = claim.drive().clone();
        let blk = VirtioBlk::new(drive.clone(), options)
            .map_err(|e| format!("-device virtio-blk-pci: {e}"))?;
        let intx = machine.intx().clone();
        // One MSI-X vector per queue plus the config vector.
        let vectors = usize::from(virtio_core::VirtioDevice::num_queues(&blk)) + 1;
        let pci = VirtioPci::new(
            id.clone(),
            Box::new(blk),
            machine.ram().list().clone(),
            iothread.clone(),
            Arc::new(KvmMsi::new(
                machine.vm_fd().clone(),
                machine.gsi_routing(),
                vectors,
            )),
            Arc::new(::pci::intx_line(intx, slot, 1)),
        )
        .map_err(|e| e.to_string())?;
        if std::env::var_os("VMM_NO_IOEVENTFD").is_none() {
            pci.set_ioevent_registrar(Arc::new(KvmIoEvents(machine.vm_fd().clone())));
        }
        let address = PciAddress::new(slot, 0).map_err(|e| format!("-device {id}: {e}"))?;
        machine
            .pci()
            .plug(address, Box::new(pci))
            .map_err(|e| format!("-device {id}: {e}"))?;
        disks.push(Disk {
            id,
            drive_id: claim.device().to_owned(),
            node_name: claim.node_name().to_owned(),
            read_only: claim.read_only(),
            drive,
            claim,
            slot,
            iothread,
        });
    }
    let ide = crate::ide::IdeDisks::default();
    for (d, id) in ide_drives {
        let vm = runner.runstate();
        crate::ide::attach_drive(machine, &nodes, vm, &ide, d, &id, &mut boot_order)?;
    }
    for id in nodes.unused_drives() {
        eprintln!("vmm-bin: warning: -drive id={id} is not used by any device");
    }
    boot::configure(runner, &config.boot, &boot_order)?;
    Ok(Disks {
        disks,
        iothreads: order,
        nodes,
        ide,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_as_qemu_spells_them() {
        assert_eq!(parse_pci_slot("5"), Ok(5));
        assert_eq!(parse_pci_slot("0x1f"), Ok(0x1f));
        assert_eq!(parse_pci_slot("0x5.0"), Ok(5));
        for (addr, want) in [
            ("5.3", "only function 0"),
            ("0x20", "doesn't take value"),
            ("x", "doesn't take value"),
            ("5.8", "doesn't take value"),
        ] {
            let err = parse_pci_slot(addr).unwrap_err();
            assert!(err.contains(want), "{addr}: {err}");
        }
    }
}
