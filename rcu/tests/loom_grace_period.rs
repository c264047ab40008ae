//! Loom models of the grace-period protocol: a reader against an updater that
//! unpublishes a version, waits for a grace period, and frees it.
//!
//! Run with `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 cargo test -p rcu --release
//! --test loom_grace_period`. Loom cannot express membarrier(2), so the model domain uses
//! full fences on both sides (the crate's fallback mode); the membarrier mode differs
//! only in where those fences execute (DESIGN.md).
//!
//! Each model fails if `synchronize` returns while a read section that could see the
//! old version is still running: the reader then finds the version marked freed.

#![cfg(loom)]

use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use loom::thread;
use rcu::loom_model::ModelDomain;

/// Two versions of a datum: `current` names the published one; `freed[v]` is set when
/// the updater reclaims version `v`.
struct Data {
    current: AtomicUsize,
    freed: [AtomicBool; 2],
}

impl Data {
    fn new() -> Self {
        Data {
            current: AtomicUsize::new(0),
            freed: [AtomicBool::new(false), AtomicBool::new(false)],
        }
    }

    /// What a reader does inside its section: load the pointer, then use the version.
    fn read(&self) {
        let v = self.current.load(Ordering::Acquire);
        assert!(
            !self.freed[v].load(Ordering::Relaxed),
            "read version {v} after it was freed"
        );
    }

    /// Publish version 1, wait for a grace period, free version 0.
    fn update(&self, domain: &ModelDomain) {
        self.current.store(1, Ordering::Release);
        domain.synchronize();
        self.freed[0].store(true, Ordering::Relaxed);
    }
}

#[test]
fn memb_reader_against_updater() {
    loom::model(|| {
        let domain = Arc::new(ModelDomain::new());
        let data = Arc::new(Data::new());
        let reader = {
            let (domain, data) = (domain.clone(), data.clone());
            thread::spawn(move || {
                let r = domain.register();
                r.lock();
                data.read();
                r.unlock();
                r.unregister();
            })
        };
        data.update(&domain);
        reader.join().unwrap();
    });
}

#[test]
fn nested_memb_reader_against_updater() {
    loom::model(|| {
        let domain = Arc::new(ModelDomain::new());
        let data = Arc::new(Data::new());
        let reader = {
            let (domain, data) = (domain.clone(), data.clone());
            thread::spawn(move || {
                let r = domain.register();
                r.lock();
                r.lock();
                r.unlock();
                data.read();
                r.unlock();
                r.unregister();
            })
        };
        data.update(&domain);
        reader.join().unwrap();
    });
}

#[test]
fn qsbr_reader_against_updater() {
    loom::model(|| {
        let domain = Arc::new(ModelDomain::new());
        let data = Arc::new(Data::new());
        let reader = {
            let (domain, data) = (domain.clone(), data.clone());
            thread::spawn(move || {
                let r = domain.register();
                r.online();
                data.read();
                r.quiescent_state();
                data.read();
                r.offline();
                r.unregister();
            })
        };
        data.update(&domain);
        reader.join().unwrap();
    });
}

#[test]
fn two_updaters_share_grace_periods() {
    loom::model(|| {
        let domain = Arc::new(ModelDomain::new());
        let data = Arc::new(Data::new());
        let reader = {
            let (domain, data) = (domain.clone(), data.clone());
            thread::spawn(move || {
                let r = domain.register();
                r.lock();
                data.read();
                r.unlock();
                r.unregister();
            })
        };
        let other = {
            let domain = domain.clone();
            thread::spawn(move || domain.synchronize())
        };
        data.update(&domain);
        reader.join().unwrap();
        other.join().unwrap();
    });
}
