// Nor can another thread borrow the view: cloning it there would nest a guard into a
// read section that thread is not in.
use ram_block::RamList;

fn main() {
    let ram = RamList::new();
    let mem = ram.memory();
    std::thread::scope(|s| {
        s.spawn(|| mem.clone().len());
    });
}
