//! Every refusal is an error that names what was wrong, never a panic.

mod common;

use common::{Disk, Log, ScsiDevice, ScsiHba, lun, scsi_bus, slot};
use qdev_bus::{AnyBus, Bus, Device, Error, HotplugHandler, PciAddress, ScsiAddress};

fn message(result: qdev_bus::Result<impl std::fmt::Debug>) -> String {
    result.unwrap_err().to_string()
}

#[test]
fn ids_must_be_well_formed() {
    let log = Log::default();
    let bus: Bus<ScsiAddress, dyn ScsiDevice> = Bus::root("scsi.0");
    assert_eq!(
        message(bus.plug(lun(0), Disk::new("0disk", &log))),
        r#"device id "0disk" is not well-formed: it must start with a letter and contain only letters, digits, '-', '.' and '_'"#
    );
}

#[test]
fn ids_are_unique_across_the_whole_tree() {
    let log = Log::default();
    let pci: Bus<PciAddress> = Bus::root("pci.0");
    pci.plug(slot(1), Disk::new("disk0", &log)).unwrap();
    assert_eq!(
        message(pci.plug(slot(2), Disk::new("disk0", &log))),
        r#"device id "disk0" is already in use"#
    );
    // Also on another bus of the same tree.
    pci.plug(slot(4), ScsiHba::new("scsi0", &log)).unwrap();
    let guard = rcu::read();
    let scsi0 = scsi_bus(&pci, &guard, "scsi0.0");
    assert_eq!(
        scsi0.plug(lun(0), Disk::new("disk0", &log)),
        Err(Error::DuplicateId { id: "disk0".into() })
    );
    assert_eq!(
        message(pci.plug(slot(5), ScsiHba::new("disk0", &log))),
        r#"device id "disk0" is already in use"#
    );
}

#[test]
fn an_address_holds_one_device() {
    let log = Log::default();
    let bus: Bus<ScsiAddress, dyn ScsiDevice> = Bus::root("scsi.0");
    bus.plug(lun(3), Disk::new("disk3", &log)).unwrap();
    assert_eq!(
        message(bus.plug(lun(3), Disk::new("other", &log))),
        r#"address target 0 lun 3 on bus "scsi.0" is already occupied by device "disk3""#
    );
    assert_eq!(
        message(PciAddress::new(40, 0)),
        "invalid address 28.0: PCI slots are 00..1f and functions 0..7"
    );
}

#[test]
fn unplugging_an_unknown_id_is_an_error() {
    let bus: Bus<PciAddress> = Bus::root("pci.0");
    assert_eq!(
        message(bus.unplug("ghost")),
        r#"no device with id "ghost" on bus "pci.0""#
    );
    assert_eq!(
        bus.unplug_request("ghost"),
        Err(Error::NoSuchDevice {
            bus: "pci.0".into(),
            id: "ghost".into()
        })
    );
    assert!(bus.device_del("ghost").is_err());
}

#[test]
fn a_controllers_bus_takes_devices_only_once_the_controller_is_plugged() {
    let log = Log::default();
    let hba = ScsiHba::new("scsi0", &log);
    assert_eq!(
        message(hba.bus.plug(lun(0), Disk::new("disk0", &log))),
        r#"bus "scsi0.0" is not attached to a device tree: plug the device that owns it first"#
    );
}

/// A device that claims a bus it does not own (here, the root bus itself).
struct Impostor(&'static Bus<PciAddress>);
impl Device for Impostor {
    fn id(&self) -> &str {
        "impostor"
    }
    fn for_each_child_bus<'a>(&'a self, visit: &mut dyn FnMut(&'a dyn AnyBus)) {
        visit(self.0)
    }
}

#[test]
fn a_bus_belongs_to_one_tree() {
    let root: &'static Bus<PciAddress> = Box::leak(Box::new(Bus::root("pci.0")));
    let other: Bus<PciAddress> = Bus::root("pci.1");
    assert_eq!(
        message(other.plug(slot(1), Box::new(Impostor(root)))),
        r#"bus "pci.0" of device "impostor" already belongs to a device tree"#
    );
    assert!(other.get(&rcu::read(), slot(1)).is_none());
}

#[test]
fn a_removed_bus_refuses_changes() {
    let log = Log::default();
    let pci: Bus<PciAddress> = Bus::root("pci.0");
    pci.plug(slot(4), ScsiHba::new("scsi0", &log)).unwrap();
    let guard = rcu::read();
    let scsi0 = scsi_bus(&pci, &guard, "scsi0.0");
    pci.unplug("scsi0").unwrap();
    assert_eq!(
        message(scsi0.plug(lun(0), Disk::new("disk0", &log))),
        r#"bus "scsi0.0" is being removed with the device that owns it"#
    );
}
