//! Loom model of teardown: a producer that queues into a list being dropped must see
//! the owner's last pops (else it pops, and frees, a node the owner already took).
//! Found by review; with `closed` stored and loaded Relaxed this model aborted with a
//! double free.

#![cfg(loom)]
use bottom_half::BhList;
use loom::thread;

#[test]
fn close_vs_late_schedule() {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = Some(3);
    b.check(|| {
        let list = BhList::new(|| {});
        let sched = list.scheduler();
        // A pending BH the owner pops in Drop.
        sched.schedule_oneshot(|| {});
        let s2 = sched.clone();
        let t = thread::spawn(move || s2.schedule_oneshot(|| {}));
        drop(list);
        t.join().unwrap();
    });
}
