//! Loom model of the child list's protocol: insert and remove against a reader that
//! walks the list, over a minimal RCU list built here from loom atomics.
//!
//! `rcu` exposes only its grace-period core under loom (its own `tests/loom_*.rs`
//! model that), so this model re-creates the part `Bus` relies on, small enough for
//! loom to explore every interleaving:
//!
//! - plug: the device is initialised (realized) *before* the node is linked with a
//!   Release store; the reader's Acquire load of the link must then see it initialised;
//! - unplug: the node is unlinked, its `next` left intact (a reader standing on it
//!   still reaches the rest of the list), a grace period passes, and only then is the
//!   device unrealized and poisoned (standing in for unrealize + `Drop`);
//! - the grace period is the one `rcu` uses where membarrier is missing: the reader
//!   marks itself active, then a SeqCst fence; the updater fences, then waits until
//!   the reader is inactive.
//!
//! Device state lives in `loom::cell::UnsafeCell`, so loom reports any access of the
//! reader that is not ordered with the writer's initialisation or poisoning (a data race
//! is how a use-after-free or use-before-realize shows up in a model). The reader also
//! asserts what it sees: never a poisoned device, always the nodes nobody removes.
//! The last model removes the grace period and must fail, to show the model can.
//!
//! Plain `cargo test -p qdev-bus --test loom_child_list` runs it (loom needs no
//! `--cfg loom` for a self-contained model); `LOOM_MAX_PREEMPTIONS` bounds it.

#![cfg(not(miri))]

use std::ptr;

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicPtr, AtomicUsize, Ordering, fence};
use loom::thread;

const REALIZED: u64 = 1;
const POISONED: u64 = 0xDEAD;

struct Node {
    id: u64,
    /// The device's state: written by plug and reclaim, read by the reader.
    state: UnsafeCell<u64>,
    next: AtomicPtr<Node>,
}

/// A minimal RCU list with one reader record.
struct List {
    head: AtomicPtr<Node>,
    /// Every node ever allocated, freed when the model ends (reclaim only poisons, so
    /// that a broken model reports a race instead of touching freed memory).
    nodes: std::sync::Mutex<Vec<*mut Node>>,
    /// The reader's record: 1 inside a read section.
    reader_active: AtomicUsize,
}

// SAFETY: nodes are shared between loom threads through atomics; their state is
// accessed through loom's UnsafeCell, whose checker is the point of this test.
unsafe impl Send for List {}
// SAFETY: as above.
unsafe impl Sync for List {}

impl List {
    fn new(ids: &[u64]) -> List {
        let list = List {
            head: AtomicPtr::new(ptr::null_mut()),
            nodes: std::sync::Mutex::new(Vec::new()),
            reader_active: AtomicUsize::new(0),
        };
        for &id in ids.iter().rev() {
            list.plug_front(id);
        }
        list
    }

    /// Realize, then publish (Release pairs with the reader's Acquire loads).
    fn plug_front(&self, id: u64) {
        let node = Box::into_raw(Box::new(Node {
            id,
            state: UnsafeCell::new(0),
            next: AtomicPtr::new(self.head.load(Ordering::Relaxed)),
        }));
        self.nodes.lock().unwrap().push(node);
        // SAFETY: not yet published; we are its only user.
        unsafe { (*node).state.with_mut(|s| *s = REALIZED) };
        self.head.store(node, Ordering::Release);
    }

    /// Unlinks `id` (keeping its `next`), waits for a grace period if `grace_period`,
    /// then unrealizes and poisons it.
    fn unplug(&self, id: u64, grace_period: bool) {
        let mut link = &self.head;
        loop {
            let p = link.load(Ordering::Relaxed);
            // SAFETY: nodes are never freed while the model runs.
            let node = unsafe { &*p };
            if node.id == id {
                link.store(node.next.load(Ordering::Relaxed), Ordering::Release);
                if grace_period {
                    self.synchronize();
                }
                // SAFETY: loom's UnsafeCell checks this write against the reader's reads;
                // reporting a race here is how a missing grace period shows up.
                node.state.with_mut(|s| unsafe { *s = POISONED });
                return;
            }
            link = &node.next;
        }
    }

    /// The fence-mode grace period for one reader: the SeqCst fence pairs with the
    /// reader's fence after it marks itself active, so either we see it active (and
    /// wait for its Release on exit) or it sees our unlink.
    fn synchronize(&self) {
        fence(Ordering::SeqCst);
        while self.reader_active.load(Ordering::Acquire) != 0 {
            thread::yield_now();
        }
    }

    /// One read section: walks the list, checking each device, returns the ids seen.
    fn read_walk(&self) -> Vec<u64> {
        self.reader_active.store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        let mut seen = Vec::new();
        let mut p = self.head.load(Ordering::Acquire);
        while !p.is_null() {
            // SAFETY: nodes are never freed while the model runs.
            let node = unsafe { &*p };
            // SAFETY: checked by loom against plug's and unplug's writes, as above.
            let state = node.state.with(|s| unsafe { *s });
            assert_eq!(
                state, REALIZED,
                "device {} used while not realized",
                node.id
            );
            seen.push(node.id);
            p = node.next.load(Ordering::Acquire);
        }
        // Release: our reads above happen before an updater that sees us inactive.
        self.reader_active.store(0, Ordering::Release);
        seen
    }
}

impl Drop for List {
    fn drop(&mut self) {
        for node in self.nodes.get_mut().unwrap().drain(..) {
            // SAFETY: every node came from Box::into_raw and is freed once, here.
            drop(unsafe { Box::from_raw(node) });
        }
    }
}

fn model(f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    if builder.preemption_bound.is_none() {
        builder.preemption_bound = Some(3);
    }
    builder.check(f);
}

/// Runs one read section on a new thread. The reader is the spawned thread (and the
/// writer the model's main thread) because loom 0.7 stops exploring when a spawned
/// thread's first operation is an atomic load (tokio-rs/loom#392); a reader's first
/// operation is the store that marks it active.
fn spawn_reader(list: &Arc<List>) -> thread::JoinHandle<Vec<u64>> {
    let list = list.clone();
    thread::spawn(move || list.read_walk())
}

/// Plug vs walk: the reader sees the new device realized, or not at all.
#[test]
fn insert_vs_iterate() {
    model(|| {
        let list = Arc::new(List::new(&[2]));
        let reader = spawn_reader(&list);
        list.plug_front(1);
        let seen = reader.join().unwrap();
        assert!(seen == [2] || seen == [1, 2], "{seen:?}");
    });
}

/// Unplug vs walk: the reader may or may not see the removed device, always sees it
/// realized, and always reaches the device after it (the removed node keeps `next`).
#[test]
fn remove_vs_iterate() {
    model(|| {
        let list = Arc::new(List::new(&[1, 2, 3]));
        let reader = spawn_reader(&list);
        list.unplug(2, true);
        let seen = reader.join().unwrap();
        assert!(seen == [1, 2, 3] || seen == [1, 3], "{seen:?}");
    });
}

/// Plug one, unplug another, against a walk.
#[test]
fn insert_and_remove_vs_iterate() {
    model(|| {
        let list = Arc::new(List::new(&[1, 2]));
        let reader = spawn_reader(&list);
        list.plug_front(0);
        list.unplug(1, true);
        let seen = reader.join().unwrap();
        assert!(seen.ends_with(&[2]), "{seen:?}");
    });
}

/// The same unplug without a grace period: loom must find the reader using a
/// poisoned (freed) device.
#[test]
#[should_panic]
fn remove_without_grace_period_is_caught() {
    model(|| {
        let list = Arc::new(List::new(&[1, 2]));
        let reader = spawn_reader(&list);
        list.unplug(1, false);
        reader.join().unwrap();
    });
}
