// A guard must be dropped on the thread that took it.
fn main() {
    let guard = rcu::read();
    std::thread::spawn(move || drop(guard));
}
