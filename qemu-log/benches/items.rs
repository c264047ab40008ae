//! The costs a program pays for its log: parsing `-d` items at start-up, and an event
//! that the filter drops (the common case on every hot path: a `debug!` in a device
//! model with the default `warn` filter).
//!
//! `cargo bench -p qemu-log --bench items -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use qemu_log::LogConfig;

fn items(c: &mut Criterion) {
    c.bench_function("add_items: 4 mixed -d items", |b| {
        b.iter(|| {
            let mut config = LogConfig::default();
            config
                .add_items(black_box("debug,qmp=trace,trace:virtio_core*,off"))
                .unwrap();
            config
        })
    });
    // No subscriber installed: the callsite is disabled, what a filtered-out event costs.
    c.bench_function("debug! filtered out", |b| {
        b.iter(|| tracing::debug!(queue = black_box(3u16), "kick"))
    });
}

criterion_group!(benches, items);
criterion_main!(benches);
