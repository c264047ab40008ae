//! `AioContext::fixed_file`: registered files that SQEs name by slot, on both fd
//! monitor backends, and their release when the `FixedFile` is dropped (seen through a
//! pipe: its read end reads EOF only once nothing, the ring's table included, holds the
//! write end).

use std::fs::File;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use io_uring::{opcode, types};
use nix::fcntl::OFlag;

use crate::refill_tests::{context_with_ops, run_op};
use crate::{AioContext, Backend, FixedFile, OpOptions};

/// Submits `entry`, whose fd is a registered file's slot, and runs the context until
/// its result.
fn run(ctx: &AioContext, entry: io_uring::squeue::Entry) -> i32 {
    let opts = OpOptions {
        fixed_file: true,
        ..OpOptions::default()
    };
    // SAFETY: the entry's buffer is the test's and outlives this call; its slot names a
    // registered file that is alive.
    unsafe { run_op(ctx, entry, opts) }
}

fn memfd_with(data: &[u8]) -> FixedFile {
    let fd =
        nix::sys::memfd::memfd_create(c"fixed", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
    assert_eq!(nix::unistd::write(&fd, data).unwrap(), data.len());
    FixedFile::new(File::from(fd))
}

/// Reads `len` bytes at `offset` through `slot`.
fn read_fixed(ctx: &AioContext, slot: u32, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    let read = opcode::Read::new(types::Fixed(slot), buf.as_mut_ptr(), len as u32)
        .offset(offset)
        .build();
    assert_eq!(run(ctx, read), len as i32, "read through slot {slot}");
    buf
}

/// A pipe whose write end is a `FixedFile` registered with `ctx`'s ring; the read end
/// non-blocking. `None` (with a SKIPPED line) if the kernel refuses the registration.
fn registered_pipe(ctx: &AioContext) -> Option<(OwnedFd, FixedFile)> {
    let (rd, wr) = nix::unistd::pipe2(OFlag::O_NONBLOCK | OFlag::O_CLOEXEC).unwrap();
    let wr = FixedFile::new(File::from(wr));
    if ctx.fixed_file(&wr).is_none() {
        eprintln!("SKIPPED fixed_file release test: the kernel refused the registration");
        return None;
    }
    Some((rd, wr))
}

/// Whether the pipe's read end sees EOF (every write end closed, in the kernel too).
fn at_eof(rd: &OwnedFd) -> bool {
    let mut b = [0u8; 1];
    match nix::unistd::read(rd, &mut b) {
        Ok(0) => true,
        Err(nix::errno::Errno::EAGAIN) => false,
        other => panic!("unexpected read of the pipe: {other:?}"),
    }
}

fn reads_and_writes_through_a_registered_file(backend: Backend) {
    let Some(ctx) = context_with_ops(backend, "fixed_file") else {
        return;
    };
    let data: Vec<u8> = (0..16384u32).map(|i| (i % 251) as u8).collect();
    let a = memfd_with(&data);
    let Some(slot) = ctx.fixed_file(&a) else {
        eprintln!("SKIPPED fixed_file test on {backend:?}: the kernel refused the registration");
        return;
    };
    assert_eq!(ctx.fixed_file(&a), Some(slot), "same file, same slot");
    let b = memfd_with(&[7u8; 4096]);
    let b_slot = ctx.fixed_file(&b).expect("a second file");
    assert_ne!(b_slot, slot, "two files, two slots");
    assert_eq!(ctx.fixed_files(), 2);

    assert_eq!(read_fixed(&ctx, slot, 4096, 4096), &data[4096..8192]);
    assert_eq!(read_fixed(&ctx, b_slot, 0, 4096), vec![7u8; 4096]);

    // A write through the slot lands in the file.
    let src = [0xa5u8; 512];
    let write = opcode::Write::new(types::Fixed(slot), src.as_ptr(), 512)
        .offset(0)
        .build();
    assert_eq!(run(&ctx, write), 512);
    let mut back = [0u8; 512];
    std::os::unix::fs::FileExt::read_exact_at(&*a, &mut back, 0).unwrap();
    assert_eq!(back, src, "WRITE through the slot wrote the file");
}

#[test]
fn fixed_file_reads_and_writes_on_io_uring() {
    reads_and_writes_through_a_registered_file(Backend::IoUring);
}

#[test]
fn fixed_file_reads_and_writes_on_epoll() {
    reads_and_writes_through_a_registered_file(Backend::Epoll);
}

/// Dropping a registered file closes it in the kernel at the context's next iteration,
/// and its slot then serves another file, whose bytes (not the old file's) it reads.
#[test]
fn fixed_file_is_released_when_dropped() {
    let Some(ctx) = context_with_ops(Backend::IoUring, "fixed_file") else {
        return;
    };
    let Some((rd, wr)) = registered_pipe(&ctx) else {
        return;
    };
    assert!(!at_eof(&rd), "the write end is open");
    drop(wr);
    assert!(
        !at_eof(&rd),
        "the ring's table still holds the write end (else this test proves nothing)"
    );
    ctx.poll(false);
    assert!(at_eof(&rd), "the context released the dropped file");
    assert_eq!(ctx.fixed_files(), 0);

    let c = memfd_with(&[3u8; 4096]);
    let slot = ctx.fixed_file(&c).expect("a new file registers");
    assert_eq!(read_fixed(&ctx, slot, 0, 4096), vec![3u8; 4096]);
}

/// A file dropped on another thread is released by the context that registered it.
#[test]
fn fixed_file_dropped_on_another_thread_is_released() {
    let Some(ctx) = context_with_ops(Backend::IoUring, "fixed_file") else {
        return;
    };
    let Some((rd, wr)) = registered_pipe(&ctx) else {
        return;
    };
    std::thread::spawn(move || drop(wr)).join().unwrap();
    let start = Instant::now();
    while !at_eof(&rd) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the dropped file was never released"
        );
        // Not a blocking poll: without the release nothing would wake it again.
        if !ctx.poll(false) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    assert_eq!(ctx.fixed_files(), 0);
}

/// A full table refuses the next file (which then stays on the plain path) without
/// failing; once a registered file is dropped, a new one gets its slot.
#[test]
fn fixed_file_table_full_refuses_then_recovers() {
    let Some(ctx) = context_with_ops(Backend::IoUring, "fixed_file") else {
        return;
    };
    let mut files = Vec::new();
    loop {
        let f = memfd_with(&[1u8; 512]);
        match ctx.fixed_file(&f) {
            Some(_) => files.push(f),
            None => {
                assert!(
                    !files.is_empty(),
                    "SKIPPED-worthy: the kernel refused the first registration"
                );
                assert_eq!(ctx.fixed_file(&f), None, "a refused file stays refused");
                break;
            }
        }
        assert!(files.len() <= 4096, "the table never fills");
    }
    assert_eq!(files.len(), 256, "the table's size");
    drop(files.pop());
    ctx.poll(false);
    let g = memfd_with(&[9u8; 512]);
    let slot = ctx.fixed_file(&g).expect("a freed slot serves a new file");
    assert_eq!(read_fixed(&ctx, slot, 0, 512), vec![9u8; 512]);
}
