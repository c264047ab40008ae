//! A device's life on a bus: realized before anyone can see it; after unplug, still
//! usable by readers that found it earlier; unrealized and dropped only after those
//! readers are gone; and only then announced as deleted.

mod common;

use common::{Disk, Log, ScsiDevice, ScsiHba, lun, scsi_bus, slot};
use qdev_bus::{Bus, Error, HotplugHandler, PciAddress, ScsiAddress, UnplugStatus};

#[test]
fn a_device_is_realized_before_it_is_visible() {
    let log = Log::default();
    let bus: Bus<ScsiAddress, dyn ScsiDevice> = Bus::root_with_events("scsi.0", log.events());
    bus.plug(lun(0), Disk::new("disk0", &log)).unwrap();
    let guard = rcu::read();
    let disk = bus.get(&guard, lun(0)).unwrap();
    assert_eq!(disk.execute(), 0xA11CE); // checks realized and not dropped
    assert_eq!(log.take(), ["realize disk0"]);
}

#[test]
fn a_failed_realize_publishes_nothing_and_frees_the_id_and_address() {
    let log = Log::default();
    let bus: Bus<ScsiAddress, dyn ScsiDevice> = Bus::root("scsi.0");
    let mut broken = Disk::new("disk0", &log);
    broken.fail_realize = true;
    let err = bus.plug(lun(0), broken).unwrap_err();
    assert_eq!(
        err.to_string(),
        r#"device "disk0" failed to realize: no medium"#
    );
    assert!(bus.get(&rcu::read(), lun(0)).is_none());
    assert_eq!(log.take(), ["drop disk0"]);

    bus.plug(lun(0), Disk::new("disk0", &log)).unwrap();
    assert_eq!(bus.addresses(&rcu::read()), [lun(0)]);
}

#[test]
fn unplug_unlinks_at_once_and_reclaims_after_the_readers_are_gone() {
    let log = Log::default();
    let bus: Bus<ScsiAddress, dyn ScsiDevice> = Bus::root_with_events("scsi.0", log.events());
    bus.plug(lun(1), Disk::new("disk1", &log)).unwrap();
    log.take();

    let guard = rcu::read();
    let disk = bus.get(&guard, lun(1)).unwrap();
    assert_eq!(bus.unplug_request("disk1"), Ok(UnplugStatus::Unplugged));

    // Gone for new readers, but the old reader's reference is still a live, realized disk.
    assert!(bus.get(&rcu::read(), lun(1)).is_none());
    assert!(bus.find(&rcu::read(), "disk1").is_none());
    rcu::call_rcu(|| {}); // wakes the reclaim thread: it must still wait for `guard`
    std::thread::sleep(std::time::Duration::from_millis(20));
    disk.execute();
    assert!(log.take().is_empty());

    drop(guard);
    rcu::barrier();
    assert_eq!(
        log.take(),
        ["unrealize disk1", "drop disk1", "deleted disk1"]
    );
}

#[test]
fn the_id_stays_taken_until_the_deleted_event() {
    let log = Log::default();
    let bus: Bus<ScsiAddress, dyn ScsiDevice> = Bus::root_with_events("scsi.0", log.events());
    bus.plug(lun(0), Disk::new("disk0", &log)).unwrap();
    let guard = rcu::read(); // holds reclaim back
    bus.unplug("disk0").unwrap();
    assert!(bus.find(&guard, "disk0").is_none() && bus.id_taken("disk0"));
    assert_eq!(
        bus.plug(lun(1), Disk::new("disk0", &log)),
        Err(Error::IdBeingDeleted { id: "disk0".into() })
    );
    // The address is free at once: the old device no longer occupies it.
    bus.plug(lun(0), Disk::new("disk9", &log)).unwrap();
    drop(guard);
    rcu::barrier();
    assert!(!bus.id_taken("disk0"), "free once deleted");
    bus.plug(lun(1), Disk::new("disk0", &log)).unwrap();
}

#[test]
fn unplugging_a_controller_reclaims_its_subtree_children_first() {
    let log = Log::default();
    let pci: Bus<PciAddress> = Bus::root_with_events("pci.0", log.events());
    pci.plug(slot(4), ScsiHba::new("scsi0", &log)).unwrap();
    {
        let guard = rcu::read();
        let scsi = scsi_bus(&pci, &guard, "scsi0.0");
        scsi.plug(lun(0), Disk::new("disk0", &log)).unwrap();
        scsi.plug(lun(1), Disk::new("disk1", &log)).unwrap();
    }
    log.take();

    let guard = rcu::read();
    let scsi = scsi_bus(&pci, &guard, "scsi0.0");
    pci.unplug("scsi0").unwrap();
    // A reader that holds the old bus can still dispatch; writers cannot change it.
    scsi.get(&guard, lun(1)).unwrap().execute();
    assert_eq!(
        scsi.plug(lun(2), Disk::new("disk2", &log)),
        Err(Error::BusRemoved {
            bus: "scsi0.0".into()
        })
    );
    assert_eq!(
        scsi.unplug("disk0"),
        Err(Error::BusRemoved {
            bus: "scsi0.0".into()
        })
    );
    assert_eq!(log.take(), ["drop disk2"]); // the refused device
    drop(guard);
    rcu::barrier();

    let life = log.take();
    let (unrealize, rest) = life.split_at(3);
    assert_eq!(
        unrealize,
        ["unrealize disk0", "unrealize disk1", "unrealize scsi0"]
    );
    // Every drop comes before every event. Rust runs the controller's `drop` before
    // dropping its fields (the bus, and with it the disks); events go children first.
    let (drops, events) = rest.split_at(3);
    assert_eq!(drops, ["drop scsi0", "drop disk0", "drop disk1"]);
    assert_eq!(events, ["deleted disk0", "deleted disk1", "deleted scsi0"]);
    assert_eq!(life.len(), 3 + 3 + 3, "{life:?}");
}

#[test]
fn dropping_a_tree_drops_its_devices_without_events() {
    let log = Log::default();
    let pci: Bus<PciAddress> = Bus::root_with_events("pci.0", log.events());
    pci.plug(slot(4), ScsiHba::new("scsi0", &log)).unwrap();
    scsi_bus(&pci, &rcu::read(), "scsi0.0")
        .plug(lun(0), Disk::new("disk0", &log))
        .unwrap();
    log.take();
    drop(pci);
    rcu::barrier();
    assert_eq!(log.take(), ["drop scsi0", "drop disk0"]);
}
