//! The rcu crate on its own: read sections, cell loads, grace-period latency and
//! deferred reclamation. Peer comparisons (liburcu, crossbeam-epoch, arc-swap, ...) live
//! in the workspace's `benches/` package.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn read_side(c: &mut Criterion) {
    let mut g = c.benchmark_group("rcu/read_pair");
    g.bench_function("memb", |b| b.iter(|| drop(rcu::read())));
    g.bench_function("mb", |b| b.iter(|| drop(rcu::read_mb())));
    g.bench_function("memb-nested", |b| {
        let _outer = rcu::read();
        b.iter(|| drop(black_box(rcu::read())))
    });
    g.bench_function("qsbr", |b| {
        let t = rcu::QsbrThread::register().unwrap();
        b.iter(|| drop(black_box(t.read())))
    });
    g.finish();

    let mut g = c.benchmark_group("rcu/cell_load");
    let cell = rcu::RcuCell::new(42u64);
    g.bench_function("under-held-guard", |b| {
        let guard = rcu::read();
        b.iter(|| *black_box(&cell).load(&guard).unwrap())
    });
    g.bench_function("with-own-guard", |b| {
        b.iter(|| *black_box(&cell).load(&rcu::read()).unwrap())
    });
    g.finish();
}

/// Threads that take and drop read guards until dropped.
struct BusyReaders {
    stop: Arc<AtomicBool>,
    threads: Vec<thread::JoinHandle<()>>,
}

impl BusyReaders {
    fn start(n: usize) -> BusyReaders {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..n)
            .map(|_| {
                let stop = stop.clone();
                thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        drop(black_box(rcu::read()));
                    }
                })
            })
            .collect();
        BusyReaders { stop, threads }
    }
}

impl Drop for BusyReaders {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().unwrap();
        }
    }
}

fn grace_periods(c: &mut Criterion) {
    let mut g = c.benchmark_group("rcu/synchronize");
    g.sample_size(20).measurement_time(Duration::from_secs(2));
    for readers in [0, 1, 2] {
        let _busy = BusyReaders::start(readers);
        g.bench_function(format!("{readers}-busy-readers"), |b| {
            b.iter(rcu::synchronize)
        });
    }
    g.finish();

    let mut g = c.benchmark_group("rcu/call_rcu");
    g.sample_size(20).measurement_time(Duration::from_secs(2));
    const N: u64 = 10_000;
    g.throughput(Throughput::Elements(N));
    g.bench_function("throughput", |b| {
        b.iter(|| {
            for i in 0..N {
                rcu::call_rcu(move || {
                    black_box(i);
                });
            }
            rcu::barrier();
        })
    });
    g.throughput(Throughput::Elements(1));
    g.bench_function("isolated-reclaim-latency", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let done = Arc::new(AtomicBool::new(false));
                let flag = done.clone();
                let start = Instant::now();
                rcu::call_rcu(move || flag.store(true, Ordering::Release));
                while !done.load(Ordering::Acquire) {
                    std::hint::spin_loop();
                }
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, read_side, grace_periods);
criterion_main!(benches);
