// A QSBR thread cannot report a quiescent state while it still holds a reference.
fn main() {
    let cell = rcu::RcuCell::new(1);
    let mut thread = rcu::QsbrThread::register().unwrap();
    let guard = thread.read();
    let r = cell.load(&guard).unwrap();
    thread.quiescent_state();
    println!("{r}");
}
