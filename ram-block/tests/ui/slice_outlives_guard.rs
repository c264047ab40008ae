// A translated guest range cannot outlive the guard it was translated under: after the
// guard drops, a hot remove may unmap the block.
use ram_block::{Backing, GuestAddress, RamBlock, RamList};

fn main() {
    let ram = RamList::new();
    let anon = Backing::Anonymous { huge_pages: false };
    ram.add(RamBlock::new("ram", GuestAddress(0), 0x1000, anon).unwrap()).unwrap();
    let slice;
    {
        let guard = rcu::read();
        slice = ram.translate(&guard, GuestAddress(0), 16).unwrap();
    }
    println!("{}", slice.len());
}
