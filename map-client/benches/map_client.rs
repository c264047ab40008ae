//! map-client alone: map/unmap direct and bounced, and register → notify → BH latency.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bottom_half::BhList;
use criterion::{Criterion, criterion_group, criterion_main};
use map_client::{Bounce, Direction, GuestMemoryAccess, Mapping};

/// RAM below 1 MiB (direct), MMIO above (bounced; reads zeros, writes are dropped).
struct Memory(Vec<u8>);

impl GuestMemoryAccess for Memory {
    type Direct<'a> = &'a [u8];
    type Error = std::io::Error;
    fn map_direct(&self, addr: u64, len: usize) -> Option<(&[u8], usize)> {
        let start = usize::try_from(addr).ok().filter(|&a| a < self.0.len())?;
        let len = len.min(self.0.len() - start);
        Some((&self.0[start..start + len], len))
    }
    fn read(&self, _: u64, buf: &mut [u8]) -> std::io::Result<()> {
        buf.fill(0);
        Ok(())
    }
    fn write(&self, _: u64, buf: &[u8]) -> std::io::Result<()> {
        black_box(buf);
        Ok(())
    }
}

fn map_unmap(c: &mut Criterion) {
    let mem = Memory(vec![0; 1 << 20]);
    let bounce = Bounce::default();
    let mut g = c.benchmark_group("map-client");
    g.bench_function("map+unmap/direct-4k", |b| {
        b.iter(|| {
            let m = bounce
                .map(&mem, black_box(0x1000), 4096, Direction::FromDevice)
                .unwrap();
            bounce.unmap(&mem, m, 4096).unwrap();
        })
    });
    g.bench_function("map+unmap/bounce-512", |b| {
        b.iter(|| {
            let m = bounce
                .map(&mem, black_box(1 << 21), 512, Direction::FromDevice)
                .unwrap();
            bounce.unmap(&mem, m, 512).unwrap();
        })
    });
    // One waiter on the owner's list; a release from this thread schedules it; the
    // owner's poll runs it. Measures register -> release/notify -> BH run.
    let list = BhList::new(|| {});
    let ran = Arc::new(AtomicBool::new(false));
    let r = ran.clone();
    let bh = list
        .scheduler()
        .new_bh(move || r.store(true, Ordering::Relaxed));
    g.bench_function("register+notify+bh", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let Ok(Mapping::Bounce(held)) =
                    bounce.map(&mem, 1 << 21, 4096, Direction::FromDevice)
                else {
                    panic!("expected a bounce buffer")
                };
                let start = Instant::now();
                let waiter = bounce.register(&bh);
                drop(held);
                list.poll();
                total += start.elapsed();
                assert!(ran.swap(false, Ordering::Relaxed));
                drop(waiter);
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, map_unmap);
criterion_main!(benches);
