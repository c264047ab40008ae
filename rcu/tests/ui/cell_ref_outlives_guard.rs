// A reference loaded from an RcuCell cannot outlive the guard it was loaded under.
fn main() {
    let cell = rcu::RcuCell::new(1);
    let r;
    {
        let guard = rcu::read();
        r = cell.load(&guard).unwrap();
    }
    println!("{r}");
}
