//! The bus's read paths against the obvious alternative, a `RwLock<Vec<_>>` bus, in the
//! same criterion groups so the ratios come from one run:
//!
//! - `find_by_id/N`: QMP-style lookup by id among N children (the middle one);
//! - `find_by_address/N`: dispatch to the child at an address (the middle one); the
//!   `RwLock` bus both scans (as QEMU does) and binary-searches;
//! - `iterate/N`: a full walk of N children;
//! - `iterate_while_hotplug/N`: the same while another thread plugs and unplugs a device
//!   in a tight loop (each RCU unplug costs a grace period, whose membarrier IPIs reach
//!   the reader's CPU).
//!
//! Each group also measures `rcu_cow_vec`: not a peer but the alternative design (a
//! sorted vector behind an `RcuCell`, copied on each change), to size the trade-off.
//!
//! `cargo bench -p qdev-bus --bench qdev_bus -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use qdev_bus::{Bus, Device, HotplugHandler};
use rcu::RcuCell;

const SIZES: [u32; 3] = [1, 64, 1024];

struct Dev {
    id: String,
}

impl Device for Dev {
    fn id(&self) -> &str {
        &self.id
    }
}

fn dev(id: String) -> Box<Dev> {
    Box::new(Dev { id })
}

/// The peer: a bus whose children sit in a sorted vector behind a reader-writer lock.
#[derive(Default)]
struct RwLockBus {
    children: RwLock<Vec<(u32, Arc<dyn Device>)>>,
}

impl RwLockBus {
    fn plug(&self, address: u32, device: Arc<dyn Device>) {
        let mut children = self.children.write().unwrap();
        let at = children.partition_point(|c| c.0 < address);
        children.insert(at, (address, device));
    }
    fn unplug(&self, address: u32) {
        self.children.write().unwrap().retain(|c| c.0 != address);
    }
}

/// Not a peer but a design alternative, measured to inform it: children in a sorted
/// vector published through an `RcuCell` and copied on every change.
#[derive(Default)]
struct CowBus {
    writer: Mutex<()>,
    children: RcuCell<Vec<(u32, Arc<dyn Device>)>>,
}

impl CowBus {
    fn update(&self, f: impl FnOnce(&mut Vec<(u32, Arc<dyn Device>)>)) {
        let _writer = self.writer.lock().unwrap();
        let mut children = self
            .children
            .load(&rcu::read())
            .cloned()
            .unwrap_or_default();
        f(&mut children);
        self.children.replace(children);
    }
    fn plug(&self, address: u32, device: Arc<dyn Device>) {
        self.update(|c| c.insert(c.partition_point(|c| c.0 < address), (address, device)));
    }
    fn unplug(&self, address: u32) {
        self.update(|c| c.retain(|c| c.0 != address));
    }
}

fn arc_dev(id: String) -> Arc<dyn Device> {
    Arc::new(Dev { id })
}

/// The three buses with `n` children at addresses 0..n, ids "dev{address}".
fn buses(n: u32) -> (Bus<u32>, RwLockBus, CowBus) {
    let rcu_bus: Bus<u32> = Bus::root("bench.0");
    let rw_bus = RwLockBus::default();
    let cow_bus = CowBus::default();
    for a in 0..n {
        rcu_bus.plug(a, dev(format!("dev{a}"))).unwrap();
        rw_bus.plug(a, arc_dev(format!("dev{a}")));
        cow_bus.plug(a, arc_dev(format!("dev{a}")));
    }
    (rcu_bus, rw_bus, cow_bus)
}

fn find_by_id(c: &mut Criterion) {
    let mut group = c.benchmark_group("find_by_id");
    for n in SIZES {
        let (rcu_bus, rw_bus, cow_bus) = buses(n);
        let id = format!("dev{}", n / 2);
        group.bench_with_input(BenchmarkId::new("rcu_bus", n), &id, |b, id| {
            b.iter(|| {
                let guard = rcu::read();
                rcu_bus.find_by_id(&guard, black_box(id)).is_some()
            })
        });
        group.bench_with_input(BenchmarkId::new("rwlock_vec", n), &id, |b, id| {
            b.iter(|| {
                let children = rw_bus.children.read().unwrap();
                children.iter().any(|c| c.1.id() == black_box(id.as_str()))
            })
        });
        group.bench_with_input(BenchmarkId::new("rcu_cow_vec", n), &id, |b, id| {
            b.iter(|| {
                let guard = rcu::read();
                let children = cow_bus.children.load(&guard).unwrap();
                children.iter().any(|c| c.1.id() == black_box(id.as_str()))
            })
        });
    }
    group.finish();
}

fn find_by_address(c: &mut Criterion) {
    let mut group = c.benchmark_group("find_by_address");
    for n in SIZES {
        let (rcu_bus, rw_bus, cow_bus) = buses(n);
        let a = n / 2;
        group.bench_function(BenchmarkId::new("rcu_bus", n), |b| {
            b.iter(|| {
                let guard = rcu::read();
                rcu_bus.get(&guard, black_box(a)).map(|d| d.id().len())
            })
        });
        group.bench_function(BenchmarkId::new("rwlock_vec_scan", n), |b| {
            b.iter(|| {
                let children = rw_bus.children.read().unwrap();
                let a = black_box(a);
                children.iter().find(|c| c.0 == a).map(|c| c.1.id().len())
            })
        });
        group.bench_function(BenchmarkId::new("rwlock_vec_bsearch", n), |b| {
            b.iter(|| {
                let children = rw_bus.children.read().unwrap();
                let at = children.binary_search_by_key(&black_box(a), |c| c.0);
                at.ok().map(|i| children[i].1.id().len())
            })
        });
        group.bench_function(BenchmarkId::new("rcu_cow_vec_bsearch", n), |b| {
            b.iter(|| {
                let guard = rcu::read();
                let children = cow_bus.children.load(&guard).unwrap();
                let at = children.binary_search_by_key(&black_box(a), |c| c.0);
                at.ok().map(|i| children[i].1.id().len())
            })
        });
    }
    group.finish();
}

/// The baseline for `iterate_while_hotplug`: the same walks with no writer.
fn iterate(c: &mut Criterion) {
    let mut group = c.benchmark_group("iterate");
    for n in [64, 1024] {
        let (rcu_bus, rw_bus, cow_bus) = buses(n);
        group.bench_function(BenchmarkId::new("rcu_bus", n), |b| {
            b.iter(|| {
                let guard = rcu::read();
                rcu_bus.iter(&guard).map(|c| c.address()).sum::<u32>()
            })
        });
        group.bench_function(BenchmarkId::new("rwlock_vec", n), |b| {
            b.iter(|| {
                let children = rw_bus.children.read().unwrap();
                children.iter().map(|c| c.0).sum::<u32>()
            })
        });
        group.bench_function(BenchmarkId::new("rcu_cow_vec", n), |b| {
            b.iter(|| {
                let guard = rcu::read();
                let children = cow_bus.children.load(&guard).unwrap();
                children.iter().map(|c| c.0).sum::<u32>()
            })
        });
    }
    group.finish();
}

fn iterate_while_hotplug(c: &mut Criterion) {
    let mut group = c.benchmark_group("iterate_while_hotplug");
    for n in [64, 1024] {
        let (rcu_bus, rw_bus, cow_bus) = buses(n);
        let stop = AtomicBool::new(false);
        thread::scope(|s| {
            s.spawn(|| {
                // The main thread's hotplug loop: one spare address, a fresh id each time
                // (an unplugged id stays taken until its reclaim).
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("hot{k}");
                    rcu_bus.plug(n, dev(id.clone())).unwrap();
                    rcu_bus.unplug(&id).unwrap();
                    k += 1;
                }
            });
            group.bench_function(BenchmarkId::new("rcu_bus", n), |b| {
                b.iter(|| {
                    let guard = rcu::read();
                    rcu_bus.iter(&guard).map(|c| c.address()).sum::<u32>()
                })
            });
            stop.store(true, Ordering::Relaxed);
        });
        stop.store(false, Ordering::Relaxed);
        thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    rw_bus.plug(n, Arc::new(Dev { id: "hot".into() }));
                    rw_bus.unplug(n);
                }
            });
            group.bench_function(BenchmarkId::new("rwlock_vec", n), |b| {
                b.iter(|| {
                    let children = rw_bus.children.read().unwrap();
                    children.iter().map(|c| c.0).sum::<u32>()
                })
            });
            stop.store(true, Ordering::Relaxed);
        });
        stop.store(false, Ordering::Relaxed);
        thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    cow_bus.plug(n, Arc::new(Dev { id: "hot".into() }));
                    cow_bus.unplug(n);
                }
            });
            group.bench_function(BenchmarkId::new("rcu_cow_vec", n), |b| {
                b.iter(|| {
                    let guard = rcu::read();
                    let children = cow_bus.children.load(&guard).unwrap();
                    children.iter().map(|c| c.0).sum::<u32>()
                })
            });
            stop.store(true, Ordering::Relaxed);
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    find_by_id,
    find_by_address,
    iterate,
    iterate_while_hotplug
);
criterion_main!(benches);
