//! Loom models of register / unregister / notify. Run with `RUSTFLAGS="--cfg loom"
//! LOOM_MAX_PREEMPTIONS=2 cargo test -p map-client --release --test loom_map_client`.

#![cfg(loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;

use bottom_half::BhList;
use map_client::{Bounce, Direction, GuestMemoryAccess, Mapping};

/// MMIO only: everything is bounced.
struct Mmio;
impl GuestMemoryAccess for Mmio {
    type Direct<'a> = ();
    type Error = std::io::Error;
    fn map_direct(&self, _: u64, _: usize) -> Option<((), usize)> {
        None
    }
    fn read(&self, _: u64, _: &mut [u8]) -> std::io::Result<()> {
        Ok(())
    }
    fn write(&self, _: u64, _: &[u8]) -> std::io::Result<()> {
        Ok(())
    }
}

/// A waiter registering while the buffer is released: its BH is scheduled either by
/// the release or by the registration itself; never neither.
#[test]
fn register_vs_release_loses_no_wakeup() {
    loom::model(|| {
        let bounce = Bounce::new(8);
        let list = BhList::new(|| {});
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let bh = list.scheduler().new_bh(move || {
            r.fetch_add(1, Ordering::Relaxed);
        });
        let Ok(Mapping::Bounce(held)) = bounce.map(&Mmio, 0, 8, Direction::FromDevice) else {
            panic!()
        };
        let releaser = thread::spawn(move || drop(held));
        let waiter = bounce.register(&bh);
        releaser.join().unwrap();
        list.poll();
        assert_eq!(runs.load(Ordering::Relaxed), 1, "lost wake-up");
        drop(waiter);
        bh.delete();
        list.poll();
    });
}

/// A waiter cancelled while the buffer is released: its BH never runs.
#[test]
fn cancel_vs_release_runs_nothing() {
    loom::model(|| {
        let bounce = Bounce::new(8);
        let list = BhList::new(|| {});
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let bh = list.scheduler().new_bh(move || {
            r.fetch_add(1, Ordering::Relaxed);
        });
        let Ok(Mapping::Bounce(held)) = bounce.map(&Mmio, 0, 8, Direction::FromDevice) else {
            panic!()
        };
        let waiter = bounce.register(&bh);
        let releaser = thread::spawn(move || drop(held));
        waiter.cancel();
        releaser.join().unwrap();
        list.poll();
        assert_eq!(runs.load(Ordering::Relaxed), 0, "a cancelled waiter ran");
        assert_eq!(bounce.waiting(), 0);
    });
}
