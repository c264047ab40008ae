//! block-dma alone, on a buffered temporary image (the page cache answers, so these
//! measure our submission and completion path, not a disk):
//!
//! - `file`: 4 KiB reads and writes at random aligned offsets through
//!   `FileBackend::submit`, one in flight (QD1) and 32 in flight (QD32); per operation.
//! - `dma_rw`: one 4 KiB transfer of a guest scatter-gather list of four 1 KiB ranges,
//!   read and write, mapped in place from RAM (`sg-ram`) against the same transfer to
//!   MMIO, which goes through map-client's bounce buffer (`bounce-mmio`); per request.
//! - `sglist`: building an `SgList` of 4 entries (inline) and of 16 (spilled to the
//!   heap).
//!
//! fio against the load generator on a real disk: `benches/block-dma-compare` at the
//! workspace root.

use std::cell::{Cell, RefCell};
use std::hint::black_box;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aio_context::AioContext;
use block_dma::{
    AlignedBuf, BlockBackend, BlockOp, DmaDirection, DmaMemory, Errno, FileBackend, FileOptions,
    IoBuffers, MmioAccess, SgList, dma_rw,
};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ram_block::{Backing, RamBlock, RamList};
use vm_memory::GuestAddress;

const BLOCK: usize = 4096;
/// The image: 16 MiB, written once so that reads hit data, not holes.
const IMAGE_SIZE: u64 = 16 << 20;
/// Guest RAM at 0; everything above it is MMIO.
const RAM_SIZE: u64 = 1 << 20;
const MMIO_BASE: u64 = 1 << 30;

/// The bench thread's context and a buffered `FileBackend` on a temporary image of
/// `IMAGE_SIZE` bytes in the target directory (not tmpfs), which lives as long as the
/// returned file; `None`, after a loud SKIPPED line, without io_uring.
fn context_and_image(benches: &str) -> Option<(AioContext, FileBackend, tempfile::NamedTempFile)> {
    let ctx = AioContext::new().expect("an AioContext for the bench thread");
    if !ctx.supports_io_uring_ops() {
        eprintln!(
            "SKIPPED block-dma {benches} benches: io_uring operations are not available here"
        );
        return None;
    }
    let image =
        tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).expect("a temporary image");
    std::fs::write(image.path(), vec![0x5a; IMAGE_SIZE as usize]).expect("fill the image");
    let file = FileBackend::open(&FileOptions::new(image.path()).direct(false))
        .expect("open the image buffered");
    Some((ctx, file, image))
}

/// The `i`-th offset of a fixed pseudo-random walk over the image's 4 KiB blocks.
fn offset(i: u64) -> u64 {
    let blocks = IMAGE_SIZE / BLOCK as u64;
    (i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 40) % blocks * BLOCK as u64
}

/// Runs `ops` 4 KiB operations of `kind` on `file`, keeping `depth` of them in flight,
/// and returns how long that took. Buffers are recycled, never allocated in the loop.
fn run_file_ops(
    ctx: &AioContext,
    file: &FileBackend,
    write: bool,
    depth: u64,
    ops: u64,
) -> Duration {
    let free: Rc<RefCell<Vec<IoBuffers>>> = Rc::new(RefCell::new(
        (0..depth)
            .map(|_| IoBuffers::from_owned(AlignedBuf::zeroed(BLOCK, BLOCK)))
            .collect(),
    ));
    let finished = Rc::new(Cell::new(0u64));
    let start = Instant::now();
    let mut issued = 0;
    while finished.get() < ops {
        while issued < ops && issued - finished.get() < depth {
            let bufs = free.borrow_mut().pop().expect("a free buffer per slot");
            let offset = offset(issued);
            let op = if write {
                BlockOp::Write { offset, bufs }
            } else {
                BlockOp::Read { offset, bufs }
            };
            let (free, finished) = (free.clone(), finished.clone());
            let done = move |res: Result<u64, Errno>, bufs: Option<IoBuffers>| {
                assert_eq!(res, Ok(BLOCK as u64), "a short or failed 4 KiB transfer");
                free.borrow_mut()
                    .push(bufs.expect("a read or write returns its buffers"));
                finished.set(finished.get() + 1);
            };
            file.submit(ctx, op, Box::new(done)).expect("submit");
            issued += 1;
        }
        ctx.poll(true);
    }
    start.elapsed()
}

fn file(c: &mut Criterion) {
    let Some((ctx, file, _image)) = context_and_image("file") else {
        return;
    };
    let mut g = c.benchmark_group("file");
    g.throughput(Throughput::Elements(1));
    for (write, op) in [(false, "read"), (true, "write")] {
        for depth in [1, 32] {
            g.bench_function(format!("{op}-4k/qd{depth}"), |b| {
                b.iter_custom(|ops| run_file_ops(&ctx, &file, write, depth, ops))
            });
        }
    }
    g.finish();
}

/// MMIO that takes any DMA: reads see zeros, writes are dropped.
struct NullMmio;

impl MmioAccess for NullMmio {
    fn read(&self, _: u64, buf: &mut [u8]) -> Result<(), Errno> {
        buf.fill(0);
        Ok(())
    }
    fn write(&self, _: u64, buf: &[u8]) -> Result<(), Errno> {
        black_box(buf);
        Ok(())
    }
}

/// Four 1 KiB ranges, 8 KiB apart, from `base`.
fn four_ranges(base: u64) -> SgList {
    (0..4).map(|i| (base + i * 8192, 1024)).collect()
}

fn dma(c: &mut Criterion) {
    let Some((ctx, file, _image)) = context_and_image("dma_rw") else {
        return;
    };
    let file: Arc<dyn BlockBackend> = Arc::new(file);
    let ram = RamList::new();
    let block = RamBlock::new(
        "bench-ram",
        GuestAddress(0),
        RAM_SIZE,
        Backing::Memfd { huge_pages: false },
    )
    .expect("a memfd RAM block");
    ram.add(block).expect("map the RAM block");
    let mem = DmaMemory::new(ram).with_mmio(Arc::new(NullMmio));

    let done = Rc::new(Cell::new(false));
    let mut g = c.benchmark_group("dma_rw");
    g.throughput(Throughput::Bytes(BLOCK as u64));
    for dir in [DmaDirection::Read, DmaDirection::Write] {
        for (path, base) in [("sg-ram", 0x1000), ("bounce-mmio", MMIO_BASE)] {
            let name = format!(
                "{}-4k/{path}",
                if dir == DmaDirection::Read {
                    "read"
                } else {
                    "write"
                }
            );
            g.bench_function(name, |b| {
                let mut i = 0;
                b.iter(|| {
                    let flag = done.clone();
                    let on_done = Box::new(move |res: Result<u64, Errno>| {
                        assert_eq!(res, Ok(BLOCK as u64), "a short or failed DMA");
                        flag.set(true);
                    });
                    let req = dma_rw(
                        &ctx,
                        &mem,
                        file.clone(),
                        dir,
                        offset(i),
                        four_ranges(base),
                        on_done,
                    );
                    i += 1;
                    while !done.replace(false) {
                        ctx.poll(true);
                    }
                    drop(req);
                })
            });
        }
    }
    g.finish();
}

fn sglist(c: &mut Criterion) {
    let ranges: Vec<(u64, u64)> = (0..16).map(|i| (0x10_0000 + i * 0x3000, 512)).collect();
    let mut g = c.benchmark_group("sglist");
    for n in [4, 16] {
        g.bench_function(format!("collect-{n}"), |b| {
            b.iter(|| black_box(ranges[..n].iter().copied().collect::<SgList>()))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    // Short: the whole suite runs in well under a minute (`-- --quick` is shorter still).
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(20);
    targets = file, dma, sglist
}
criterion_main!(benches);
