//! `FileOptions::registered_buffers`: guest RAM read and written through io_uring
//! registered buffers (`READ_FIXED`/`WRITE_FIXED`, and `READV_FIXED`/`WRITEV_FIXED` on
//! Linux 6.15+), checked by hash, and what the kernel pins (`VmPin` in
//! `/proc/self/status`: io_uring accounts registered buffers there, and an ordinary
//! O_DIRECT request's pages only while it runs).

mod common;

use std::sync::{Arc, Mutex};

use aio_context::AioContext;
use block_dma::{DmaDirection, DmaMemory, FileBackend, FileOptions, OpenError, dma_rw};
use common::*;
use ram_block::{Backing, RamBlock, RamList};
use vm_memory::GuestAddress;

const MIB: usize = 1 << 20;
const RAM: u64 = 16 << 20;

/// The tests compare the process's pinned memory: one at a time.
static PINNING: Mutex<()> = Mutex::new(());

fn pinned_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmPin:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmPin in /proc/self/status")
}

fn open(img: &tempfile::NamedTempFile, registered: bool) -> Option<Arc<FileBackend>> {
    let options = FileOptions::new(img.path())
        .direct(true)
        .registered_buffers(registered);
    match FileBackend::open(&options) {
        Err(OpenError::Open { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
            eprintln!("SKIPPED registered buffers: the file system refuses O_DIRECT");
            None
        }
        r => Some(Arc::new(r.unwrap())),
    }
}

/// Writes 1 MiB from three guest pieces (a vectored write), reads it back in one piece
/// (a single-buffer read) and in two pieces; returns the pinned memory growth (KiB)
/// while the backend and its context live.
fn round_trip(registered: bool) -> Option<u64> {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "registered buffers") {
        return None;
    }
    let img = image(4 * MIB, &[]);
    let backend = open(&img, registered)?;
    let ram = ram(RAM);
    let mem = DmaMemory::new(ram.clone());
    let before = pinned_kib();
    let data = pattern(11, MIB);
    poke(&ram, 0x10_0000, &data[..0x4_0000]);
    poke(&ram, 0x40_0000, &data[0x4_0000..0xc_0000]);
    poke(&ram, 0x20_0000, &data[0xc_0000..]);
    let rw = |dir, offset: u64, pieces: &[(u64, u64)]| {
        let (r, done) = recorder();
        dma_rw(&ctx, &mem, backend.clone(), dir, offset, sg(pieces), done);
        run_until(&ctx, || !r.borrow().is_empty());
        r.borrow()[0]
    };
    let pieces = [
        (0x10_0000, 0x4_0000),
        (0x40_0000, 0x8_0000),
        (0x20_0000, 0x4_0000),
    ];
    assert_eq!(
        rw(DmaDirection::Write, 3 * MIB as u64, &pieces),
        Ok(MIB as u64)
    );
    let on_disk = std::fs::read(img.path()).unwrap();
    assert_eq!(sha(&on_disk[3 * MIB..]), sha(&data), "the vectored write");
    let grew = pinned_kib().saturating_sub(before);
    // Read back at the end of the block (the last byte of a registered buffer), ...
    let end = RAM - MIB as u64;
    assert_eq!(
        rw(DmaDirection::Read, 3 * MIB as u64, &[(end, MIB as u64)]),
        Ok(MIB as u64)
    );
    assert_eq!(
        sha(&peek(&ram, end, MIB)),
        sha(&data),
        "the single-buffer read"
    );
    // ... and into two pieces in reverse order.
    let two = [(0x80_0000, 0x8_0000), (0x70_0000, 0x8_0000)];
    assert_eq!(rw(DmaDirection::Read, 3 * MIB as u64, &two), Ok(MIB as u64));
    assert_eq!(
        sha(&peek(&ram, 0x80_0000, 0x8_0000)),
        sha(&data[..0x8_0000])
    );
    assert_eq!(
        sha(&peek(&ram, 0x70_0000, 0x8_0000)),
        sha(&data[0x8_0000..])
    );
    Some(grew)
}

#[test]
fn registered_buffers_round_trip_and_pin_the_block_once() {
    let _one = PINNING.lock().unwrap_or_else(|e| e.into_inner());
    if std::env::var_os("BLOCK_DMA_REGISTERED_BUFFERS").is_some() {
        eprintln!("SKIPPED registered buffers: BLOCK_DMA_REGISTERED_BUFFERS is set");
        return;
    }
    let Some(grew) = round_trip(true) else {
        return;
    };
    if grew == 0 {
        eprintln!(
            "SKIPPED the pinning check: nothing was registered (RLIMIT_MEMLOCK or a kernel \
             that refuses the block); the round trip took the plain path and passed"
        );
        return;
    }
    assert!(
        grew >= RAM >> 10,
        "the whole RAM block is registered at its first I/O: VmPin grew {grew} kB"
    );
    // The control: without the option nothing stays pinned after the I/O.
    let plain = round_trip(false).unwrap();
    assert!(
        plain < RAM >> 10,
        "without registered buffers VmPin grew {plain} kB"
    );
}

/// An SG list across two RAM blocks has no one registered buffer: it takes the plain
/// vectored path, with the same data.
#[test]
fn registered_buffers_across_two_blocks_take_the_plain_path() {
    let _one = PINNING.lock().unwrap_or_else(|e| e.into_inner());
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "registered buffers across blocks") {
        return;
    }
    let img = image(2 * MIB, &[]);
    let Some(backend) = open(&img, true) else {
        return;
    };
    let ram = RamList::new();
    for (name, start) in [("low", 0u64), ("high", 4 << 20)] {
        let block = RamBlock::new(
            name,
            GuestAddress(start),
            4 << 20,
            Backing::Memfd { huge_pages: false },
        )
        .unwrap();
        ram.add(block).unwrap();
    }
    let mem = DmaMemory::new(ram.clone());
    let data = pattern(3, MIB);
    poke(&ram, 0x30_0000, &data[..0x8_0000]);
    poke(&ram, 0x50_0000, &data[0x8_0000..]);
    let rw = |dir, pieces: &[(u64, u64)]| {
        let (r, done) = recorder();
        dma_rw(
            &ctx,
            &mem,
            backend.clone(),
            dir,
            MIB as u64,
            sg(pieces),
            done,
        );
        run_until(&ctx, || !r.borrow().is_empty());
        r.borrow()[0]
    };
    let across = [(0x30_0000, 0x8_0000), (0x50_0000, 0x8_0000)];
    assert_eq!(rw(DmaDirection::Write, &across), Ok(MIB as u64));
    let on_disk = std::fs::read(img.path()).unwrap();
    assert_eq!(sha(&on_disk[MIB..]), sha(&data));
    let back = [(0x60_0000, 0x8_0000), (0x10_0000, 0x8_0000)];
    assert_eq!(rw(DmaDirection::Read, &back), Ok(MIB as u64));
    assert_eq!(
        sha(&peek(&ram, 0x60_0000, 0x8_0000)),
        sha(&data[..0x8_0000])
    );
    assert_eq!(
        sha(&peek(&ram, 0x10_0000, 0x8_0000)),
        sha(&data[0x8_0000..])
    );
}
