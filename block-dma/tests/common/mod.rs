//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::cell::RefCell;
use std::io::Write;
use std::rc::Rc;
use std::time::{Duration, Instant};

use aio_context::AioContext;
use block_dma::{Errno, SgList};
use ram_block::{Backing, RamBlock, RamList};
use sha2::{Digest, Sha256};
use vm_memory::{Bytes, GuestAddress};

/// Guest RAM: one memfd block of `size` bytes at 0.
pub fn ram(size: u64) -> RamList {
    let ram = RamList::new();
    ram.add(
        RamBlock::new(
            "ram",
            GuestAddress(0),
            size,
            Backing::Memfd { huge_pages: false },
        )
        .unwrap(),
    )
    .unwrap();
    ram
}

/// A deterministic byte pattern.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// SHA-256 hex of `data`.
pub fn sha(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A temporary image of `size` bytes filled with `fill`.
pub fn image(size: usize, fill: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new_in(env_tmp()).unwrap();
    let mut data = fill.to_vec();
    data.resize(size, 0);
    f.write_all(&data).unwrap();
    f.flush().unwrap();
    f
}

/// A directory on a disk file system (not tmpfs), so O_DIRECT is tested for real.
pub fn env_tmp() -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes `data` into guest memory at `addr`.
pub fn poke(ram: &RamList, addr: u64, data: &[u8]) {
    let guard = rcu::read();
    ram.blocks(&guard)
        .write_slice(data, GuestAddress(addr))
        .unwrap();
}

/// Reads `len` bytes of guest memory at `addr`.
pub fn peek(ram: &RamList, addr: u64, len: usize) -> Vec<u8> {
    let guard = rcu::read();
    let mut buf = vec![0; len];
    ram.blocks(&guard)
        .read_slice(&mut buf, GuestAddress(addr))
        .unwrap();
    buf
}

/// An SG list from `(addr, len)` pairs.
pub fn sg(entries: &[(u64, u64)]) -> SgList {
    entries.iter().copied().collect()
}

/// A completion slot: the results a callback delivered.
pub type Results = Rc<RefCell<Vec<Result<u64, Errno>>>>;

/// A callback that records into a fresh slot.
pub fn recorder() -> (Results, block_dma::DmaDone) {
    let results: Results = Rc::default();
    let r = results.clone();
    (results, Box::new(move |res| r.borrow_mut().push(res)))
}

/// Polls `ctx` until `cond` holds (10 s limit).
pub fn run_until(ctx: &AioContext, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        if !ctx.poll(false) {
            std::thread::sleep(Duration::from_micros(50));
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting"
        );
    }
}

/// Polls `ctx` without blocking for a little while (lets stray completions arrive).
pub fn settle(ctx: &AioContext) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(50) {
        ctx.poll(false);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Whether io_uring works here; prints a loud SKIPPED line if not.
pub fn have_uring(ctx: &AioContext, test: &str) -> bool {
    if ctx.supports_io_uring_ops() {
        return true;
    }
    eprintln!("SKIPPED {test}: io_uring operations are not available on this kernel");
    false
}

/// A backend whose reads and writes are io_uring timeouts of `delay`: they stay in
/// flight until then (or until cancelled), then succeed without touching the buffers.
pub struct SlowBackend {
    pub info: block_dma::BackendInfo,
    pub delay: Duration,
    pub submitted: std::sync::atomic::AtomicU64,
}

impl SlowBackend {
    pub fn new(size: u64, delay: Duration) -> SlowBackend {
        SlowBackend {
            info: block_dma::BackendInfo {
                size,
                read_only: false,
                request_alignment: 1,
                memory_alignment: 1,
                discard: true,
                write_zeroes: true,
                direct: false,
            },
            delay,
            submitted: Default::default(),
        }
    }
}

impl block_dma::BlockBackend for SlowBackend {
    fn info(&self) -> &block_dma::BackendInfo {
        &self.info
    }

    fn submit(
        &self,
        ctx: &AioContext,
        op: block_dma::BlockOp,
        done: block_dma::Done,
    ) -> Result<block_dma::Ticket, Errno> {
        block_dma::check_op(&self.info, &op)?;
        self.submitted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let len = op.range().map_or(0, |(_, l)| l);
        let bufs = op.into_bufs();
        let ts = Box::new(io_uring::types::Timespec::from(self.delay));
        let entry = io_uring::opcode::Timeout::new(&*ts).build();
        let cb = move |res: i32| {
            drop(ts);
            // A timeout that expires reports -ETIME: that is our success.
            let result = if res == -libc::ETIME || res == 0 {
                Ok(len)
            } else {
                Err(Errno::from_cqe(res))
            };
            done(result, bufs);
        };
        // SAFETY: the timespec is owned by the callback until the CQE.
        unsafe { ctx.submit(entry, cb) }
            .map(block_dma::Ticket::Uring)
            .map_err(|e| Errno::from_io(&e))
    }

    fn cancel(&self, ctx: &AioContext, ticket: block_dma::Ticket) {
        let block_dma::Ticket::Uring(id) = ticket;
        let _ = ctx.cancel_op(id);
    }
}

/// MMIO that accepts DMA: a byte array at `base`, counting accesses.
pub struct FakeMmio {
    pub base: u64,
    pub data: std::sync::Mutex<Vec<u8>>,
    pub reads: std::sync::atomic::AtomicU64,
    pub writes: std::sync::atomic::AtomicU64,
}

impl FakeMmio {
    pub fn new(base: u64, len: usize) -> FakeMmio {
        FakeMmio {
            base,
            data: std::sync::Mutex::new(vec![0; len]),
            reads: Default::default(),
            writes: Default::default(),
        }
    }

    fn range(&self, addr: u64, len: usize) -> Result<std::ops::Range<usize>, Errno> {
        let start = addr.checked_sub(self.base).ok_or(Errno::EFAULT)? as usize;
        let end = start.checked_add(len).ok_or(Errno::EFAULT)?;
        if end > self.data.lock().unwrap().len() {
            return Err(Errno::EFAULT);
        }
        Ok(start..end)
    }
}

impl block_dma::MmioAccess for FakeMmio {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        self.reads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let r = self.range(addr, buf.len())?;
        buf.copy_from_slice(&self.data.lock().unwrap()[r]);
        Ok(())
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Errno> {
        self.writes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let r = self.range(addr, buf.len())?;
        self.data.lock().unwrap()[r].copy_from_slice(buf);
        Ok(())
    }
}
