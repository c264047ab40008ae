// A reference into an RcuList cannot outlive the guard it was obtained under.
fn main() {
    let list = rcu::RcuList::new();
    list.push_back(String::from("x"));
    let guard = rcu::read();
    let first = list.iter(&guard).next().unwrap();
    drop(guard);
    println!("{first}");
}
