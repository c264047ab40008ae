//! aio-context alone: what one trip through the event loop costs for each kind of work
//! it runs. (The comparisons with tokio and the raw syscalls are in the workspace's
//! `benches/` crate; this suite measures only this crate, quickly.)
//!
//! - `bh`: schedule a BH of this context and poll once until it ran (a persistent BH,
//!   and a one-shot one, which also pays for its allocation).
//! - `notify`: another thread wakes this context: an iothread schedules our BH, we
//!   sleep in `poll(true)` until it runs. Per round trip (we schedule the iothread's BH
//!   first, so that is two cross-thread wake-ups), busy polling off on both sides.
//! - `timer`: arm a timer at "now" and poll until it fired, alone and with 64 other
//!   timers armed for later; and re-arming an armed timer among those 64 without
//!   polling (the ordered list's own cost).
//! - `io_uring`: submit NOPs through the context and poll until their callbacks ran, one
//!   at a time and 32 per poll (per operation). Skipped, loudly, without io_uring.
//! - `fd_handler`: set an `EventNotifier` and poll until its read handler ran (it
//!   clears the notifier): the fd monitor's dispatch, io_uring `POLL_ADD` or epoll
//!   (`AIO_FDMON=epoll cargo bench ...` measures the fallback).

use std::cell::Cell;
use std::hint::black_box;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use aio_context::{AioContext, EventNotifier, IoThread, PollParams};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use io_uring::opcode;

/// Operations per batch in `io_uring/nop-batch32`.
const BATCH: u32 = 32;

/// Polls `ctx` (sleeping when there is nothing to do) until `done` is set, then clears it.
fn poll_until(ctx: &AioContext, done: &Cell<bool>) {
    while !done.replace(false) {
        ctx.poll(true);
    }
}

fn bh(c: &mut Criterion) {
    let ctx = AioContext::new().expect("an AioContext for the bench thread");
    let mut g = c.benchmark_group("bh");
    g.throughput(Throughput::Elements(1));

    let bh = ctx.new_bh(|| {
        black_box(());
    });
    g.bench_function("schedule+poll", |b| {
        b.iter(|| {
            bh.schedule();
            assert!(ctx.poll(false), "the scheduled BH made no progress");
        })
    });
    bh.delete();

    g.bench_function("oneshot+poll", |b| {
        b.iter(|| {
            ctx.schedule_oneshot(|| {
                black_box(());
            });
            assert!(ctx.poll(false), "the one-shot BH made no progress");
        })
    });
    g.finish();
}

fn notify(c: &mut Criterion) {
    let ctx = AioContext::new().expect("an AioContext for the bench thread");
    let io = IoThread::spawn("bench-iothread").expect("an iothread");
    io.run(|| {
        let there = AioContext::current().expect("the iothread's context");
        there.set_poll_params(PollParams::default()); // sleep on the eventfd, no spinning
    });

    let arrived = Arc::new(AtomicBool::new(false));
    let flag = arrived.clone();
    let back = ctx.new_bh(move || flag.store(true, Ordering::Release));
    let back_there = back.clone();
    let ping = io.run(move || {
        let there = AioContext::current().expect("the iothread's context");
        there.new_bh(move || back_there.schedule())
    });

    let mut g = c.benchmark_group("notify");
    g.throughput(Throughput::Elements(1));
    g.bench_function("cross-thread-round-trip", |b| {
        b.iter(|| {
            ping.schedule();
            while !arrived.swap(false, Ordering::Acquire) {
                ctx.poll(true);
            }
        })
    });
    g.finish();
    ping.delete();
    back.delete();
    io.stop();
}

fn timer(c: &mut Criterion) {
    let ctx = AioContext::new().expect("an AioContext for the bench thread");
    let fired = Arc::new(AtomicBool::new(false));
    let flag = fired.clone();
    let timer = ctx.new_timer(move || flag.store(true, Ordering::Relaxed));
    let mut g = c.benchmark_group("timer");
    g.throughput(Throughput::Elements(1));

    let mut arm_and_fire = |name: &str| {
        g.bench_function(name, |b| {
            b.iter(|| {
                timer.arm(Instant::now());
                while !fired.swap(false, Ordering::Relaxed) {
                    ctx.poll(false);
                }
            })
        });
    };
    arm_and_fire("arm+fire");
    let later = Instant::now() + Duration::from_secs(3600);
    let others: Vec<_> = (0..64u64)
        .map(|i| {
            let t = ctx.new_timer(|| unreachable!("armed an hour ahead"));
            t.arm(later + Duration::from_millis(i));
            t
        })
        .collect();
    arm_and_fire("arm+fire/64-armed");
    // The ordered list alone: re-arm a timer behind 64 others (never the earliest, so
    // no wake-up of the owner either), nothing fires.
    let mut step = 0;
    g.bench_function("rearm/64-armed", |b| {
        b.iter(|| {
            step = (step + 1) % 128;
            timer.arm(later + Duration::from_secs(1) + Duration::from_micros(step));
        })
    });
    timer.disarm();
    g.finish();
    others.iter().for_each(|t| t.delete());
    timer.delete();
}

fn io_uring_nop(c: &mut Criterion) {
    let ctx = AioContext::new().expect("an AioContext for the bench thread");
    if !ctx.supports_io_uring_ops() {
        eprintln!("SKIPPED io_uring/nop benches: io_uring operations are not available here");
        return;
    }
    let completed = Rc::new(Cell::new(0u32));
    let submit_nops = |n: u32| {
        for _ in 0..n {
            let completed = completed.clone();
            let entry = opcode::Nop::new().build();
            // SAFETY: a NOP refers to no buffer or fd.
            unsafe { ctx.submit(entry, move |_| completed.set(completed.get() + 1)) }
                .expect("submit a NOP");
        }
        while completed.get() < n {
            ctx.poll(true);
        }
        completed.set(0);
    };

    let mut g = c.benchmark_group("io_uring");
    g.throughput(Throughput::Elements(1));
    g.bench_function("nop", |b| b.iter(|| submit_nops(1)));
    g.throughput(Throughput::Elements(BATCH.into()));
    g.bench_function("nop-batch32", |b| b.iter(|| submit_nops(BATCH)));
    g.finish();
}

fn fd_handler(c: &mut Criterion) {
    let ctx = AioContext::new().expect("an AioContext for the bench thread");
    let notifier = Rc::new(EventNotifier::new(false).expect("an eventfd"));
    let ran = Rc::new(Cell::new(false));
    let (n, r) = (notifier.clone(), ran.clone());
    let read = move || {
        assert!(n.test_and_clear(), "dispatched while clear");
        r.set(true);
    };
    ctx.set_event_notifier(&notifier, Some(Box::new(read)))
        .expect("register the notifier");

    let mut g = c.benchmark_group("fd_handler");
    g.throughput(Throughput::Elements(1));
    let name = format!("eventfd-dispatch/{:?}", ctx.fdmon_backend());
    g.bench_function(name, |b| {
        b.iter(|| {
            notifier.set().expect("set the notifier");
            poll_until(&ctx, &ran);
        })
    });
    g.finish();
    ctx.set_event_notifier(&notifier, None)
        .expect("unregister the notifier");
}

criterion_group! {
    name = benches;
    // Short: the whole suite runs in well under a minute (`-- --quick` is shorter still).
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    targets = bh, notify, timer, io_uring_nop, fd_handler
}
criterion_main!(benches);
