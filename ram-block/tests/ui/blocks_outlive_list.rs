// A version of the map borrows the list handle too: it cannot outlive it.
use ram_block::RamList;

fn main() {
    let guard = rcu::read();
    let blocks = {
        let ram = RamList::new();
        ram.blocks(&guard)
    };
    println!("{}", blocks.len());
}
