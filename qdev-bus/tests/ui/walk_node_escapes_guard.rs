// Nodes visited by a walk cannot be kept past the walk's guard.
use qdev_bus::{Bus, Node, Order, PciAddress};

fn main() {
    let bus: Bus<PciAddress> = Bus::root("pci.0");
    let mut kept: Vec<Node<'_>> = Vec::new();
    {
        let guard = rcu::read();
        bus.walk(&guard, Order::Pre, |node| kept.push(node));
    }
    println!("{}", kept.len());
}
