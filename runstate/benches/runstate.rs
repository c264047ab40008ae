//! runstate alone: a start + stop round with 100 handlers.

use std::hint::black_box;

use bottom_half::BhList;
use criterion::{Criterion, criterion_group, criterion_main};
use runstate::{RunState, RunStateMachine};

fn notification(c: &mut Criterion) {
    let main_loop = BhList::new(|| {});
    let vm = RunStateMachine::new(&main_loop.scheduler());
    for i in 0..100 {
        vm.add_handler(i % 7, move |running, state| {
            black_box((running, state));
        });
    }
    c.bench_function("runstate/start+stop/100-handlers", |b| {
        b.iter(|| {
            vm.start().unwrap();
            vm.stop(RunState::Paused).unwrap();
        })
    });
}

criterion_group!(benches, notification);
criterion_main!(benches);
