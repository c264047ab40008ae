//! Latency of one grace period with 0, 1 and 2 busy reader threads of the same
//! library: ours against liburcu memb.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, SamplingMode, criterion_group, criterion_main};
use peer_benches::{MembThread, compiler_barrier};

fn synchronize(c: &mut Criterion) {
    let mut group = c.benchmark_group("synchronize");
    group.sample_size(20).sampling_mode(SamplingMode::Flat);
    for readers in 0..=2 {
        let id = format!("{readers}-readers");
        {
            let _readers = BusyReaders::start(readers, ours_busy_reader);
            group.bench_function(BenchmarkId::new("ours", &id), |b| b.iter(rcu::synchronize));
        }
        {
            let _readers = BusyReaders::start(readers, liburcu_busy_reader);
            let memb = MembThread::register();
            group.bench_function(BenchmarkId::new("liburcu-memb", &id), |b| {
                b.iter(|| memb.synchronize());
            });
        }
    }
    group.finish();
}

fn ours_busy_reader(stop: &AtomicBool, ready: &Barrier) {
    drop(rcu::read());
    ready.wait();
    while !stop.load(Ordering::Relaxed) {
        let guard = rcu::read();
        compiler_barrier();
        drop(guard);
    }
}

fn liburcu_busy_reader(stop: &AtomicBool, ready: &Barrier) {
    let memb = MembThread::register();
    ready.wait();
    memb.busy_read_until(stop);
}

/// Threads running empty read-side critical sections back to back, from when
/// `start` returns until drop.
struct BusyReaders {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl BusyReaders {
    fn start(count: usize, reader: fn(&AtomicBool, &Barrier)) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ready = Arc::new(Barrier::new(count + 1));
        let threads = (0..count)
            .map(|_| {
                let (stop, ready) = (Arc::clone(&stop), Arc::clone(&ready));
                thread::spawn(move || reader(&stop, &ready))
            })
            .collect();
        ready.wait();
        Self { stop, threads }
    }
}

impl Drop for BusyReaders {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().unwrap();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = synchronize
}
criterion_main!(benches);
