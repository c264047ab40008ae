//! One pointer load from an RCU-protected cell under an already-held read guard:
//! ours against arc-swap, crossbeam-epoch and rcu-clean.
//!
//! arc-swap has no held guard: its `load()` is both the guard and the load.

use std::sync::atomic::Ordering;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use peer_benches::time_loop;

fn cell_load(c: &mut Criterion) {
    let mut group = c.benchmark_group("cell_load");

    let cell = rcu::RcuCell::new(0_u64);
    {
        let guard = rcu::read();
        group.bench_function("ours", |b| {
            b.iter_custom(|iters| time_loop(iters, || cell.load(&guard)));
        });
    }

    let swap = arc_swap::ArcSwap::from_pointee(0_u64);
    group.bench_function("arc-swap", |b| {
        b.iter_custom(|iters| time_loop(iters, || swap.load()));
    });

    let atomic = crossbeam_epoch::Atomic::new(0_u64);
    {
        let guard = crossbeam_epoch::pin();
        group.bench_function("crossbeam-epoch", |b| {
            b.iter_custom(|iters| time_loop(iters, || atomic.load(Ordering::Acquire, &guard)));
        });
    }
    // SAFETY: `atomic` still holds the allocation it was created with, and the guard
    // it was read under is gone, so no reference into it remains.
    drop(unsafe { atomic.into_owned() });

    let arc_rcu = rcu_clean::ArcRcu::new(0_u64);
    group.bench_function("rcu-clean-arcrcu", |b| {
        b.iter_custom(|iters| time_loop(iters, || &*arc_rcu));
    });
    let graceful = rcu_clean::graceful::Rcu::new(0_u64);
    {
        let grace = rcu_clean::graceful::Grace::new();
        group.bench_function("rcu-clean-graceful", |b| {
            b.iter_custom(|iters| time_loop(iters, || graceful.read(&grace)));
        });
    }

    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = cell_load
}
criterion_main!(benches);
