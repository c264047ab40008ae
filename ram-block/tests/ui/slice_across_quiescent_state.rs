// On a QSBR thread, a slice cannot survive a quiescent state: reporting one borrows the
// thread mutably, which the slice's guard prevents.
use ram_block::{GuestAddress, RamList};

fn main() {
    let ram = RamList::new();
    let mut thread = rcu::QsbrThread::register().unwrap();
    let guard = thread.read();
    let slice = ram.translate(&guard, GuestAddress(0), 1);
    thread.quiescent_state();
    println!("{}", slice.is_ok());
}
