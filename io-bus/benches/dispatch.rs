//! A vCPU's dispatch (find the device at an address, call it) through [`IoBus`] against
//! the obvious peer, a `RwLock<BTreeMap>` address map, in one criterion group so the
//! ratios come from one run:
//!
//! - `read/N`: a one-byte read of the middle device among N mapped ranges;
//! - `read_while_remap/N`: the same while another thread moves a range in a tight loop
//!   (what BAR programming does; each RCU publish costs a grace period later, the
//!   lock costs the reader now).
//!
//! `cargo bench -p io-bus --bench dispatch -- --warm-up-time 1 --measurement-time 2`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, criterion_group, criterion_main};
use io_bus::{BusDevice, IoBus};

const SIZES: [u64; 3] = [1, 16, 256];
/// Range length and stride of the mapped devices.
const STRIDE: u64 = 0x10;

struct Reg;

impl BusDevice for Reg {
    fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8);
    }
    fn write(&self, _: u64, _: &[u8]) {}
}

/// A mapped range of the peer: length and device, keyed by base.
type Mapped = (u64, Arc<dyn BusDevice>);

/// The peer: ranges keyed by base in a B-tree behind a reader-writer lock.
#[derive(Default)]
struct LockedMap(RwLock<BTreeMap<u64, Mapped>>);

impl LockedMap {
    fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let map = self.0.read().unwrap();
        match map.range(..=addr).next_back() {
            Some((&base, (len, dev))) if addr - base < *len => {
                dev.read(addr - base, data);
                true
            }
            _ => false,
        }
    }
    fn insert(&self, base: u64, len: u64, dev: Arc<dyn BusDevice>) {
        self.0.write().unwrap().insert(base, (len, dev));
    }
    fn remove(&self, base: u64) {
        self.0.write().unwrap().remove(&base);
    }
}

fn build(n: u64) -> (Arc<IoBus>, Arc<LockedMap>) {
    let bus = Arc::new(IoBus::new("pio"));
    let map = Arc::new(LockedMap::default());
    for i in 0..n {
        bus.insert(i * STRIDE, STRIDE, i, Arc::new(Reg)).unwrap();
        map.insert(i * STRIDE, STRIDE, Arc::new(Reg));
    }
    (bus, map)
}

/// One-byte reads of the middle device through both maps, as `io_bus/n` and
/// `rwlock_btree/n` in `group`.
fn measure_reads(group: &mut BenchmarkGroup<'_, WallTime>, n: u64, bus: &IoBus, map: &LockedMap) {
    let addr = n / 2 * STRIDE + 3;
    group.bench_with_input(BenchmarkId::new("io_bus", n), &addr, |b, &addr| {
        let mut d = [0u8];
        b.iter(|| bus.read(black_box(addr), &mut d));
    });
    group.bench_with_input(BenchmarkId::new("rwlock_btree", n), &addr, |b, &addr| {
        let mut d = [0u8];
        b.iter(|| map.read(black_box(addr), &mut d));
    });
}

fn read(c: &mut Criterion) {
    let mut group = c.benchmark_group("read");
    for n in SIZES {
        let (bus, map) = build(n);
        measure_reads(&mut group, n, &bus, &map);
    }
    group.finish();
}

fn read_while_remap(c: &mut Criterion) {
    let mut group = c.benchmark_group("read_while_remap");
    for n in SIZES {
        let (bus, map) = build(n);
        let moving = n * STRIDE + 0x1000;
        let stop = Arc::new(AtomicBool::new(false));
        let writer = {
            let (bus, map, stop) = (bus.clone(), map.clone(), stop.clone());
            thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    bus.insert(moving, STRIDE, u64::MAX, Arc::new(Reg)).unwrap();
                    bus.remove_owner(u64::MAX);
                    map.insert(moving, STRIDE, Arc::new(Reg));
                    map.remove(moving);
                }
            })
        };
        measure_reads(&mut group, n, &bus, &map);
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
    }
    group.finish();
}

criterion_group!(benches, read, read_while_remap);
criterion_main!(benches);
