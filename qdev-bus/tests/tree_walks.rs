//! Walking the tree bus → device → bus → device under one guard: find by id through
//! nested buses, pre- and post-order walks, and reset, which goes children first.

mod common;

use common::{Bridge, Disk, Log, ScsiDevice, ScsiHba, lun, scsi_bus, slot};
use qdev_bus::{Bus, HotplugHandler, Node, Order, PciAddress, reset_device};

/// pci.0
/// ├── 03.0 bridge1 ── bridge1
/// │                   └── 01.0 scsi1 ── scsi1.0
/// │                                     └── target 0 lun 0: deep
/// ├── 04.0 scsi0 ── scsi0.0
/// │                 ├── target 0 lun 0: disk0
/// │                 └── target 0 lun 1: disk1
/// └── 05.0 nic (a disk-like leaf)
fn machine(log: &Log) -> Bus<PciAddress> {
    let pci: Bus<PciAddress> = Bus::root("pci.0");
    // Plugged out of address order: the bus keeps children sorted.
    pci.plug(slot(4), ScsiHba::new("scsi0", log)).unwrap();
    pci.plug(slot(5), Disk::new("nic", log)).unwrap();
    pci.plug(slot(3), Bridge::new("bridge1", log)).unwrap();
    let guard = rcu::read();
    let bridge = pci
        .find_bus(&guard, "bridge1")
        .and_then(|b| b.downcast_ref::<Bus<PciAddress>>())
        .unwrap();
    bridge.plug(slot(1), ScsiHba::new("scsi1", log)).unwrap();
    scsi_bus(&pci, &guard, "scsi1.0")
        .plug(lun(0), Disk::new("deep", log))
        .unwrap();
    let scsi0 = scsi_bus(&pci, &guard, "scsi0.0");
    scsi0.plug(lun(1), Disk::new("disk1", log)).unwrap();
    scsi0.plug(lun(0), Disk::new("disk0", log)).unwrap();
    drop(guard);
    log.take();
    pci
}

fn names(pci: &Bus<PciAddress>, order: Order) -> Vec<String> {
    let guard = rcu::read();
    let mut seen = Vec::new();
    pci.walk(&guard, order, |node| match node {
        Node::Bus(b) => seen.push(format!("[{}]", b.name())),
        Node::Device(d) => seen.push(d.id().to_owned()),
    });
    seen
}

#[test]
fn find_by_id_looks_through_nested_buses() {
    let log = Log::default();
    let pci = machine(&log);
    let guard = rcu::read();
    assert_eq!(pci.find_by_id(&guard, "deep").map(|d| d.id()), Some("deep"));
    assert_eq!(
        pci.find_by_id(&guard, "scsi1").map(|d| d.id()),
        Some("scsi1")
    );
    assert!(pci.find_by_id(&guard, "nothing").is_none());
    // From a nested bus, only its own subtree is searched.
    let bridge = pci.find_bus(&guard, "bridge1").unwrap();
    assert!(bridge.find_by_id(&guard, "deep").is_some());
    assert!(bridge.find_by_id(&guard, "disk0").is_none());
    // A direct child, typed, with its address.
    let scsi0 = scsi_bus(&pci, &guard, "scsi0.0");
    assert_eq!(scsi0.find(&guard, "disk1").unwrap().address(), lun(1));
    scsi0.find(&guard, "disk1").unwrap().device().execute();
}

#[test]
fn walks_visit_in_pre_and_post_order() {
    let log = Log::default();
    let pci = machine(&log);
    assert_eq!(
        names(&pci, Order::Pre),
        [
            "[pci.0]",
            "bridge1",
            "[bridge1]",
            "scsi1",
            "[scsi1.0]",
            "deep",
            "scsi0",
            "[scsi0.0]",
            "disk0",
            "disk1",
            "nic"
        ]
    );
    assert_eq!(
        names(&pci, Order::Post),
        [
            "deep",
            "[scsi1.0]",
            "scsi1",
            "[bridge1]",
            "bridge1",
            "disk0",
            "disk1",
            "[scsi0.0]",
            "scsi0",
            "nic",
            "[pci.0]"
        ]
    );
}

#[test]
fn reset_goes_children_first() {
    let log = Log::default();
    let pci = machine(&log);
    pci.reset(&rcu::read());
    assert_eq!(
        log.take(),
        [
            "reset deep",
            "reset scsi1",
            "reset bridge1",
            "reset disk0",
            "reset disk1",
            "reset scsi0",
            "reset nic"
        ]
    );
    // One controller and its LUNs (a target reset from the guest).
    let guard = rcu::read();
    reset_device(&guard, pci.find_by_id(&guard, "scsi0").unwrap());
    assert_eq!(log.take(), ["reset disk0", "reset disk1", "reset scsi0"]);
}

#[test]
fn every_guard_flavour_reads_the_tree() {
    let log = Log::default();
    let pci = machine(&log);
    let mb = rcu::read_mb();
    assert!(pci.find_by_id(&mb, "deep").is_some());
    // An iothread, as a QSBR reader.
    std::thread::scope(|s| {
        s.spawn(|| {
            let thread = rcu::QsbrThread::register().unwrap();
            let guard = thread.read();
            assert!(pci.find_by_id(&guard, "disk1").is_some());
            let scsi0 = pci.find_bus(&guard, "scsi0.0").unwrap();
            let scsi0 = scsi0
                .downcast_ref::<Bus<qdev_bus::ScsiAddress, dyn ScsiDevice>>()
                .unwrap();
            assert_eq!(scsi0.get(&guard, lun(0)).unwrap().execute(), 0xA11CE);
        });
    });
}

#[test]
fn the_tree_prints_for_debugging() {
    let log = Log::default();
    let pci = machine(&log);
    let printed = format!("{pci:?}");
    assert!(
        printed
            .contains(r#"Child { address: PciAddress { slot: 3, function: 0 }, id: "bridge1" }"#),
        "{printed}"
    );
}
