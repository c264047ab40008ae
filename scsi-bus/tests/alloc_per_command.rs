//! The READ/WRITE fast path of scsi-hd allocates no more per command than the block
//! layer under it does for the same transfer (what virtio-blk pays): no per-command
//! boxes, queues or handles of its own in steady state.
//!
//! Guards the profile of issue 17: malloc/free took 12.7 % of the vhost-user-scsi
//! export thread (a `Box` around the completion, a `VecDeque` of steps, a `Box<Job>`
//! and an `Rc` per command), keeping the SCSI export under 0.9x the blk export.

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use block_dma::{DmaDirection, DmaMemory, SgList};
use common::*;
use scsi::{DataBuffer, DataDirection, HdOptions, ScsiDone, ScsiRequest, ScsiResponse, ScsiSink};

/// Counts the allocations of the thread that set `COUNTING`.
struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
    static DONE: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: the allocator may run while thread-locals are torn down.
    let _ = COUNTING.try_with(|c| {
        if c.get() {
            let _ = ALLOCS.try_with(|a| a.set(a.get() + 1));
        }
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; counting only
// touches const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: the caller's contract for `alloc` is passed on as is.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: `ptr`/`layout` came from this allocator; the contract is passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.with(Cell::get);
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCS.with(Cell::get) - before
}

/// Counts completions (a transport's sink: no state per command).
struct Sink;

static SINK: Sink = Sink;

impl ScsiSink for Sink {
    fn complete(&self, _token: usize, r: ScsiResponse) {
        assert_eq!(r, ScsiResponse::good(4096));
        DONE.with(|d| d.set(d.get() + 1));
    }
}

fn wait_done(h: &Harness, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while DONE.with(Cell::get) < n {
        assert!(Instant::now() < deadline, "command hung");
        h.ctx.poll(true);
    }
}

const COMMANDS: u64 = 256;

#[test]
fn a_read_allocates_no_more_than_the_block_layer_under_it() {
    let h = Harness::new();
    if !have_uring(
        &h.ctx,
        "a_read_allocates_no_more_than_the_block_layer_under_it",
    ) {
        return;
    }
    let img = image(1 << 20);
    let drive = drive(&img);
    h.bus
        .plug(0, 0, disk("d0", drive.clone(), HdOptions::default()))
        .unwrap();
    h.clear_ua();
    let mem = DmaMemory::new(h.ram.clone());
    let sg: SgList = [(BUF, 4096)].into_iter().collect();

    let scsi_read = |i: u64| {
        let before = DONE.with(Cell::get);
        let req = ScsiRequest {
            cdb: rw10(0x28, (i % 200) as u32 * 8, 8)[..].into(),
            data: DataBuffer {
                mem: mem.clone(),
                sg: sg.clone(),
                dir: DataDirection::FromDevice,
            },
        };
        drop(h.bus.execute(&h.ctx, 0, 0, req, ScsiDone::sink(&SINK, 0)));
        wait_done(&h, before + 1);
    };
    let dma_read = |i: u64| {
        let before = DONE.with(Cell::get);
        let req = drive.dma(
            &h.ctx,
            &mem,
            DmaDirection::Read,
            (i % 200) * 4096,
            sg.clone(),
            // Captures state, as virtio-blk's completion does.
            Box::new(move |r| {
                assert_eq!(r, Ok(4096 + i - i));
                DONE.with(|d| d.set(d.get() + 1));
            }),
        );
        drop(req);
        wait_done(&h, before + 1);
    };

    // Warm up: pools, slabs, the ring and the context reach their steady state.
    for i in 0..COMMANDS {
        scsi_read(i);
        dma_read(i);
    }
    let scsi = allocations(|| (0..COMMANDS).for_each(scsi_read));
    let dma = allocations(|| (0..COMMANDS).for_each(dma_read));
    eprintln!(
        "allocations per 4k READ: scsi-hd {:.2}, block layer alone {:.2}",
        scsi as f64 / COMMANDS as f64,
        dma as f64 / COMMANDS as f64
    );
    assert!(
        scsi <= dma,
        "scsi-hd allocates per READ beyond the block layer: {scsi} vs {dma} allocations \
         for {COMMANDS} commands"
    );
}
