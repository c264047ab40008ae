//! The hotplug handler's two-step unplug: a request the guest must acknowledge (ACPI PCI
//! hotplug), a device that stays fully usable until then, and the finish when the guest
//! ejects the slot.

mod common;

use std::sync::{Arc, Mutex};

use common::{Bridge, Disk, Log, ScsiHba, lun, scsi_bus, slot};
use qdev_bus::{Bus, Error, HotplugController, HotplugHandler, PciAddress, UnplugStatus};

/// ACPI PCI hotplug as the guest sees it: a plug or an unplug request sets a bit in a
/// register and raises an SCI; the guest's handler later ejects the slot.
#[derive(Clone, Default)]
struct AcpiPciHotplug {
    /// What the guest has been told: ("insert" | "eject", slot).
    signalled: Arc<Mutex<Vec<(&'static str, PciAddress)>>>,
}

impl HotplugController<PciAddress> for AcpiPciHotplug {
    fn plugged(&self, address: PciAddress) {
        self.signalled.lock().unwrap().push(("insert", address));
    }
    fn unplug_requested(&self, address: PciAddress, _id: &str) -> UnplugStatus {
        self.signalled.lock().unwrap().push(("eject", address));
        UnplugStatus::Pending
    }
}

/// The guest writes the slot's bit to the eject register (`_EJ0`).
fn guest_ejects(bus: &Bus<PciAddress>, slot: PciAddress) -> qdev_bus::Result<()> {
    let id = bus.get(&rcu::read(), slot).map(|d| d.id().to_owned());
    bus.unplug(&id.expect("guest ejected an empty slot"))
}

fn acpi_bus(log: &Log) -> (Bus<PciAddress>, AcpiPciHotplug) {
    let acpi = AcpiPciHotplug::default();
    let bus = Bus::root_with_events("pci.0", log.events()).with_controller(acpi.clone());
    (bus, acpi)
}

#[test]
fn an_unplug_request_waits_for_the_guest() {
    let log = Log::default();
    let (pci, acpi) = acpi_bus(&log);
    pci.plug(slot(6), Disk::new("nic0", &log)).unwrap();
    assert_eq!(
        acpi.signalled.lock().unwrap().as_slice(),
        [("insert", slot(6))]
    );
    log.take();

    assert_eq!(pci.unplug_request("nic0"), Ok(UnplugStatus::Pending));
    assert_eq!(
        acpi.signalled.lock().unwrap().last(),
        Some(&("eject", slot(6)))
    );
    // Until the guest answers, the device is plugged, realized and visible.
    {
        let guard = rcu::read();
        let child = pci.find(&guard, "nic0").unwrap();
        assert!(child.unplug_pending());
        assert_eq!(child.address(), slot(6));
    }
    assert_eq!(
        pci.unplug_request("nic0"),
        Err(Error::UnplugPending { id: "nic0".into() })
    );
    rcu::barrier();
    assert!(log.take().is_empty());

    guest_ejects(&pci, slot(6)).unwrap();
    assert!(pci.get(&rcu::read(), slot(6)).is_none());
    rcu::barrier();
    assert_eq!(log.take(), ["unrealize nic0", "drop nic0", "deleted nic0"]);
}

#[test]
fn the_guest_may_eject_a_device_nobody_asked_to_remove() {
    let log = Log::default();
    let (pci, _acpi) = acpi_bus(&log);
    pci.plug(slot(2), Disk::new("disk0", &log)).unwrap();
    guest_ejects(&pci, slot(2)).unwrap();
    rcu::barrier();
    assert_eq!(
        log.take()[1..],
        ["unrealize disk0", "drop disk0", "deleted disk0"]
    );
    assert_eq!(
        pci.unplug("disk0"),
        Err(Error::NoSuchDevice {
            bus: "pci.0".into(),
            id: "disk0".into()
        })
    );
}

#[test]
fn device_del_asks_the_bus_that_holds_the_device() {
    let log = Log::default();
    let (pci, acpi) = acpi_bus(&log);
    pci.plug(slot(3), Bridge::new("bridge1", &log)).unwrap();
    pci.plug(slot(4), ScsiHba::new("scsi0", &log)).unwrap();
    scsi_bus(&pci, &rcu::read(), "scsi0.0")
        .plug(lun(0), Disk::new("disk0", &log))
        .unwrap();

    // The SCSI bus lets its LUNs go at once (ImmediateUnplug, the default)...
    assert_eq!(pci.device_del("disk0"), Ok(UnplugStatus::Unplugged));
    // ...the ACPI-managed root bus asks the guest first.
    assert_eq!(pci.device_del("bridge1"), Ok(UnplugStatus::Pending));
    assert_eq!(
        acpi.signalled.lock().unwrap().last(),
        Some(&("eject", slot(3)))
    );
    assert_eq!(
        pci.device_del("nothing"),
        Err(Error::NoSuchDevice {
            bus: "pci.0".into(),
            id: "nothing".into()
        })
    );
    rcu::barrier();
    assert!(log.take().ends_with(&[
        "unrealize disk0".into(),
        "drop disk0".into(),
        "deleted disk0".into()
    ]));
}

/// A QMP `device_add` written against the interface, not the bus type.
fn device_add<H: HotplugHandler>(bus: &H, address: H::Address, device: Box<H::Device>) -> String {
    match bus.plug(address, device) {
        Ok(()) => "{\"return\": {}}".into(),
        Err(e) => format!("{{\"error\": {{\"class\": \"GenericError\", \"desc\": \"{e}\"}}}}"),
    }
}

#[test]
fn code_can_be_written_against_the_handler_interface() {
    let log = Log::default();
    let (pci, _) = acpi_bus(&log);
    let disk: Box<dyn qdev_bus::Device> = Disk::new("disk0", &log);
    assert_eq!(device_add(&pci, slot(1), disk), r#"{"return": {}}"#);
    assert_eq!(
        device_add(&pci, slot(1), Disk::new("disk1", &log)),
        r#"{"error": {"class": "GenericError", "desc": "address 01.0 on bus "pci.0" is already occupied by device "disk0""}}"#
    );
}
