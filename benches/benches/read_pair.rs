//! One empty read-side critical section (enter + exit), ours against liburcu,
//! crossbeam-epoch, arc-swap, `std::sync::RwLock` and rcu-clean.
//!
//! liburcu loops inside C (`iter_custom`); the Rust peers loop in
//! [`peer_benches::time_loop`], with the same compiler barrier inside each section.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::thread;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use peer_benches::{
    MbThread, MembThread, QsbrThread, compiler_barrier, time_empty_c_loop, time_loop,
};

fn read_pair(c: &mut Criterion) {
    let mut group = c.benchmark_group("read_pair");

    group.bench_function("ours-memb", |b| {
        b.iter_custom(|iters| time_loop(iters, rcu::read));
    });
    {
        let qsbr = rcu::QsbrThread::register().expect("register our QSBR thread");
        group.bench_function("ours-qsbr", |b| {
            b.iter_custom(|iters| time_loop(iters, || qsbr.read()));
        });
    }
    // The loop floors: the qsbr read sides (ours and liburcu's) compile to nothing, so
    // each runs at its own language's empty loop, and the two loops differ.
    group.bench_function("empty-rust", |b| {
        b.iter_custom(|iters| time_loop(iters, || ()));
    });
    group.bench_function("empty-c", |b| b.iter_custom(time_empty_c_loop));
    group.bench_function("ours-mb", |b| {
        b.iter_custom(|iters| time_loop(iters, rcu::read_mb));
    });

    {
        let memb = MembThread::register();
        group.bench_function("liburcu-memb", |b| {
            b.iter_custom(|iters| memb.time_read_pairs(iters));
        });
    }
    {
        let qsbr = QsbrThread::register();
        group.bench_function("liburcu-qsbr", |b| {
            b.iter_custom(|iters| qsbr.time_read_pairs(iters));
        });
    }
    {
        let mb = MbThread::register();
        group.bench_function("liburcu-mb", |b| {
            b.iter_custom(|iters| mb.time_read_pairs(iters));
        });
    }

    group.bench_function("crossbeam-epoch-pin", |b| {
        b.iter_custom(|iters| time_loop(iters, crossbeam_epoch::pin));
    });

    let swap = arc_swap::ArcSwap::from_pointee(0_u64);
    group.bench_function("arc-swap-load", |b| {
        b.iter_custom(|iters| time_loop(iters, || swap.load()));
    });

    let lock = Arc::new(RwLock::new(0_u64));
    group.bench_function("rwlock-read", |b| {
        b.iter_custom(|iters| time_loop(iters, || lock.read().unwrap()));
    });
    let stop = Arc::new(AtomicBool::new(false));
    let other_reader = {
        let (lock, stop) = (Arc::clone(&lock), Arc::clone(&stop));
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let guard = lock.read().unwrap();
                compiler_barrier();
                drop(guard);
            }
        })
    };
    group.bench_function("rwlock-read-contended", |b| {
        b.iter_custom(|iters| time_loop(iters, || lock.read().unwrap()));
    });
    stop.store(true, Ordering::Relaxed);
    other_reader.join().unwrap();

    // rcu-clean has no read-side section: `ArcRcu`'s `Deref` is the read (a one-off
    // counter increment, then an acquire load); its `graceful::Grace` is the closest
    // thing to a read-side section (a mutex lock and an `Arc` clone and drop).
    let arc_rcu = rcu_clean::ArcRcu::new(0_u64);
    group.bench_function("rcu-clean-arcrcu-deref", |b| {
        b.iter_custom(|iters| time_loop(iters, || &*arc_rcu));
    });
    group.bench_function("rcu-clean-grace", |b| {
        b.iter_custom(|iters| time_loop(iters, rcu_clean::graceful::Grace::new));
    });

    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = read_pair
}
criterion_main!(benches);
