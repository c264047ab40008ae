//! Cancel in every phase: in flight (real io_uring cancel), waiting for the bounce
//! buffer, and after completion; each request completes exactly once.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use aio_context::AioContext;
use block_dma::{DmaDirection, DmaMemory, Errno, FileBackend, FileOptions, dma_rw};
use common::*;
use map_client::Bounce;

#[test]
fn cancel_in_flight_completes_once_with_ecanceled() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "cancel_in_flight") {
        return;
    }
    let backend = Arc::new(SlowBackend::new(1 << 20, Duration::from_secs(30)));
    let mem = DmaMemory::new(ram(1 << 20));
    let (r, done) = recorder();
    let req = dma_rw(
        &ctx,
        &mem,
        backend,
        DmaDirection::Read,
        0,
        sg(&[(0x1000, 4096)]),
        done,
    );
    ctx.poll(false); // the op reaches the kernel
    assert!(!req.is_done());
    let start = Instant::now();
    req.cancel();
    req.cancel(); // idempotent
    assert!(
        r.borrow().is_empty(),
        "completion never runs inside cancel()"
    );
    run_until(&ctx, || !r.borrow().is_empty());
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "the kernel op was really cancelled"
    );
    settle(&ctx);
    assert_eq!(*r.borrow(), vec![Err(Errno::ECANCELED)]);
    assert_eq!(ctx.io_uring_ops_in_flight(), 0);
}

#[test]
fn cancel_racing_a_real_read_completes_once_and_writes_nothing_back() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "cancel_racing_a_real_read") {
        return;
    }
    let img = image(1 << 20, &pattern(5, 1 << 20));
    let backend = Arc::new(FileBackend::open(&FileOptions::new(img.path())).unwrap());
    // MMIO target: a canceled read must not be written back through the bounce buffer.
    let mmio = Arc::new(FakeMmio::new(1 << 30, 4096));
    let mem = DmaMemory::new(ram(1 << 20)).with_mmio(mmio.clone());
    for _ in 0..50 {
        let (r, done) = recorder();
        let req = dma_rw(
            &ctx,
            &mem,
            backend.clone(),
            DmaDirection::Read,
            0,
            sg(&[(1 << 30, 4096)]),
            done,
        );
        req.cancel();
        run_until(&ctx, || !r.borrow().is_empty());
        settle_briefly(&ctx);
        assert_eq!(*r.borrow(), vec![Err(Errno::ECANCELED)]);
    }
    assert_eq!(mmio.writes.load(Ordering::SeqCst), 0);
    assert_eq!(mem.bounce().in_use(), 0);
}

fn settle_briefly(ctx: &AioContext) {
    for _ in 0..3 {
        ctx.poll(false);
    }
}

#[test]
fn cancel_while_waiting_for_the_bounce_buffer() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "cancel_while_waiting") {
        return;
    }
    let backend = Arc::new(SlowBackend::new(1 << 20, Duration::from_secs(30)));
    let mmio = Arc::new(FakeMmio::new(1 << 30, 8192));
    let mem = DmaMemory::new(ram(1 << 20))
        .with_bounce(Bounce::new(4096))
        .with_mmio(mmio.clone());
    // A holds the whole bounce budget, in flight.
    let (ra, done_a) = recorder();
    let a = dma_rw(
        &ctx,
        &mem,
        backend.clone(),
        DmaDirection::Write,
        0,
        sg(&[(1 << 30, 4096)]),
        done_a,
    );
    // B must wait.
    let (rb, done_b) = recorder();
    let b = dma_rw(
        &ctx,
        &mem,
        backend.clone(),
        DmaDirection::Write,
        4096,
        sg(&[(1 << 30 | 4096, 4096)]),
        done_b,
    );
    assert!(b.is_waiting());
    assert_eq!(mem.bounce().waiting(), 1);
    let reads_before = mmio.reads.load(Ordering::SeqCst);
    b.cancel();
    assert_eq!(mem.bounce().waiting(), 0, "unregistered");
    assert!(
        rb.borrow().is_empty(),
        "completion never runs inside cancel()"
    );
    run_until(&ctx, || !rb.borrow().is_empty());
    assert_eq!(*rb.borrow(), vec![Err(Errno::ECANCELED)]);
    // Releasing the budget (A's cancel) schedules nothing for B.
    a.cancel();
    run_until(&ctx, || !ra.borrow().is_empty());
    settle(&ctx);
    assert_eq!(*ra.borrow(), vec![Err(Errno::ECANCELED)]);
    assert_eq!(*rb.borrow(), vec![Err(Errno::ECANCELED)]);
    assert_eq!(
        mmio.reads.load(Ordering::SeqCst),
        reads_before,
        "B never mapped again"
    );
    assert_eq!(
        backend.submitted.load(Ordering::SeqCst),
        1,
        "B never submitted"
    );
    assert_eq!(mem.bounce().in_use(), 0);
}

#[test]
fn cancel_after_completion_is_a_no_op() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "cancel_after_completion") {
        return;
    }
    let backend = Arc::new(SlowBackend::new(1 << 20, Duration::from_millis(1)));
    let mem = DmaMemory::new(ram(1 << 20));
    let (r, done) = recorder();
    let req = dma_rw(
        &ctx,
        &mem,
        backend,
        DmaDirection::Read,
        0,
        sg(&[(0, 512)]),
        done,
    );
    run_until(&ctx, || !r.borrow().is_empty());
    assert!(req.is_done());
    req.cancel();
    settle(&ctx);
    assert_eq!(*r.borrow(), vec![Ok(512)]);
}

#[test]
fn waiting_request_resumes_when_budget_is_released() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "waiting_request_resumes") {
        return;
    }
    let img = image(1 << 20, &[]);
    let backend = Arc::new(FileBackend::open(&FileOptions::new(img.path())).unwrap());
    let mmio = Arc::new(FakeMmio::new(1 << 30, 64 * 1024));
    let data = pattern(11, 64 * 1024);
    mmio.data.lock().unwrap().copy_from_slice(&data);
    let mem = DmaMemory::new(ram(1 << 20))
        .with_bounce(Bounce::new(4096))
        .with_mmio(mmio.clone());
    // 64 KiB through a 4 KiB bounce buffer: 16 rounds; and a second request competing.
    let (r1, d1) = recorder();
    dma_rw(
        &ctx,
        &mem,
        backend.clone(),
        DmaDirection::Write,
        0,
        sg(&[(1 << 30, 32 * 1024)]),
        d1,
    );
    let (r2, d2) = recorder();
    dma_rw(
        &ctx,
        &mem,
        backend.clone(),
        DmaDirection::Write,
        32 * 1024,
        sg(&[((1 << 30) + 32 * 1024, 32 * 1024)]),
        d2,
    );
    run_until(&ctx, || !r1.borrow().is_empty() && !r2.borrow().is_empty());
    assert_eq!(*r1.borrow(), vec![Ok(32 * 1024)]);
    assert_eq!(*r2.borrow(), vec![Ok(32 * 1024)]);
    assert_eq!(std::fs::read(img.path()).unwrap()[..64 * 1024], data[..]);
    // And back, into MMIO, through the bounce buffer's write-back.
    mmio.data.lock().unwrap().fill(0);
    let (r3, d3) = recorder();
    dma_rw(
        &ctx,
        &mem,
        backend,
        DmaDirection::Read,
        0,
        sg(&[(1 << 30, 64 * 1024)]),
        d3,
    );
    run_until(&ctx, || !r3.borrow().is_empty());
    assert_eq!(*r3.borrow(), vec![Ok(64 * 1024)]);
    assert_eq!(*mmio.data.lock().unwrap(), data);
    assert_eq!(mem.bounce().in_use(), 0);
}

/// Review finding: results known at once (a fault while mapping, an empty list, a
/// refused submit) are still delivered from the loop, never inside `dma_rw`.
#[test]
fn completion_never_runs_inside_dma_rw() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "completion_never_runs_inside_dma_rw") {
        return;
    }
    let backend = Arc::new(SlowBackend::new(1 << 20, Duration::from_millis(1)));
    let mem = DmaMemory::new(ram(1 << 20));
    let cases = [
        (sg(&[(1 << 40, 512)]), Err(Errno::EFAULT), 0),
        (sg(&[]), Ok(0), 0),
        (sg(&[(0, 512)]), Err(Errno::EINVAL), 1 << 30), // past the end: refused at submit
    ];
    for (list, want, offset) in cases {
        let (r, done) = recorder();
        let req = dma_rw(
            &ctx,
            &mem,
            backend.clone(),
            DmaDirection::Read,
            offset,
            list,
            done,
        );
        assert!(r.borrow().is_empty(), "ran inside dma_rw");
        req.cancel(); // already decided: a no-op
        run_until(&ctx, || !r.borrow().is_empty());
        settle(&ctx);
        assert_eq!(*r.borrow(), vec![want]);
    }
}
