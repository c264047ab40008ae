//! Direct and bounced mappings, the budget, and waiters, as a device model sees them.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bottom_half::BhList;
use common::TestMemory;
use map_client::{Bounce, DEFAULT_BUDGET, Direction, MapError, Mapping};

const RAM: u64 = 0x1000;

#[test]
fn ram_is_mapped_directly_up_to_its_end() {
    let mem = TestMemory::new(RAM as usize, 0x1000);
    let bounce = Bounce::default();
    assert_eq!(bounce.budget(), DEFAULT_BUDGET);
    let m = bounce.map(&mem, 0x10, 0x20, Direction::ToDevice).unwrap();
    assert!(matches!(m, Mapping::Direct { len: 0x20, .. }));
    // Crossing from RAM into MMIO: only the RAM prefix, directly.
    let m = bounce
        .map(&mem, RAM - 4, 64, Direction::FromDevice)
        .unwrap();
    assert!(matches!(m, Mapping::Direct { len: 4, .. }));
    assert_eq!(bounce.in_use(), 0);
}

#[test]
fn mmio_is_bounced_prefilled_and_written_back() {
    let mem = TestMemory::new(RAM as usize, 0x1000);
    mem.mmio.lock().unwrap()[..8].copy_from_slice(b"abcdefgh");
    let bounce = Bounce::new(4096);
    let m = bounce.map(&mem, RAM, 8, Direction::ToDevice).unwrap();
    let Mapping::Bounce(ref b) = m else {
        panic!("expected a bounce buffer")
    };
    assert_eq!(b.as_slice(), b"abcdefgh", "prefilled for a device read");
    assert_eq!(bounce.in_use(), 8);
    bounce.unmap(&mem, m, 8).unwrap();
    assert_eq!(bounce.in_use(), 0);

    let m = bounce
        .map(&mem, RAM + 0x100, 4, Direction::FromDevice)
        .unwrap();
    let Mapping::Bounce(mut b) = m else {
        panic!("expected a bounce buffer")
    };
    assert_eq!(b.as_slice(), [0; 4], "not prefilled for a device write");
    b.as_mut_slice().copy_from_slice(b"wxyz");
    bounce.unmap(&mem, Mapping::Bounce(b), 3).unwrap();
    assert_eq!(
        &mem.mmio.lock().unwrap()[0x100..0x104],
        b"wxy\0",
        "only access_len written back"
    );
}

#[test]
fn the_budget_shortens_then_refuses() {
    let mem = TestMemory::new(RAM as usize, 0x10000);
    let bounce = Bounce::new(100);
    let a = bounce.map(&mem, RAM, 60, Direction::FromDevice).unwrap();
    let b = bounce
        .map(&mem, RAM + 60, 60, Direction::FromDevice)
        .unwrap();
    assert_eq!((a.len(), b.len()), (60, 40));
    assert!(matches!(
        bounce.map(&mem, RAM, 1, Direction::FromDevice),
        Err(MapError::Busy { len: 1, .. })
    ));
    drop(a); // dropping without unmap returns the budget (no write-back)
    assert_eq!(bounce.in_use(), 40);
    assert_eq!(
        bounce
            .map(&mem, RAM, 1000, Direction::FromDevice)
            .unwrap()
            .len(),
        60
    );
}

#[test]
fn bad_requests_get_errors() {
    let mem = TestMemory::new(RAM as usize, 0x100);
    let bounce = Bounce::default();
    assert!(matches!(
        bounce.map(&mem, 0, 0, Direction::ToDevice),
        Err(MapError::Empty { addr: 0 })
    ));
    // Beyond MMIO: the prefill fails, and the budget is not leaked.
    let err = bounce
        .map(&mem, u64::MAX - 3, 8, Direction::ToDevice)
        .unwrap_err();
    assert!(matches!(err, MapError::Access { .. }), "{err}");
    assert_eq!(bounce.in_use(), 0);
    // A write-back that fails is reported, and the budget is released.
    let m = bounce
        .map(&mem, RAM + 0xf0, 0x20, Direction::FromDevice)
        .unwrap();
    assert!(bounce.unmap(&mem, m, 0x20).is_err());
    assert_eq!(bounce.in_use(), 0);
}

#[test]
fn a_waiter_is_scheduled_in_its_context_when_budget_returns() {
    let mem = TestMemory::new(RAM as usize, 0x10000);
    let bounce = Bounce::new(16);
    let list = BhList::new(|| {});
    let runs = Arc::new(AtomicUsize::new(0));
    let home = std::thread::current().id();
    let r = runs.clone();
    let retry = list.scheduler().new_bh(move || {
        assert_eq!(
            std::thread::current().id(),
            home,
            "a waiter ran in the releasing thread"
        );
        r.fetch_add(1, Ordering::SeqCst);
    });
    let held = bounce.map(&mem, RAM, 16, Direction::FromDevice).unwrap();
    let waiter = bounce.register(&retry);
    assert_eq!(bounce.waiting(), 1);
    assert!(!list.poll(), "nothing released yet");
    // Released from another thread: the BH is only scheduled there.
    std::thread::scope(|s| {
        s.spawn(|| drop(held));
    });
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    assert_eq!(bounce.waiting(), 0, "notification is one-shot");
    assert!(list.poll());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    drop(waiter);
}

#[test]
fn registering_while_budget_is_free_schedules_at_once() {
    let bounce = Bounce::new(16);
    let list = BhList::new(|| {});
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let bh = list.scheduler().new_bh(move || {
        r.fetch_add(1, Ordering::SeqCst);
    });
    let _waiter = bounce.register(&bh);
    assert_eq!(bounce.waiting(), 0);
    assert!(list.poll());
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

#[test]
fn dropping_a_waiter_unregisters_it() {
    let mem = TestMemory::new(RAM as usize, 0x10000);
    let bounce = Bounce::new(16);
    let list = BhList::new(|| {});
    let bh = list
        .scheduler()
        .new_bh(|| panic!("an unregistered waiter ran"));
    let held = bounce.map(&mem, RAM, 16, Direction::FromDevice).unwrap();
    drop(bounce.register(&bh));
    assert_eq!(bounce.waiting(), 0);
    drop(held);
    assert!(!list.poll());
}
