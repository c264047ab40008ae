// A device found by address cannot outlive the guard it was found under.
use qdev_bus::{Bus, Device, HotplugHandler, ScsiAddress};

struct Disk;
impl Device for Disk {
    fn id(&self) -> &str {
        "disk0"
    }
}

fn main() {
    let bus: Bus<ScsiAddress> = Bus::root("scsi.0");
    bus.plug(ScsiAddress::new(0, 0), Box::new(Disk)).unwrap();
    let guard = rcu::read();
    let disk = bus.get(&guard, ScsiAddress::new(0, 0)).unwrap();
    drop(guard);
    println!("{}", disk.id());
}
