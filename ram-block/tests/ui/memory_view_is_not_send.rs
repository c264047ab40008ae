// A `memory()` view owns an RCU guard, which must be dropped on the thread that took it.
use ram_block::RamList;
use vm_memory::GuestAddressSpace;

fn main() {
    let ram = RamList::new();
    let mem = GuestAddressSpace::memory(&ram);
    std::thread::spawn(move || mem.len()).join().unwrap();
}
