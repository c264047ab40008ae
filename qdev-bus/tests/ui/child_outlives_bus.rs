// A child cannot outlive its bus, even while a guard lives.
use qdev_bus::{Bus, ScsiAddress};

fn main() {
    let guard = rcu::read();
    let bus: Bus<ScsiAddress> = Bus::root("scsi.0");
    let first = bus.iter(&guard).next();
    drop(bus);
    println!("{}", first.is_some());
}
