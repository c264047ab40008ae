//! Seed 000 (QEMU acc60586, "dma-helpers: Fix race condition of
//! continue_after_map_failure and dma_aio_cancel"): a DMA request waits for a one-page
//! bounce buffer; another thread releases the buffer (which notifies the waiters) at the
//! same moment as the request is cancelled. In QEMU the notification could run the
//! waiter's callback on the releasing thread after the cancel freed the request: a
//! use-after-free. Here notification only schedules the request's BH in its own
//! context, and cancel unregisters the waiter and deletes the BH first: the request
//! completes exactly once, with ECANCELED, never maps or submits again, and its waiter
//! BH never runs (`block_dma::stray_waiter_runs`: the BH's own token check would make
//! such a run invisible otherwise).

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use aio_context::AioContext;
use block_dma::{DmaDirection, DmaMemory, Errno, dma_rw};
use common::*;
use map_client::{Bounce, Direction, Mapping};

#[test]
fn cancel_races_release_of_a_one_page_bounce_buffer() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "seed000") {
        return;
    }
    let iterations = if cfg!(debug_assertions) { 300 } else { 2000 };
    let backend = Arc::new(SlowBackend::new(1 << 20, Duration::from_millis(1)));
    let mmio = Arc::new(FakeMmio::new(1 << 30, 8192));
    let bounce = Bounce::new(4096);
    let mem = DmaMemory::new(ram(1 << 20))
        .with_bounce(bounce.clone())
        .with_mmio(mmio.clone());
    let barrier = Arc::new(Barrier::new(2));
    let mut ran_after_cancel = 0;
    for i in 0..iterations {
        // Another device (another thread) holds the whole budget.
        let held = match bounce.map(&*mmio_mem(&mem), 1 << 30, 4096, Direction::ToDevice) {
            Ok(Mapping::Bounce(m)) => m,
            other => panic!("expected a bounce mapping, got {other:?}"),
        };
        let (rb, done) = recorder();
        let b = dma_rw(
            &ctx,
            &mem,
            backend.clone(),
            DmaDirection::Write,
            0,
            sg(&[((1 << 30) + 4096, 4096)]),
            done,
        );
        assert!(b.is_waiting(), "iteration {i}");
        let reads = mmio.reads.load(Ordering::SeqCst);
        let submitted = backend.submitted.load(Ordering::SeqCst);
        let bar = barrier.clone();
        let releaser = std::thread::spawn(move || {
            bar.wait();
            drop(held); // release: notifies the waiter (schedules its BH)
        });
        barrier.wait();
        if i % 2 == 0 {
            std::hint::spin_loop();
        }
        b.cancel();
        releaser.join().unwrap();
        run_until(&ctx, || !rb.borrow().is_empty());
        for _ in 0..3 {
            ctx.poll(false);
        }
        assert_eq!(*rb.borrow(), vec![Err(Errno::ECANCELED)], "iteration {i}");
        if mmio.reads.load(Ordering::SeqCst) != reads
            || backend.submitted.load(Ordering::SeqCst) != submitted
        {
            ran_after_cancel += 1;
        }
        assert_eq!(bounce.waiting(), 0);
        assert_eq!(bounce.in_use(), 0);
        // Nothing the cancelled request registered may run: the token lookup in the
        // waiter's BH would hide such a run, so it is counted.
        assert_eq!(
            block_dma::stray_waiter_runs(),
            0,
            "iteration {i}: the cancelled request's waiter BH ran (cancel did not delete it)"
        );
    }
    assert_eq!(
        ran_after_cancel, 0,
        "a cancelled request mapped or submitted again"
    );
}

/// The MMIO part of `mem`, to map the "other device's" buffer through the same bounce.
fn mmio_mem(mem: &DmaMemory) -> Box<DmaMemory> {
    Box::new(mem.clone())
}
