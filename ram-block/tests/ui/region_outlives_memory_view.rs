// A region obtained through vm-memory's `memory()` view cannot outlive the view, which
// owns the read guard.
use ram_block::{GuestAddress, RamList};
use vm_memory::{GuestAddressSpace, GuestMemoryBackend};

fn main() {
    let ram = RamList::new();
    let region;
    {
        let mem = GuestAddressSpace::memory(&ram);
        region = mem.find_region(GuestAddress(0));
    }
    println!("{}", region.is_some());
}
