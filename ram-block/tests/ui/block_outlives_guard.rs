// A block found under a guard cannot outlive the guard.
use ram_block::{GuestAddress, RamList};

fn main() {
    let ram = RamList::new();
    let block = {
        let guard = rcu::read();
        ram.find(&guard, GuestAddress(0))
    };
    println!("{:?}", block.map(|b| b.name()));
}
