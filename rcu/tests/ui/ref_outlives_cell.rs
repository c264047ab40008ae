// A reference cannot outlive the cell either (dropping the cell frees the value at once).
fn main() {
    let guard = rcu::read();
    let cell = rcu::RcuCell::new(1);
    let r = cell.load(&guard).unwrap();
    drop(cell);
    println!("{r}");
}
