//! The event loop, ours (`aio-context`) against tokio and against the raw syscalls
//! underneath both. Every peer of a comparison is in the same criterion group, so the
//! ratios that `benches/compare` prints come from one run.
//!
//! - `bh_dispatch`: schedule one unit of deferred work on the current thread and run
//!   it, per unit. Ours: a persistent BH, a one-shot BH, a spawned future, each followed
//!   by the `poll(false)`s that run it; the BH list alone (no context around it) shows
//!   what the loop adds. tokio (current_thread runtime, no drivers): the reference
//!   `tokio/spawn+run` spawns one trivial task and yields until `is_finished()`, the
//!   mirror of `ours/spawn+run` (one unit of work per loop iteration, completion seen
//!   without a waker); `tokio/spawn+await` is the idiomatic form, which also pays for
//!   the `JoinHandle` waker; `tokio/yield_now` is one trip through the scheduler. The
//!   `-batch64` rows (per unit) schedule 64 units before driving the loop, on both
//!   sides, which spreads the loop's own per-iteration cost.
//! - `cross_thread_rtt`: thread A makes thread B run something that makes A run
//!   something; per round trip. Ours: A is the bench thread's context, B an `IoThread`,
//!   each with a persistent BH that schedules the other's; busy polling off on both
//!   (each side sleeps on its eventfd), on with QEMU's iothread default
//!   (`PollParams::IOTHREAD`, 32 µs), and on with a 50 µs window. tokio: two
//!   current_thread runtimes ping-ponging through two `Notify`s (the reference; A in
//!   `block_on`, B a spawned task). The floors: two threads on blocking eventfd reads,
//!   and two threads spinning on an atomic (with 2 cores both can spin at once). In
//!   every case A and B are pinned to two different CPUs (`Pinning`;
//!   `PEER_BENCH_NO_PIN=1` leaves placement to the scheduler).
//! - `fd_dispatch`: set an eventfd, let the loop run its read handler, which clears it;
//!   per dispatch. Floors: the same three syscalls (write, wait, read) with epoll (the
//!   reference) and with an io_uring `POLL_ADD`.
//! - `io_uring_nop`: submit NOPs through the context and poll until their callbacks
//!   ran, against the io-uring crate's `submit_and_wait` on a bare ring; single and in
//!   batches of 32 (per operation). Skipped, loudly, without io_uring.

use std::cell::Cell;
use std::hint::black_box;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use aio_context::{AioContext, EventNotifier, IoThread, PollParams};
use bottom_half::BhList;
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use io_uring::{IoUring, opcode, types};
use tokio::runtime::{Builder, Runtime};
use tokio::sync::Notify;

/// A current_thread tokio runtime with no I/O or time driver: parking is a futex.
fn tokio_runtime() -> Runtime {
    Builder::new_current_thread()
        .build()
        .expect("cannot build a tokio runtime")
}

/// The bench thread's context. One per thread: each group makes its own and drops it.
fn context() -> AioContext {
    AioContext::new().expect("cannot create an AioContext")
}

fn bh_dispatch(c: &mut Criterion) {
    let ctx = context();
    let mut group = c.benchmark_group("bh_dispatch");
    group.throughput(Throughput::Elements(1));

    // The BH list alone: what scheduling and running a BH costs without the loop.
    let list = BhList::new(|| {});
    let bh = list.scheduler().new_bh(|| {});
    bh.schedule();
    assert!(list.poll(), "the BH did not run");
    group.bench_function("ours/bhlist-only", |b| {
        b.iter(|| {
            bh.schedule();
            list.poll()
        });
    });
    bh.delete();

    let bh = ctx.new_bh(|| {});
    bh.schedule();
    assert!(ctx.poll(false), "the BH did not run");
    group.bench_function("ours/bh-schedule+poll", |b| {
        b.iter(|| {
            bh.schedule();
            ctx.poll(false)
        });
    });
    bh.delete();

    group.bench_function("ours/oneshot+poll", |b| {
        b.iter(|| {
            ctx.schedule_oneshot(|| {});
            ctx.poll(false)
        });
    });

    group.bench_function("ours/spawn+run", |b| {
        b.iter(|| {
            let task = ctx.spawn(async {});
            while !task.is_finished() {
                ctx.poll(false);
            }
        });
    });

    // The reference: like ours/spawn+run, spawn one task and drive the loop until it
    // has finished; `yield_now` is how a `block_on` future lets the scheduler run it.
    let rt = tokio_runtime();
    group.bench_function("tokio/spawn+run", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let task = tokio::spawn(async {});
                    while !task.is_finished() {
                        tokio::task::yield_now().await;
                    }
                }
                start.elapsed()
            })
        });
    });
    // The idiomatic form, which also pays for the JoinHandle's waker.
    group.bench_function("tokio/spawn+await", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    tokio::spawn(async {}).await.expect("the task panicked");
                }
                start.elapsed()
            })
        });
    });
    group.bench_function("tokio/yield_now", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    tokio::task::yield_now().await;
                }
                start.elapsed()
            })
        });
    });

    // Batches: the loop's per-iteration cost spread over SPAWN_BATCH units of work.
    // Both sides count completions with the same relaxed atomic increment.
    group.throughput(Throughput::Elements(SPAWN_BATCH));
    let done = Arc::new(AtomicU64::new(0));
    group.bench_function("ours/oneshot-batch64+poll", |b| {
        b.iter(|| {
            let target = done.load(Ordering::Relaxed) + SPAWN_BATCH;
            for _ in 0..SPAWN_BATCH {
                let done = done.clone();
                ctx.schedule_oneshot(move || {
                    done.fetch_add(1, Ordering::Relaxed);
                });
            }
            while done.load(Ordering::Relaxed) < target {
                ctx.poll(false);
            }
        });
    });
    group.bench_function("tokio/spawn-batch64", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = Instant::now();
                for _ in 0..iters {
                    let target = done.load(Ordering::Relaxed) + SPAWN_BATCH;
                    for _ in 0..SPAWN_BATCH {
                        let done = done.clone();
                        drop(tokio::spawn(async move {
                            done.fetch_add(1, Ordering::Relaxed);
                        }));
                    }
                    while done.load(Ordering::Relaxed) < target {
                        tokio::task::yield_now().await;
                    }
                }
                start.elapsed()
            })
        });
    });
    group.finish();
}

/// Units of work per batch in `bh_dispatch`.
const SPAWN_BATCH: u64 = 64;

fn cross_thread_rtt(c: &mut Criterion) {
    let ctx = context();
    let pinning = Pinning::new();
    let peer_cpu = pinning.peer_cpu;
    let mut group = c.benchmark_group("cross_thread_rtt");
    group.sample_size(20).sampling_mode(SamplingMode::Flat);

    let off = PollParams::default();
    group.bench_function("ours/iothreads-eventfd", |b| {
        ours_rtt(b, &ctx, off, peer_cpu);
    });
    group.bench_function("ours/iothreads-adaptive-poll", |b| {
        ours_rtt(b, &ctx, PollParams::IOTHREAD, peer_cpu);
    });
    // A longer window than QEMU's default.
    group.bench_function("ours/iothreads-adaptive-poll-50us", |b| {
        let params = PollParams {
            max_ns: 50_000,
            ..PollParams::IOTHREAD
        };
        ours_rtt(b, &ctx, params, peer_cpu);
    });
    ctx.set_poll_params(off);

    group.bench_function("tokio/two-runtimes", |b| tokio_rtt(b, peer_cpu));
    group.bench_function("floor/eventfd", |b| eventfd_rtt(b, peer_cpu));
    group.bench_function("floor/spin", |b| spin_rtt(b, peer_cpu));
    group.finish();
    drop(pinning);
}

/// Where the two threads of a round trip run: on two different CPUs, as QEMU's
/// iothreads are pinned to their own cores in practice. Left alone, the scheduler
/// often moves a woken thread onto its waker's CPU (wake-affine placement); the two
/// sides then share one CPU, where a busy-polling side spins on the very CPU its peer
/// needs to answer. `PEER_BENCH_NO_PIN=1` leaves placement to the scheduler.
struct Pinning {
    /// The bench thread's mask before it was pinned, restored on drop.
    saved: Option<libc::cpu_set_t>,
    /// The CPU for the peer thread (the bench thread has another).
    peer_cpu: Option<usize>,
}

impl Pinning {
    /// Pins the calling thread to the first CPU it may run on, and picks the second
    /// for the peer; does nothing with fewer than two CPUs or `PEER_BENCH_NO_PIN` set.
    fn new() -> Pinning {
        let unpinned = Pinning {
            saved: None,
            peer_cpu: None,
        };
        if std::env::var_os("PEER_BENCH_NO_PIN").is_some() {
            eprintln!("cross_thread_rtt: PEER_BENCH_NO_PIN is set, threads are not pinned");
            return unpinned;
        }
        let saved = affinity();
        // SAFETY: CPU_ISSET only reads the bit of `cpu` in `saved`, and every `cpu`
        // is below CPU_SETSIZE, the set's size in bits.
        let allowed: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &saved) })
            .collect();
        let [bench_cpu, peer_cpu, ..] = allowed[..] else {
            eprintln!("cross_thread_rtt: fewer than two CPUs, threads are not pinned");
            return unpinned;
        };
        pin_to(Some(bench_cpu));
        Pinning {
            saved: Some(saved),
            peer_cpu: Some(peer_cpu),
        }
    }
}

impl Drop for Pinning {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            set_affinity(saved);
        }
    }
}

/// The calling thread's CPU affinity mask.
fn affinity() -> libc::cpu_set_t {
    // SAFETY: cpu_set_t is a plain bit array, for which all zeroes is a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most `size_of::<cpu_set_t>()` bytes into `set`.
    let ret = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) };
    assert_eq!(
        ret,
        0,
        "sched_getaffinity: {}",
        std::io::Error::last_os_error()
    );
    set
}

/// Sets the calling thread's CPU affinity mask.
fn set_affinity(set: &libc::cpu_set_t) {
    // SAFETY: the kernel reads `size_of::<cpu_set_t>()` bytes from a live `set`.
    let ret = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), set) };
    assert_eq!(
        ret,
        0,
        "sched_setaffinity: {}",
        std::io::Error::last_os_error()
    );
}

/// Pins the calling thread to `cpu` (`None`: leaves it alone).
fn pin_to(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    // SAFETY: cpu_set_t is a plain bit array, for which all zeroes is a valid value.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET only sets the bit of `cpu` in `set`, and `cpu` came from a scan
    // below CPU_SETSIZE, the set's size in bits.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    set_affinity(&set);
}

/// Round trips between the bench thread's context and an [`IoThread`], both with
/// `params`: A schedules B's BH, which schedules A's BH; A polls (blocking) until its
/// BH ran.
fn ours_rtt(
    b: &mut criterion::Bencher<'_>,
    ctx: &AioContext,
    params: PollParams,
    peer_cpu: Option<usize>,
) {
    let peer = IoThread::spawn("rtt-peer").expect("cannot start the iothread");
    peer.run(move || {
        pin_to(peer_cpu);
        AioContext::current()
            .expect("an iothread has a context")
            .set_poll_params(params);
    });
    ctx.set_poll_params(params);
    let back = Arc::new(AtomicU64::new(0));
    let counter = back.clone();
    let a_bh = ctx.new_bh(move || {
        counter.fetch_add(1, Ordering::Relaxed);
    });
    let to_a = a_bh.clone();
    let b_bh = peer.handle().new_bh(move || to_a.schedule());
    b.iter_custom(|iters| {
        let mut seen = back.load(Ordering::Relaxed);
        let start = Instant::now();
        for _ in 0..iters {
            b_bh.schedule();
            seen += 1;
            while back.load(Ordering::Relaxed) < seen {
                ctx.poll(true);
            }
        }
        start.elapsed()
    });
    b_bh.delete();
    a_bh.delete();
    peer.stop();
}

/// Round trips between two current_thread runtimes: A's `block_on` notifies a task on
/// B, which notifies A back.
fn tokio_rtt(b: &mut criterion::Bencher<'_>, peer_cpu: Option<usize>) {
    let ping = Arc::new(Notify::new());
    let pong = Arc::new(Notify::new());
    let stop = Arc::new(AtomicBool::new(false));
    let peer = {
        let (ping, pong, stop) = (ping.clone(), pong.clone(), stop.clone());
        thread::spawn(move || {
            pin_to(peer_cpu);
            let rt = tokio_runtime();
            rt.block_on(async move {
                tokio::spawn(async move {
                    loop {
                        ping.notified().await;
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        pong.notify_one();
                    }
                })
                .await
                .expect("the peer task panicked");
            });
        })
    };
    let rt = tokio_runtime();
    b.iter_custom(|iters| {
        rt.block_on(async {
            let start = Instant::now();
            for _ in 0..iters {
                ping.notify_one();
                pong.notified().await;
            }
            start.elapsed()
        })
    });
    stop.store(true, Ordering::Relaxed);
    ping.notify_one();
    peer.join().expect("the tokio peer panicked");
}

/// Round trips between two threads blocked in eventfd reads: the syscall floor of a
/// cross-thread wake-up.
fn eventfd_rtt(b: &mut criterion::Bencher<'_>, peer_cpu: Option<usize>) {
    let to_a = Arc::new(eventfd(false));
    let to_b = Arc::new(eventfd(false));
    let stop = Arc::new(AtomicBool::new(false));
    let peer = {
        let (to_a, to_b, stop) = (to_a.clone(), to_b.clone(), stop.clone());
        thread::spawn(move || {
            pin_to(peer_cpu);
            loop {
                eventfd_read(&to_b);
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                eventfd_write(&to_a);
            }
        })
    };
    b.iter_custom(|iters| {
        let start = Instant::now();
        for _ in 0..iters {
            eventfd_write(&to_b);
            eventfd_read(&to_a);
        }
        start.elapsed()
    });
    stop.store(true, Ordering::Relaxed);
    eventfd_write(&to_b);
    peer.join().expect("the eventfd peer panicked");
}

/// Round trips between two threads spinning on one atomic: A makes it odd, B even.
fn spin_rtt(b: &mut criterion::Bencher<'_>, peer_cpu: Option<usize>) {
    let seq = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let peer = {
        let (seq, stop) = (seq.clone(), stop.clone());
        thread::spawn(move || {
            pin_to(peer_cpu);
            while !stop.load(Ordering::Relaxed) {
                let v = seq.load(Ordering::Acquire);
                if v % 2 == 1 {
                    seq.store(v + 1, Ordering::Release);
                } else {
                    std::hint::spin_loop();
                }
            }
        })
    };
    b.iter_custom(|iters| {
        let mut v = seq.load(Ordering::Acquire);
        let start = Instant::now();
        for _ in 0..iters {
            seq.store(v + 1, Ordering::Release);
            v += 2;
            while seq.load(Ordering::Acquire) != v {
                std::hint::spin_loop();
            }
        }
        start.elapsed()
    });
    stop.store(true, Ordering::Relaxed);
    peer.join().expect("the spinning peer panicked");
}

fn fd_dispatch(c: &mut Criterion) {
    let ctx = context();
    let mut group = c.benchmark_group("fd_dispatch");

    let notifier = Rc::new(EventNotifier::new(false).expect("cannot create an eventfd"));
    let runs = Rc::new(Cell::new(0u64));
    let (n, r) = (notifier.clone(), runs.clone());
    ctx.set_event_notifier(
        &notifier,
        Some(Box::new(move || {
            n.test_and_clear();
            r.set(r.get() + 1);
        })),
    )
    .expect("cannot watch the eventfd");
    group.bench_function("ours/notifier-dispatch", |b| {
        b.iter(|| {
            notifier.set().expect("cannot set the eventfd");
            let seen = runs.get();
            while runs.get() == seen {
                ctx.poll(false);
            }
        });
    });
    ctx.set_event_notifier(&notifier, None)
        .expect("cannot unwatch the eventfd");

    let efd = eventfd(true);
    let epoll = epoll_with(&efd);
    group.bench_function("floor/epoll", |b| {
        b.iter(|| {
            eventfd_write(&efd);
            let mut event = libc::epoll_event { events: 0, u64: 0 };
            // SAFETY: `epoll` is our epoll fd and `event` has room for the one event
            // asked for.
            let n = unsafe { libc::epoll_wait(epoll.as_raw_fd(), &raw mut event, 1, 0) };
            assert_eq!(n, 1, "the eventfd is not ready");
            eventfd_read(&efd)
        });
    });

    match IoUring::new(8) {
        Ok(mut ring) => {
            group.bench_function("floor/io-uring-poll-add", |b| {
                b.iter(|| {
                    eventfd_write(&efd);
                    let poll =
                        opcode::PollAdd::new(types::Fd(efd.as_raw_fd()), libc::POLLIN as u32)
                            .build()
                            .user_data(1);
                    // SAFETY: a POLL_ADD references no memory, and `efd` outlives it:
                    // it completes (the fd is readable) before this iteration ends.
                    unsafe { ring.submission().push(&poll) }.expect("the SQ is full");
                    ring.submit_and_wait(1).expect("io_uring_enter failed");
                    let cqe = ring.completion().next().expect("no CQE");
                    assert!(cqe.result() > 0, "POLL_ADD failed: {}", cqe.result());
                    eventfd_read(&efd)
                });
            });
        }
        Err(e) => skip(&format!("fd_dispatch/floor/io-uring-poll-add: {e}")),
    }
    group.finish();
}

fn io_uring_nop(c: &mut Criterion) {
    let ctx = context();
    if !ctx.supports_io_uring_ops() {
        skip("io_uring_nop: this kernel has no usable io_uring");
        return;
    }
    let mut ring = match IoUring::new(64) {
        Ok(ring) => ring,
        Err(e) => {
            skip(&format!("io_uring_nop: {e}"));
            return;
        }
    };
    let mut group = c.benchmark_group("io_uring_nop");
    let done = Rc::new(Cell::new(0u64));
    let submit_nop = || {
        let done = done.clone();
        // SAFETY: a NOP references no memory.
        unsafe {
            ctx.submit(opcode::Nop::new().build(), move |res| {
                debug_assert_eq!(res, 0);
                done.set(done.get() + 1);
            })
        }
        .expect("cannot submit a NOP");
    };

    group.throughput(Throughput::Elements(1));
    group.bench_function("ours/nop-single", |b| {
        b.iter(|| {
            let target = done.get() + 1;
            submit_nop();
            while done.get() < target {
                ctx.poll(false);
            }
        });
    });
    group.bench_function("floor/raw-io-uring-single", |b| {
        b.iter(|| {
            // SAFETY: a NOP references no memory.
            unsafe { ring.submission().push(&opcode::Nop::new().build()) }.expect("the SQ is full");
            ring.submit_and_wait(1).expect("io_uring_enter failed");
            ring.completion().next().expect("no CQE").result()
        });
    });

    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("ours/nop-batch32", |b| {
        b.iter(|| {
            let target = done.get() + BATCH as u64;
            for _ in 0..BATCH {
                submit_nop();
            }
            while done.get() < target {
                ctx.poll(false);
            }
        });
    });
    group.bench_function("floor/raw-io-uring-batch32", |b| {
        b.iter(|| {
            let nop = opcode::Nop::new().build();
            let mut sq = ring.submission();
            for _ in 0..BATCH {
                // SAFETY: a NOP references no memory.
                unsafe { sq.push(&nop) }.expect("the SQ is full");
            }
            drop(sq);
            ring.submit_and_wait(BATCH).expect("io_uring_enter failed");
            let mut cq = ring.completion();
            let mut reaped = 0;
            while reaped < BATCH {
                if let Some(cqe) = cq.next() {
                    black_box(cqe.result());
                    reaped += 1;
                } else {
                    cq.sync();
                }
            }
        });
    });
    group.finish();
}

/// NOPs per batch.
const BATCH: usize = 32;

/// Says loudly, past criterion's output, that a benchmark did not run.
fn skip(what: &str) {
    eprintln!("!!!!!!!! SKIP {what} !!!!!!!!");
}

/// A new eventfd, blocking or not.
fn eventfd(nonblocking: bool) -> OwnedFd {
    let flags = libc::EFD_CLOEXEC | if nonblocking { libc::EFD_NONBLOCK } else { 0 };
    // SAFETY: eventfd takes an initial count and flags and returns a new fd or -1.
    let fd = unsafe { libc::eventfd(0, flags) };
    assert!(fd >= 0, "eventfd: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a freshly created descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Adds 1 to an eventfd's counter.
fn eventfd_write(fd: &OwnedFd) {
    let one = 1u64;
    // SAFETY: writes the 8 bytes of a live u64 to an fd we own.
    let n = unsafe { libc::write(fd.as_raw_fd(), (&raw const one).cast(), 8) };
    assert_eq!(n, 8, "eventfd write: {}", std::io::Error::last_os_error());
}

/// Reads (and so clears) an eventfd's counter; blocks on a blocking eventfd at zero.
fn eventfd_read(fd: &OwnedFd) -> u64 {
    let mut value = 0u64;
    // SAFETY: reads at most 8 bytes into a live u64 from an fd we own.
    let n = unsafe { libc::read(fd.as_raw_fd(), (&raw mut value).cast(), 8) };
    assert_eq!(n, 8, "eventfd read: {}", std::io::Error::last_os_error());
    value
}

/// A level-triggered epoll instance watching `fd` for input.
fn epoll_with(fd: &OwnedFd) -> OwnedFd {
    // SAFETY: epoll_create1 takes flags and returns a new fd or -1.
    let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    assert!(
        epfd >= 0,
        "epoll_create1: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: `epfd` is a freshly created descriptor that nothing else owns.
    let epoll = unsafe { OwnedFd::from_raw_fd(epfd) };
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: 0,
    };
    // SAFETY: both fds are open and `event` is a live epoll_event the kernel copies.
    let ret = unsafe {
        libc::epoll_ctl(
            epoll.as_raw_fd(),
            libc::EPOLL_CTL_ADD,
            fd.as_raw_fd(),
            &raw mut event,
        )
    };
    assert_eq!(ret, 0, "epoll_ctl: {}", std::io::Error::last_os_error());
    epoll
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    targets = bh_dispatch, cross_thread_rtt, fd_dispatch, io_uring_nop
}
criterion_main!(benches);
