//! Devices for the tests: a SCSI disk, a SCSI controller (HBA) that owns a SCSI bus, a
//! PCI bridge that owns a PCI bus, and a log where each records its life.

// Each test file uses a different subset.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use qdev_bus::{AnyBus, Bus, Device, DeviceDeleted, Error, PciAddress, Result, ScsiAddress};

/// What happened, in order: "realize disk0", "reset disk0", "unrealize disk0",
/// "drop disk0", "deleted disk0".
#[derive(Clone, Default)]
pub(crate) struct Log(Arc<Mutex<Vec<String>>>);

impl Log {
    pub(crate) fn push(&self, what: &str, id: &str) {
        self.0.lock().unwrap().push(format!("{what} {id}"));
    }
    /// Everything logged so far, emptying the log.
    pub(crate) fn take(&self) -> Vec<String> {
        std::mem::take(&mut *self.0.lock().unwrap())
    }
    /// The deleted-event sink for a root bus.
    pub(crate) fn events(&self) -> impl Fn(DeviceDeleted) + Send + Sync + 'static {
        let log = self.clone();
        move |e| log.push("deleted", &e.id)
    }
}

/// What a SCSI bus dispatches to: its children are `dyn ScsiDevice`.
pub(crate) trait ScsiDevice: Device {
    /// Handles a command; panics if the device was freed or unrealized.
    fn execute(&self) -> u64;
}

const ALIVE: u64 = 0xA11CE;
const POISON: u64 = 0xDEAD;

/// A SCSI disk that records its life in a log and checks, on every command, that it is
/// neither dropped nor unrealized.
pub(crate) struct Disk {
    id: String,
    log: Log,
    realized: AtomicBool,
    canary: AtomicU64,
    pub(crate) fail_realize: bool,
}

impl Disk {
    pub(crate) fn new(id: &str, log: &Log) -> Box<Disk> {
        Box::new(Disk {
            id: id.to_owned(),
            log: log.clone(),
            realized: AtomicBool::new(false),
            canary: AtomicU64::new(ALIVE),
            fail_realize: false,
        })
    }
    pub(crate) fn is_realized(&self) -> bool {
        self.realized.load(Ordering::SeqCst)
    }
}

impl Device for Disk {
    fn id(&self) -> &str {
        &self.id
    }
    fn realize(&self) -> Result<()> {
        if self.fail_realize {
            return Err(Error::Realize {
                id: self.id.clone(),
                reason: "no medium".into(),
            });
        }
        self.realized.store(true, Ordering::SeqCst);
        self.log.push("realize", &self.id);
        Ok(())
    }
    fn unrealize(&self) {
        self.realized.store(false, Ordering::SeqCst);
        self.log.push("unrealize", &self.id);
    }
    fn reset(&self) {
        self.log.push("reset", &self.id);
    }
}

impl ScsiDevice for Disk {
    fn execute(&self) -> u64 {
        assert_eq!(
            self.canary.load(Ordering::SeqCst),
            ALIVE,
            "{}: used after drop",
            self.id
        );
        assert!(self.is_realized(), "{}: used while unrealized", self.id);
        ALIVE
    }
}

impl Drop for Disk {
    fn drop(&mut self) {
        self.canary.store(POISON, Ordering::SeqCst);
        self.log.push("drop", &self.id);
    }
}

/// A SCSI controller (virtio-scsi): a PCI device that owns a SCSI bus.
pub(crate) struct ScsiHba {
    id: String,
    log: Log,
    pub(crate) bus: Bus<ScsiAddress, dyn ScsiDevice>,
}

impl ScsiHba {
    /// A controller `id` whose bus is `"{id}.0"`, as QEMU names it.
    pub(crate) fn new(id: &str, log: &Log) -> Box<ScsiHba> {
        Box::new(ScsiHba {
            id: id.to_owned(),
            log: log.clone(),
            bus: Bus::new(&format!("{id}.0")),
        })
    }
}

impl Device for ScsiHba {
    fn id(&self) -> &str {
        &self.id
    }
    fn realize(&self) -> Result<()> {
        self.log.push("realize", &self.id);
        Ok(())
    }
    fn unrealize(&self) {
        self.log.push("unrealize", &self.id);
    }
    fn reset(&self) {
        self.log.push("reset", &self.id);
    }
    fn for_each_child_bus<'a>(&'a self, visit: &mut dyn FnMut(&'a dyn AnyBus)) {
        visit(&self.bus)
    }
}

impl Drop for ScsiHba {
    fn drop(&mut self) {
        self.log.push("drop", &self.id);
    }
}

/// A PCI-to-PCI bridge: a PCI device that owns a secondary PCI bus.
pub(crate) struct Bridge {
    id: String,
    log: Log,
    pub(crate) bus: Bus<PciAddress>,
}

impl Bridge {
    pub(crate) fn new(id: &str, log: &Log) -> Box<Bridge> {
        Box::new(Bridge {
            id: id.to_owned(),
            log: log.clone(),
            bus: Bus::new(id),
        })
    }
}

impl Device for Bridge {
    fn id(&self) -> &str {
        &self.id
    }
    fn unrealize(&self) {
        self.log.push("unrealize", &self.id);
    }
    fn reset(&self) {
        self.log.push("reset", &self.id);
    }
    fn for_each_child_bus<'a>(&'a self, visit: &mut dyn FnMut(&'a dyn AnyBus)) {
        visit(&self.bus)
    }
}

/// `PciAddress::new(slot, 0)`.
pub(crate) fn slot(slot: u8) -> PciAddress {
    PciAddress::new(slot, 0).unwrap()
}

/// `ScsiAddress::new(0, lun)`.
pub(crate) fn lun(lun: u16) -> ScsiAddress {
    ScsiAddress::new(0, lun)
}

/// The SCSI bus named `name` below `root`, typed.
pub(crate) fn scsi_bus<'g>(
    root: &'g Bus<PciAddress>,
    guard: &'g rcu::Guard,
    name: &str,
) -> &'g Bus<ScsiAddress, dyn ScsiDevice> {
    root.find_bus(guard, name)
        .and_then(|b| b.downcast_ref())
        .unwrap_or_else(|| panic!("no SCSI bus {name}"))
}
