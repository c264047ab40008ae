//! `RcuCell` and `RcuList` as their users see them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use rcu::{RcuCell, RcuList};

struct Counted(u32, Arc<AtomicUsize>);
impl Drop for Counted {
    fn drop(&mut self) {
        self.1.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn a_replaced_value_stays_valid_until_the_guard_drops() {
    let drops = Arc::new(AtomicUsize::new(0));
    let cell = RcuCell::new(Counted(1, drops.clone()));
    let guard = rcu::read();
    let old = cell.load(&guard).unwrap();
    cell.replace(Counted(2, drops.clone()));
    rcu::call_rcu(|| {}); // nudges the worker; the old value must still wait for `guard`
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert_eq!(old.0, 1);
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    assert_eq!(cell.load(&guard).unwrap().0, 2);
    drop(guard);
    rcu::barrier();
    assert_eq!(drops.load(Ordering::SeqCst), 1);
    drop(cell);
    assert_eq!(drops.load(Ordering::SeqCst), 2);
}

#[test]
fn cell_clear_get_mut_and_into_inner() {
    let mut cell = RcuCell::new(5);
    *cell.get_mut().unwrap() += 1;
    assert_eq!(cell.load(&rcu::read()), Some(&6));
    cell.clear();
    assert_eq!(cell.load(&rcu::read()), None);
    cell.replace(7);
    assert_eq!(cell.into_inner(), Some(7));
    assert_eq!(RcuCell::<u8>::empty().into_inner(), None);
}

#[test]
fn cell_loads_under_a_qsbr_guard() {
    let cell = RcuCell::new("v1");
    let mut t = rcu::QsbrThread::register().unwrap();
    assert_eq!(cell.load(&t.read()), Some(&"v1"));
    cell.replace("v2");
    t.quiescent_state();
    assert_eq!(cell.load(&t.read()), Some(&"v2"));
    t.barrier();
}

#[test]
fn list_keeps_insertion_order_and_sorted_inserts() {
    let list = RcuList::new();
    for size in [4, 1, 3] {
        list.insert_before(size, |e| *e < size); // descending, like QEMU's RAM block list
    }
    list.push_front(9);
    list.push_back(0);
    let g = rcu::read();
    assert_eq!(list.iter(&g).copied().collect::<Vec<_>>(), [9, 4, 3, 1, 0]);
    assert_eq!(list.find(&g, |e| *e < 4), Some(&3));
    assert!(!list.is_empty(&g));
    assert!(RcuList::<u8>::new().is_empty(&g));
}

#[test]
fn a_reader_on_a_removed_node_continues_to_the_rest_of_the_list() {
    let list = RcuList::new();
    for i in 0..5 {
        list.push_back(i);
    }
    let g = rcu::read();
    let mut it = list.iter(&g);
    assert_eq!(it.next(), Some(&0));
    assert_eq!(it.next(), Some(&1)); // the iterator now stands on 1, pointing at 2
    assert!(list.remove_first(|e| *e == 2));
    assert!(list.remove_first(|e| *e == 1));
    assert_eq!(it.copied().collect::<Vec<_>>(), [2, 3, 4]);
    assert_eq!(list.iter(&g).copied().collect::<Vec<_>>(), [0, 3, 4]);
}

#[test]
fn removed_elements_are_dropped_once_after_a_grace_period() {
    let drops = Arc::new(AtomicUsize::new(0));
    let list = RcuList::new();
    for i in 0..10 {
        list.push_back(Counted(i, drops.clone()));
    }
    let g = rcu::read();
    assert_eq!(list.retain(|e| e.0 % 2 == 0), 5);
    assert!(!list.remove_first(|e| e.0 == 1));
    assert_eq!(
        drops.load(Ordering::SeqCst),
        0,
        "dropped while a reader may see them"
    );
    drop(g);
    rcu::barrier();
    assert_eq!(drops.load(Ordering::SeqCst), 5);
    drop(list);
    assert_eq!(drops.load(Ordering::SeqCst), 10);
}

#[test]
fn a_writer_batches_operations() {
    let list = RcuList::new();
    {
        let mut w = list.write();
        w.push_back(1);
        w.push_back(2);
        w.push_front(0);
        assert_eq!(w.iter().copied().collect::<Vec<_>>(), [0, 1, 2]);
        assert!(w.remove_first(|e| *e == 1));
    }
    assert_eq!(format!("{list:?}"), "[0, 2]");
}
