//! The bottom-half scenarios of QEMU's tests/unit/test-aio.c, at the level of the BH
//! list: `list.poll()` is `aio_poll(ctx, false)` restricted to BHs, and the expected
//! progress results are QEMU's.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use bottom_half::{Bh, BhList};

fn list() -> BhList {
    BhList::new(|| {})
}

/// QEMU's `BHTestData`: a run counter, a maximum, and the BH itself (the callback
/// reaches its own BH through it).
#[derive(Default)]
struct BhTestData {
    n: AtomicUsize,
    max: usize,
    bh: Mutex<Option<Bh>>,
}

impl BhTestData {
    fn new(max: usize) -> Arc<Self> {
        Arc::new(BhTestData {
            max,
            ..Default::default()
        })
    }
    fn n(&self) -> usize {
        self.n.load(Ordering::SeqCst)
    }
    fn bh(&self) -> Bh {
        self.bh.lock().unwrap().clone().expect("BH already deleted")
    }
}

/// `bh_test_cb`: count, and reschedule until `max`.
fn new_test_bh(list: &BhList, data: &Arc<BhTestData>) -> Bh {
    let d = data.clone();
    let bh = list.scheduler().new_bh(move || {
        if d.n.fetch_add(1, Ordering::SeqCst) + 1 < d.max {
            d.bh().schedule();
        }
    });
    *data.bh.lock().unwrap() = Some(bh.clone());
    bh
}

/// `bh_delete_cb`: count, reschedule until `max`, then delete itself.
fn new_delete_bh(list: &BhList, data: &Arc<BhTestData>) -> Bh {
    let d = data.clone();
    let bh = list.scheduler().new_bh(move || {
        if d.n.fetch_add(1, Ordering::SeqCst) + 1 < d.max {
            d.bh().schedule();
        } else {
            d.bh.lock().unwrap().take().unwrap().delete();
        }
    });
    *data.bh.lock().unwrap() = Some(bh.clone());
    bh
}

#[test]
fn bh_schedule() {
    let list = list();
    let data = BhTestData::new(0);
    let bh = new_test_bh(&list, &data);
    bh.schedule();
    assert_eq!(data.n(), 0);
    assert!(list.poll());
    assert_eq!(data.n(), 1);
    assert!(!list.poll());
    assert_eq!(data.n(), 1);
    bh.delete();
}

#[test]
fn bh_schedule10() {
    let list = list();
    let data = BhTestData::new(10);
    let bh = new_test_bh(&list, &data);
    bh.schedule();
    assert_eq!(data.n(), 0);
    assert!(list.poll());
    assert_eq!(data.n(), 1, "a self-rescheduling BH runs once per poll");
    assert!(list.poll());
    assert_eq!(data.n(), 2);
    while data.n() < 10 {
        list.poll();
    }
    assert_eq!(data.n(), 10);
    assert!(!list.poll());
    assert_eq!(data.n(), 10);
    bh.delete();
}

#[test]
fn bh_cancel() {
    let list = list();
    let data = BhTestData::new(0);
    let bh = new_test_bh(&list, &data);
    bh.schedule();
    assert_eq!(data.n(), 0);
    bh.cancel();
    assert_eq!(data.n(), 0);
    assert!(!list.poll());
    assert_eq!(data.n(), 0);
    bh.delete();
}

#[test]
fn bh_delete() {
    let list = list();
    let data = BhTestData::new(0);
    let bh = new_test_bh(&list, &data);
    bh.schedule();
    assert_eq!(data.n(), 0);
    bh.delete();
    assert_eq!(data.n(), 0);
    assert!(!list.poll());
    assert_eq!(data.n(), 0);
}

#[test]
fn bh_delete_from_cb() {
    let list = list();
    let data1 = BhTestData::new(1);
    new_delete_bh(&list, &data1).schedule();
    assert_eq!(data1.n(), 0);
    while data1.n() < data1.max {
        list.poll();
    }
    assert_eq!(data1.n(), data1.max);
    assert!(data1.bh.lock().unwrap().is_none());
    assert!(!list.poll());
}

#[test]
fn bh_delete_from_cb_many() {
    let list = list();
    let data = [
        BhTestData::new(1),
        BhTestData::new(3),
        BhTestData::new(2),
        BhTestData::new(4),
    ];
    for d in &data {
        new_delete_bh(&list, d).schedule();
    }
    for d in &data {
        assert_eq!(d.n(), 0);
    }
    assert!(list.poll());
    for d in &data {
        assert_eq!(d.n(), 1);
    }
    assert!(data[0].bh.lock().unwrap().is_none());
    while data.iter().any(|d| d.n() < d.max) {
        list.poll();
    }
    for d in &data {
        assert_eq!(d.n(), d.max);
        assert!(d.bh.lock().unwrap().is_none());
    }
    assert!(!list.poll());
}

#[test]
fn bh_flush() {
    let list = list();
    let data = BhTestData::new(0);
    let bh = new_test_bh(&list, &data);
    bh.schedule();
    assert_eq!(data.n(), 0);
    assert!(list.poll());
    assert_eq!(data.n(), 1);
    assert!(!list.poll());
    assert_eq!(data.n(), 1);
    bh.delete();
}
