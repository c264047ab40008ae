//! The machine's hotplug layer: qdev-bus's [`DeviceRegistry`] with this VMM's drivers,
//! and [`Devices`], the [`DeviceHost`] over the machine's qdev tree.
//!
//! Every device the user names goes through the registry: `-device` (cold plug, in
//! command-line order, `-drive if=virtio` first) and QMP `device_add`/`device_del`
//! (hotplug). Each driver's factory lives in a module of its own ([`virtio_blk`],
//! [`scsi`], [`ide`]); a new disk family adds a module and a line in [`registry`].
//!
//! Buses: `pci.0` is a PCI bus that cannot hotplug (the i440FX machine has no ACPI
//! hotplug controller; QEMU with `acpi=off` says the same), the SCSI bus of each
//! virtio-scsi controller (`<id>.0`) can, the IDE channels `ide.0` and `ide.1` (the
//! PIIX3 IDE function the machine always has) cannot. `DEVICE_DELETED` comes from the tree after
//! the grace period (a SCSI LUN's drain first) through kvm-machine's event sink to
//! [`Devices::device_deleted`] on the main thread, which releases the device's block
//! backend (a `-drive if=none` goes with it, a `-blockdev` node stays) and then tells
//! the monitor.

pub(crate) mod ide;
pub(crate) mod qmp;
pub(crate) mod scsi;
pub(crate) mod virtio_blk;

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;

use aio_context::{AioHandle, IoThread};
use block_dma::{BlockIoError, Drive};
use block_node::{AttachOptions, Claim, NodeRegistry};
use kvm_machine::{KvmIoEvents, KvmMsi, Runner};
use pc_platform::fw_cfg::bootorder::BootOrder;
use qdev_bus::registry::{BusInfo, BusKind, DeviceError, DeviceHost, DeviceRegistry, Phase};
use qdev_bus::{PciAddress, UnplugStatus};
use qemu_opts::Opts;
use runstate::RunStateMachine;
use virtio_core::VirtioDevice;
use virtio_pci::{ChildBus, ConfigNotifier, IoEventRegistrar, MsiSender, VirtioPci};

/// The name of the machine's PCI bus.
pub const PCI_BUS: &str = "pci.0";

/// The QOM path QEMU gives a device with an id.
pub fn qom_path(id: &str) -> String {
    format!("/machine/peripheral/{id}")
}

/// One disk device and its hold on its block backend.
pub struct Disk {
    /// The device id.
    pub id: String,
    /// The drive id (empty for a device on a `-blockdev` node, as QEMU's device name).
    pub drive_id: String,
    /// The root node's name.
    pub node_name: String,
    /// The QOM path BLOCK_IO_ERROR names.
    pub qom_path: String,
    /// The drive.
    pub drive: Drive,
    /// The device's hold on its node: released when the device is deleted.
    pub claim: Claim,
    /// Whether it is read-only.
    pub read_only: bool,
    /// The iothread serving its requests.
    pub iothread: Arc<IoThread>,
}

/// What a BLOCK_IO_ERROR hook receives: the device's QOM path and the error.
pub type IoErrorHook = Arc<dyn Fn(&str, &BlockIoError) + Send + Sync>;

/// What runs after a device was deleted: `hook(id, qom_path)`.
type DeletedHook = Box<dyn Fn(&str, &str)>;

/// A SCSI bus of a virtio-scsi controller, as the host knows it.
pub(crate) struct ScsiController {
    pub(crate) bus: Arc<::scsi::ScsiBus>,
    pub(crate) iothread: Arc<IoThread>,
    pub(crate) slot: u8,
    /// PARAM_CHANGE events (a LUN's node resized).
    pub(crate) change: virtio_scsi::ChangeNotifier,
}

/// What a bus below `pci.0` is, for the factories of the devices that go on it (an
/// IDE channel adds its variant beside SCSI's).
pub(crate) enum ChildBusKind {
    /// A virtio-scsi controller's bus.
    Scsi(ScsiController),
}

/// A bus a controller on `pci.0` owns: what the registry sees, and the bus itself.
pub(crate) struct ChildBusEntry {
    pub(crate) info: BusInfo,
    pub(crate) kind: ChildBusKind,
}

impl ChildBusEntry {
    /// The qdev bus.
    fn qdev(&self) -> &dyn qdev_bus::AnyBus {
        match &self.kind {
            ChildBusKind::Scsi(c) => c.bus.bus(),
        }
    }
}

/// The machine's devices: the [`DeviceHost`] the registry plugs through, the disks and
/// their iothreads. Lives on the main thread.
pub struct Devices {
    pci: Arc<::pci::PciHost>,
    ram: ram_block::RamList,
    msi: Box<dyn Fn(usize) -> Arc<dyn MsiSender>>,
    ioevents: Option<Arc<dyn IoEventRegistrar>>,
    intx: Arc<pc_platform::IntxRouter>,
    runstate: RunStateMachine,
    main: AioHandle,
    /// Every block node and drive (for the monitor's block commands).
    pub nodes: NodeRegistry,
    /// The IDE devices (`-hda`, `-cdrom`, `-drive if=ide`, `-device ide-hd|ide-cd`),
    /// for the monitor.
    pub ide: crate::ide::IdeDisks,
    ide_controller: ::ide::IdeController,
    iothreads: RefCell<Vec<(String, Arc<IoThread>)>>,
    next_slot: Cell<u8>,
    boot_order: RefCell<BootOrder>,
    disks: RefCell<Vec<Disk>>,
    /// The buses below `pci.0`, in the order their controllers were plugged.
    buses: RefCell<Vec<ChildBusEntry>>,
    io_error_hook: RefCell<Option<IoErrorHook>>,
    deleted_hook: RefCell<Option<DeletedHook>>,
    registry: DeviceRegistry<Devices>,
}

/// The drivers of this VMM (what `-device help` lists).
pub fn registry() -> DeviceRegistry<Devices> {
    let mut r = DeviceRegistry::new();
    virtio_blk::register(&mut r);
    scsi::register(&mut r);
    ide::register(&mut r);
    r
}

impl Devices {
    /// The devices of `runner`'s machine, with no device yet; `nodes` and `iothreads`
    /// are the command line's block nodes and `-object iothread`s.
    pub fn new(
        runner: &Runner,
        nodes: NodeRegistry,
        iothreads: Vec<(String, Arc<IoThread>)>,
    ) -> Rc<Devices> {
        let machine = runner.machine();
        let (vm, routing) = (machine.vm_fd().clone(), machine.gsi_routing().cloned());
        let msi_vm = vm.clone();
        let msi = Box::new(move |vectors| {
            Arc::new(KvmMsi::new(msi_vm.clone(), routing.as_ref(), vectors)) as Arc<dyn MsiSender>
        });
        let ioevents = std::env::var_os("VMM_NO_IOEVENTFD")
            .is_none()
            .then(|| Arc::new(KvmIoEvents(vm)) as Arc<dyn IoEventRegistrar>);
        let devices = Rc::new(Devices {
            pci: machine.pci().clone(),
            ram: machine.ram().list().clone(),
            msi,
            ioevents,
            intx: machine.intx().clone(),
            runstate: runner.runstate().clone(),
            main: runner.context().handle(),
            nodes,
            ide: crate::ide::IdeDisks::default(),
            ide_controller: machine.ide().clone(),
            iothreads: RefCell::new(iothreads),
            next_slot: Cell::new(3),
            boot_order: RefCell::new(BootOrder::new()),
            disks: RefCell::new(Vec::new()),
            buses: RefCell::new(Vec::new()),
            io_error_hook: RefCell::new(None),
            deleted_hook: RefCell::new(None),
            registry: registry(),
        });
        let weak = Rc::downgrade(&devices);
        runner.on_device_deleted(move |e| {
            if let Some(devices) = weak.upgrade() {
                devices.device_deleted(&e.id);
            }
        });
        devices
    }

    /// Adds the device `opts` describes (`driver=` included) through the registry.
    ///
    /// # Errors
    ///
    /// The registry's or the factory's refusal, in QEMU's words.
    pub fn add(&self, opts: Opts, phase: Phase) -> Result<Option<String>, DeviceError> {
        // An id whose device is unplugged but not yet reclaimed is still taken (QEMU
        // keeps the object until then): refused before a factory takes a drive for it.
        if let Some(id) = opts.get("id")
            && self.bus_of(id).is_none()
            && self.pci.bus().id_taken(id)
        {
            return Err(DeviceError::DuplicateId(id.to_owned()));
        }
        self.registry.add(self, opts, phase)
    }

    /// QMP `device_del`.
    ///
    /// # Errors
    ///
    /// See [`DeviceRegistry::del`].
    pub fn del(&self, id: &str) -> Result<UnplugStatus, DeviceError> {
        self.registry.del(self, id)
    }

    /// The boot order the cold-plugged devices' `bootindex` made.
    pub fn boot_order(&self) -> std::cell::Ref<'_, BootOrder> {
        self.boot_order.borrow()
    }

    /// The boot order, for the IDE drives the command line attaches after the devices.
    pub(crate) fn boot_order_mut(&self) -> std::cell::RefMut<'_, BootOrder> {
        self.boot_order.borrow_mut()
    }

    /// The iothreads: `-object iothread` ids, and `main-iothread` if a device used it.
    pub fn iothreads(&self) -> Vec<(String, Arc<IoThread>)> {
        self.iothreads.borrow().clone()
    }

    /// The ids of the disks plugged now, in plug order.
    pub fn disk_ids(&self) -> Vec<String> {
        self.disks.borrow().iter().map(|d| d.id.clone()).collect()
    }

    /// Sends every drive's BLOCK_IO_ERROR to `hook` (drives plugged later too).
    pub fn set_io_error_hook(&self, hook: IoErrorHook) {
        for d in self.disks.borrow().iter() {
            watch_errors(d, &hook);
        }
        // The IDE drives: their QOM paths by node name.
        let ide_paths = self.ide.qom_paths();
        let ide_hook = hook.clone();
        self.ide.set_event_hook(move |e: &BlockIoError| {
            let path = ide_paths.iter().find(|(node, _)| *node == e.node_name);
            ide_hook(path.map_or("", |(_, p)| p.as_str()), e);
        });
        *self.io_error_hook.borrow_mut() = Some(hook);
    }

    /// Sets what runs after a device was deleted: `hook(id, qom_path)` (QMP's
    /// DEVICE_DELETED).
    pub fn on_deleted(&self, hook: impl Fn(&str, &str) + 'static) {
        *self.deleted_hook.borrow_mut() = Some(Box::new(hook));
    }

    /// The tree deleted the device `id` (after its grace period): its block backend is
    /// released (a `-drive` is deleted with it, as in QEMU), then DEVICE_DELETED.
    pub fn device_deleted(&self, id: &str) {
        self.disks.borrow_mut().retain(|d| d.id != id);
        if let Some(hook) = &*self.deleted_hook.borrow() {
            hook(id, &qom_path(id));
        }
    }

    /// The writable drives, for QEMU's exit (`vm_shutdown`: drain the iothreads, then
    /// flush these): `(drive id, the iothread serving it, the drive)`, the disks in plug
    /// order, then the IDE drives (no iothread: their I/O ran on the main loop).
    pub fn writable_drives(&self) -> Vec<(String, Option<Arc<IoThread>>, Drive)> {
        let disks = self.disks.borrow();
        let disks = disks.iter().filter(|d| !d.read_only);
        let mut drives: Vec<_> = disks
            .map(|d| {
                (
                    d.drive_id.clone(),
                    Some(d.iothread.clone()),
                    d.drive.clone(),
                )
            })
            .collect();
        let ide = self.ide.writable_drives().into_iter();
        drives.extend(ide.map(|(name, drive)| (name, None, drive)));
        drives
    }

    // --- for the factories ---

    /// The iothread `name`, or the default one (started on first use) for `None`.
    pub(crate) fn iothread(&self, name: Option<&str>) -> Result<Arc<IoThread>, DeviceError> {
        let wanted = name.unwrap_or("main-iothread");
        if let Some((_, t)) = self.iothreads.borrow().iter().find(|(n, _)| n == wanted) {
            return Ok(t.clone());
        }
        if let Some(name) = name {
            // QEMU's words for a link property naming no object.
            return Err(DeviceError::Device(format!("Device '{name}' not found")));
        }
        let t = Arc::new(IoThread::spawn(wanted).map_err(|e| DeviceError::Device(e.to_string()))?);
        self.iothreads
            .borrow_mut()
            .push((wanted.to_owned(), t.clone()));
        Ok(t)
    }

    /// The PCI slot of `addr=` or the next free one.
    pub(crate) fn pci_slot(&self, driver: &str, addr: Option<&str>) -> Result<u8, DeviceError> {
        match addr {
            Some(a) => parse_pci_slot(driver, a),
            None => {
                let slot = self.next_slot.get();
                self.next_slot.set(slot + 1);
                Ok(slot)
            }
        }
    }

    /// Records `bootindex` for the device at `path`.
    pub(crate) fn add_boot_index(
        &self,
        bootindex: Option<i32>,
        path: String,
    ) -> Result<(), DeviceError> {
        self.boot_order
            .borrow_mut()
            .add(bootindex.unwrap_or(-1), path)
            .map_err(|e| DeviceError::Device(e.to_string()))
    }

    /// Takes `reference` (a drive id or node name) for the device at QOM path `qom`.
    pub(crate) fn claim(&self, reference: &str, qom: &str) -> Result<Claim, block_node::Error> {
        self.nodes.attach(
            reference,
            AttachOptions {
                qdev: Some(qom.to_owned()),
                vm: Some(self.runstate.clone()),
                ..AttachOptions::default()
            },
        )
    }

    /// Records a plugged disk (its I/O errors go to the monitor's hook).
    pub(crate) fn add_disk(&self, id: &str, claim: Claim, iothread: Arc<IoThread>, qom: String) {
        let disk = Disk {
            id: id.to_owned(),
            drive_id: claim.device().to_owned(),
            node_name: claim.node_name().to_owned(),
            qom_path: qom,
            drive: claim.drive().clone(),
            read_only: claim.read_only(),
            claim,
            iothread,
        };
        if let Some(hook) = &*self.io_error_hook.borrow() {
            watch_errors(&disk, hook);
        }
        self.disks.borrow_mut().push(disk);
    }

    /// Wraps `device` as the virtio-pci function `id` at `slot` (served by `iothread`,
    /// with `child_bus` below it) and plugs it into `pci.0`.
    pub(crate) fn plug_virtio_pci(
        &self,
        id: &str,
        device: Box<dyn VirtioDevice>,
        iothread: Arc<IoThread>,
        slot: u8,
        child_bus: Option<Arc<dyn ChildBus>>,
    ) -> Result<ConfigNotifier, DeviceError> {
        let address = PciAddress::new(slot, 0)?;
        // One MSI-X vector per queue plus the config vector.
        let vectors = usize::from(device.num_queues()) + 1;
        let intx = ::pci::intx_line(self.intx.clone(), slot, 1);
        let mut pci = VirtioPci::new(
            id,
            device,
            self.ram.clone(),
            iothread,
            (self.msi)(vectors),
            Arc::new(intx),
        )
        .map_err(|e| DeviceError::Device(e.to_string()))?;
        if let Some(bus) = child_bus {
            pci = pci.with_child_bus(bus);
        }
        if let Some(r) = &self.ioevents {
            pci.set_ioevent_registrar(r.clone());
        }
        let config = pci.config_notifier();
        self.pci.plug(address, Box::new(pci))?;
        Ok(config)
    }

    /// The machine's PIIX3 IDE controller.
    pub(crate) fn ide_controller(&self) -> ::ide::IdeController {
        self.ide_controller.clone()
    }

    /// The machine's run state (for the drives' error policy).
    pub(crate) fn runstate(&self) -> &RunStateMachine {
        &self.runstate
    }

    /// The main loop's handle (to finish an unplug there).
    pub(crate) fn main_loop(&self) -> &AioHandle {
        &self.main
    }

    /// Records a bus a controller owns (plugged with it).
    pub(crate) fn add_child_bus(&self, entry: ChildBusEntry) {
        self.buses.borrow_mut().push(entry);
    }

    /// How many buses of `kind` there are.
    pub(crate) fn bus_count(&self, kind: BusKind) -> usize {
        let buses = self.buses.borrow();
        buses.iter().filter(|b| b.info.kind == kind).count()
    }

    /// The SCSI bus called `name`.
    pub(crate) fn scsi_bus(&self, name: &str) -> Option<ScsiController> {
        let buses = self.buses.borrow();
        buses.iter().find_map(|b| match &b.kind {
            ChildBusKind::Scsi(c) if b.info.name == name => Some(ScsiController {
                bus: c.bus.clone(),
                iothread: c.iothread.clone(),
                slot: c.slot,
                change: c.change.clone(),
            }),
            _ => None,
        })
    }

    /// The entry of the child bus that holds `id`, mapped through `f`.
    fn child_bus_of<T>(&self, id: &str, f: impl FnOnce(&ChildBusEntry) -> T) -> Option<T> {
        let guard = rcu::read();
        let buses = self.buses.borrow();
        let entry = buses
            .iter()
            .find(|b| b.qdev().find_by_id(&guard, id).is_some());
        entry.map(f)
    }
}

fn watch_errors(disk: &Disk, hook: &IoErrorHook) {
    let (hook, qom) = (hook.clone(), disk.qom_path.clone());
    disk.drive.set_event_hook(move |e| hook(&qom, e));
}

fn pci_bus() -> BusInfo {
    BusInfo {
        name: PCI_BUS.into(),
        kind: BusKind::Pci,
        // No ACPI PCI hotplug on this i440FX machine.
        hotpluggable: false,
    }
}

impl DeviceHost for Devices {
    fn bus(&self, name: &str) -> Option<BusInfo> {
        if name == PCI_BUS {
            return Some(pci_bus());
        }
        if let Some(bus) = ide::bus(name) {
            return Some(bus);
        }
        let buses = self.buses.borrow();
        let entry = buses.iter().find(|b| b.info.name == name);
        entry.map(|b| b.info.clone())
    }

    fn default_bus(&self, kind: BusKind) -> Option<BusInfo> {
        match kind {
            BusKind::Pci => return Some(pci_bus()),
            BusKind::Ide => return Some(ide::default_bus()),
            _ => {}
        }
        let buses = self.buses.borrow();
        let entry = buses.iter().find(|b| b.info.kind == kind);
        entry.map(|b| b.info.clone())
    }

    fn bus_of(&self, id: &str) -> Option<BusInfo> {
        if self.pci.bus().find(&rcu::read(), id).is_some() {
            return Some(pci_bus());
        }
        if let Some(bus) = ide::bus_of(self, id) {
            return Some(bus);
        }
        self.child_bus_of(id, |b| b.info.clone())
    }

    fn unplug(&self, id: &str) -> Result<UnplugStatus, DeviceError> {
        // The request runs outside the read section (it takes the tree's writer lock).
        let bus = self.child_bus_of(id, |b| match &b.kind {
            ChildBusKind::Scsi(c) => c.bus.clone(),
        });
        match bus {
            Some(bus) => Ok(qdev_bus::HotplugHandler::unplug_request(bus.bus(), id)?),
            None => Err(DeviceError::DeviceNotFound(id.to_owned())),
        }
    }
}

/// `addr=SLOT[.FUNCTION]` (hex, `0x` optional): the slot; only function 0 (there is no
/// multifunction device to put beside it).
fn parse_pci_slot(driver: &str, addr: &str) -> Result<u8, DeviceError> {
    let hex = |t: &str| u8::from_str_radix(t.trim_start_matches("0x"), 16).ok();
    let (slot, function) = match addr.split_once('.') {
        Some((s, f)) => (hex(s), hex(f)),
        None => (hex(addr), Some(0)),
    };
    match (slot, function) {
        (Some(slot), Some(0)) if slot < 32 => Ok(slot),
        (Some(slot), Some(f)) if slot < 32 && f < 8 => Err(DeviceError::Device(format!(
            "addr={addr}: only function 0 is supported"
        ))),
        _ => Err(DeviceError::Device(format!(
            "Property '{driver}.addr' doesn't take value '{addr}'"
        ))),
    }
}

/// Takes `bootindex=` (QEMU's words for a bad one).
pub(crate) fn take_bootindex(opts: &mut Opts) -> Result<Option<i32>, DeviceError> {
    match opts.string("bootindex") {
        None => Ok(None),
        Some(v) => v
            .parse::<i32>()
            .map(Some)
            .map_err(|_| DeviceError::Device("Parameter 'bootindex' expects integer".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_as_qemu_spells_them() {
        let slot = |a: &str| parse_pci_slot("virtio-blk-pci", a).map_err(|e| e.to_string());
        assert_eq!(slot("5"), Ok(5));
        assert_eq!(slot("0x1f"), Ok(0x1f));
        assert_eq!(slot("0x5.0"), Ok(5));
        for (addr, want) in [
            ("5.3", "only function 0"),
            ("0x20", "doesn't take value"),
            ("x", "doesn't take value"),
            ("5.8", "doesn't take value"),
        ] {
            let err = slot(addr).unwrap_err();
            assert!(err.contains(want), "{addr}: {err}");
        }
    }

    #[test]
    fn help_lists_the_drivers_as_qemu_does() {
        let help = registry().help();
        assert!(help.contains("name \"scsi-hd\", bus SCSI, desc \"virtual SCSI disk\""));
        assert!(help.contains("name \"ide-hd\", bus IDE, desc \"virtual IDE disk\""));
        assert!(help.contains("name \"ide-cd\", bus IDE, desc \"virtual IDE CD-ROM\""));
        assert!(help.contains("name \"virtio-scsi-pci\", bus PCI"));
        assert!(help.contains("name \"virtio-blk-pci\", bus PCI"));
    }
}
