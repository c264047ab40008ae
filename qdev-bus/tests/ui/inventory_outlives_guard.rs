// A REPORT LUNS inventory cannot outlive the guard it was loaded under.
use qdev_bus::{Bus, ScsiAddress};

fn main() {
    let bus: Bus<ScsiAddress> = Bus::root("scsi.0");
    let guard = rcu::read();
    let luns = bus.addresses(&guard);
    drop(guard);
    println!("{}", luns.len());
}
