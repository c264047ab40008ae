// A device found by id through the tree cannot outlive the guard.
use qdev_bus::{Bus, PciAddress};

fn main() {
    let bus: Bus<PciAddress> = Bus::root("pci.0");
    let guard = rcu::read();
    let found = bus.find_by_id(&guard, "disk0");
    drop(guard);
    println!("{}", found.is_some());
}
