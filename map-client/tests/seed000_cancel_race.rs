//! Seed acc60586 ("dma-helpers: Fix race condition of continue_after_map_failure and
//! dma_aio_cancel"), replayed.
//!
//! QEMU's old design: a map client was a callback that the *releasing* thread ran; the
//! callback (`continue_after_map_failure`) created and scheduled a BH, while the DMA's
//! own thread could concurrently cancel the request (`dma_aio_cancel`: unregister,
//! delete the BH). Interleaving from the commit message:
//!
//! ```text
//!  continue_after_map_failure (releaser)      dma_aio_cancel (owner)
//!  aio_bh_new
//!                                             qemu_bh_delete
//!  qemu_bh_schedule   <- use after free
//! ```
//!
//! The new design registers the request's BH itself; notification only schedules it, and
//! cancel deletes it. These tests force the interleaving with barriers, on the old
//! design (modelled safely in Rust: the "use after free" shows up as work running after
//! the cancel returned, on the wrong thread) and on ours.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

use bottom_half::BhList;
use common::TestMemory;
use map_client::{Bounce, Direction};

const RAM: u64 = 0x1000;

/// The pre-fix map client list: callbacks run by whoever releases the buffer, and an
/// unregister that cannot stop a callback the notifier has already taken.
/// An old-style client: the callback QEMU's `cpu_register_map_client` stored.
type OldCallback = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct OldMapClients {
    list: Mutex<Vec<(u64, OldCallback)>>,
}

impl OldMapClients {
    fn register(&self, id: u64, cb: OldCallback) {
        self.list.lock().unwrap().push((id, cb));
    }
    fn unregister(&self, id: u64) {
        self.list.lock().unwrap().retain(|(i, _)| *i != id);
    }
    fn notify(&self, between_take_and_call: impl FnOnce()) {
        let taken: Vec<_> = std::mem::take(&mut *self.list.lock().unwrap());
        between_take_and_call();
        for (_, cb) in taken {
            cb();
        }
    }
}

/// What a cancelled request must never see: work done on its behalf after the cancel,
/// or on a thread other than its own.
#[derive(Default)]
struct Violations {
    ran_after_cancel: AtomicUsize,
    ran_on_wrong_thread: AtomicUsize,
}

#[test]
fn the_old_design_runs_work_after_cancel_on_the_releasing_thread() {
    let clients = Arc::new(OldMapClients::default());
    let cancelled = Arc::new(AtomicBool::new(false));
    let violations = Arc::new(Violations::default());
    let owner = thread::current().id();
    let (c, v) = (cancelled.clone(), violations.clone());
    clients.register(
        1,
        Box::new(move || {
            // continue_after_map_failure: creates and schedules the request's BH; here,
            // the work itself, done in the releasing thread.
            if c.load(Ordering::SeqCst) {
                v.ran_after_cancel.fetch_add(1, Ordering::SeqCst);
            }
            if thread::current().id() != owner {
                v.ran_on_wrong_thread.fetch_add(1, Ordering::SeqCst);
            }
        }),
    );
    let taken = Arc::new(Barrier::new(2));
    let cancel_done = Arc::new(Barrier::new(2));
    let releaser = {
        let (clients, taken, cancel_done) = (clients.clone(), taken.clone(), cancel_done.clone());
        thread::spawn(move || {
            clients.notify(|| {
                taken.wait();
                cancel_done.wait();
            })
        })
    };
    taken.wait();
    clients.unregister(1); // dma_aio_cancel
    cancelled.store(true, Ordering::SeqCst);
    cancel_done.wait();
    releaser.join().unwrap();
    assert_eq!(
        violations.ran_after_cancel.load(Ordering::SeqCst),
        1,
        "the old design should exhibit the race"
    );
    assert_eq!(violations.ran_on_wrong_thread.load(Ordering::SeqCst), 1);
}

/// The same race on our design: release (unmap, which notifies) and cancel start
/// together from a barrier, many times, so both orders and the overlap occur (the loom
/// model `tests/loom_map_client.rs` covers every interleaving).
#[test]
fn cancel_racing_release_runs_nothing_and_leaks_nothing() {
    let rounds = if cfg!(miri) { 20 } else { 2000 };
    let mem = Arc::new(TestMemory::new(RAM as usize, 0x10000));
    let bounce = Bounce::new(64);
    let list = BhList::new(|| {});
    let witness = Arc::new(());
    let runs = Arc::new(AtomicUsize::new(0));
    let home = thread::current().id();
    for _ in 0..rounds {
        let (r, w) = (runs.clone(), witness.clone());
        let retry = list.scheduler().new_bh(move || {
            let _keep = &w;
            assert_eq!(
                thread::current().id(),
                home,
                "a waiter ran away from its context"
            );
            r.fetch_add(1, Ordering::SeqCst);
        });
        let held = bounce.map(&*mem, RAM, 64, Direction::FromDevice).unwrap();
        let waiter = bounce.register(&retry);
        let start = Barrier::new(2);
        thread::scope(|s| {
            s.spawn(|| {
                start.wait();
                bounce.unmap(&*mem, held, 64).unwrap(); // release + notify
            });
            start.wait();
            waiter.cancel(); // dma_aio_cancel: unregister + delete the BH
        });
        // Whichever won, the cancelled request's BH never runs.
        list.poll();
        list.poll();
        assert_eq!(runs.load(Ordering::SeqCst), 0, "a cancelled waiter ran");
        drop(retry);
    }
    assert_eq!(bounce.in_use(), 0);
    assert_eq!(bounce.waiting(), 0);
    drop(list);
    assert_eq!(
        Arc::strong_count(&witness),
        1,
        "a cancelled waiter's callback leaked"
    );
}

/// Without cancel, every waiter is woken exactly once, in its own context, whatever the
/// interleaving of register and release.
#[test]
fn register_racing_release_never_loses_the_wakeup() {
    let rounds = if cfg!(miri) { 20 } else { 2000 };
    let mem = Arc::new(TestMemory::new(RAM as usize, 0x10000));
    let bounce = Bounce::new(64);
    let list = BhList::new(|| {});
    let runs = Arc::new(AtomicUsize::new(0));
    for round in 1..=rounds {
        let r = runs.clone();
        let retry = list.scheduler().new_bh(move || {
            r.fetch_add(1, Ordering::SeqCst);
        });
        let held = bounce.map(&*mem, RAM, 64, Direction::FromDevice).unwrap();
        let start = Barrier::new(2);
        let waiter = thread::scope(|s| {
            s.spawn(|| {
                start.wait();
                bounce.unmap(&*mem, held, 64).unwrap();
            });
            start.wait();
            bounce.register(&retry)
        });
        list.poll();
        assert_eq!(runs.load(Ordering::SeqCst), round, "a wake-up was lost");
        drop(waiter);
        retry.delete();
    }
}
