//! Deferred reclamation, ours against liburcu memb: the latency from one
//! `call_rcu` to its callback having run with nothing else queued, and the
//! throughput of a burst of `call_rcu`s followed by a barrier.
//!
//! liburcu's callbacks free a malloc'ed node; ours drop a closure capturing a `u64`,
//! which our `call_rcu` has to box, so both do one allocation per callback.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use criterion::{
    BenchmarkId, Criterion, SamplingMode, Throughput, criterion_group, criterion_main,
};
use peer_benches::MembThread;

fn call_rcu(c: &mut Criterion) {
    let mut group = c.benchmark_group("call_rcu");
    group.sample_size(10).sampling_mode(SamplingMode::Flat);
    let memb = MembThread::register();

    group.bench_function(BenchmarkId::new("ours", "isolated-latency"), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| ours_isolated_latency()).sum());
    });
    group.bench_function(BenchmarkId::new("liburcu-memb", "isolated-latency"), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| memb.call_rcu_isolated_latency()).sum());
    });

    group.throughput(Throughput::Elements(1));
    group.bench_function(BenchmarkId::new("ours", "throughput"), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for i in 0..iters {
                let payload = black_box(i);
                rcu::call_rcu(move || _ = black_box(payload));
            }
            rcu::barrier();
            start.elapsed()
        });
    });
    group.bench_function(BenchmarkId::new("liburcu-memb", "throughput"), |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            memb.call_rcu_n(iters);
            start.elapsed()
        });
    });

    group.finish();
}

/// Time from one `rcu::call_rcu` until its callback has run, spinning.
fn ours_isolated_latency() -> Duration {
    let done = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&done);
    let start = Instant::now();
    rcu::call_rcu(move || flag.store(true, Ordering::Release));
    while !done.load(Ordering::Acquire) {
        std::hint::spin_loop();
    }
    start.elapsed()
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = call_rcu
}
criterion_main!(benches);
