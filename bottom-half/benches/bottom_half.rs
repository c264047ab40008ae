//! The bottom-half crate alone: schedule + dispatch on the owner's thread. Peer
//! comparisons (tokio) come with aio-context in the workspace's `benches/`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bottom_half::BhList;
use criterion::{Criterion, criterion_group, criterion_main};

fn schedule_dispatch(c: &mut Criterion) {
    let mut g = c.benchmark_group("bottom-half");
    let list = BhList::new(|| {});
    let counter = Arc::new(AtomicU64::new(0));
    let n = counter.clone();
    let bh = list.scheduler().new_bh(move || {
        n.fetch_add(1, Ordering::Relaxed);
    });
    g.bench_function("schedule+poll", |b| {
        b.iter(|| {
            bh.schedule();
            black_box(list.poll())
        })
    });
    g.bench_function("schedule-coalesced", |b| {
        bh.schedule();
        b.iter(|| bh.schedule());
        list.poll();
    });
    let scheduler = list.scheduler();
    g.bench_function("oneshot+poll", |b| {
        b.iter(|| {
            let n = counter.clone();
            scheduler.schedule_oneshot(move || {
                n.fetch_add(1, Ordering::Relaxed);
            });
            black_box(list.poll())
        })
    });
    g.bench_function("empty-poll", |b| b.iter(|| black_box(list.poll())));
    g.finish();
}

criterion_group!(benches, schedule_dispatch);
criterion_main!(benches);
