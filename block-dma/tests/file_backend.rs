//! The raw file backend on real io_uring: round trips checked by hash, buffered and
//! O_DIRECT, unaligned requests and memory, flush, discard, write-zeroes, and clear
//! errors for bad images.

mod common;

use std::sync::Arc;

use aio_context::AioContext;
use block_dma::{
    AlignedBuf, BlockBackend, BlockOp, DmaDirection, DmaMemory, Errno, FileBackend, FileOptions,
    IoBuffers, OpenError, dma_rw,
};
use common::*;

const MIB: usize = 1 << 20;

fn round_trip(direct: bool) {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "round_trip") {
        return;
    }
    let img = image(4 * MIB, &[]);
    let backend = match FileBackend::open(&FileOptions::new(img.path()).direct(direct)) {
        Err(OpenError::Open { source, .. })
            if direct && source.raw_os_error() == Some(libc::EINVAL) =>
        {
            eprintln!("SKIPPED O_DIRECT round trip: the file system refuses O_DIRECT");
            return;
        }
        r => Arc::new(r.unwrap()),
    };
    assert_eq!(backend.info().size, 4 * MIB as u64);
    assert_eq!(backend.info().direct, direct);
    let ram = ram(8 * MIB as u64);
    let mem = DmaMemory::new(ram.clone());
    // 1 MiB from three guest pieces (page-aligned: the O_DIRECT fast path).
    let data = pattern(7, MIB);
    poke(&ram, 0x10_0000, &data[..0x4_0000]);
    poke(&ram, 0x40_0000, &data[0x4_0000..0xc_0000]);
    poke(&ram, 0x20_0000, &data[0xc_0000..]);
    let pieces = sg(&[
        (0x10_0000, 0x4_0000),
        (0x40_0000, 0x8_0000),
        (0x20_0000, 0x4_0000),
    ]);
    let (w, done) = recorder();
    dma_rw(
        &ctx,
        &mem,
        backend.clone(),
        DmaDirection::Write,
        2 * MIB as u64,
        pieces,
        done,
    );
    run_until(&ctx, || !w.borrow().is_empty());
    assert_eq!(*w.borrow(), vec![Ok(MIB as u64)]);
    // Flush, then the file holds the data.
    let (f, done) = recorder();
    let flush_done = Box::new(move |res: Result<u64, Errno>, _| done(res));
    backend.submit(&ctx, BlockOp::Flush, flush_done).unwrap();
    run_until(&ctx, || !f.borrow().is_empty());
    assert_eq!(*f.borrow(), vec![Ok(0)]);
    let on_disk = std::fs::read(img.path()).unwrap();
    assert_eq!(sha(&on_disk[2 * MIB..3 * MIB]), sha(&data));
    // Read it back elsewhere in guest memory, in one piece.
    let (r, done) = recorder();
    dma_rw(
        &ctx,
        &mem,
        backend.clone(),
        DmaDirection::Read,
        2 * MIB as u64,
        sg(&[(0x60_0000, MIB as u64)]),
        done,
    );
    run_until(&ctx, || !r.borrow().is_empty());
    assert_eq!(*r.borrow(), vec![Ok(MIB as u64)]);
    assert_eq!(sha(&peek(&ram, 0x60_0000, MIB)), sha(&data));
}

#[test]
fn buffered_round_trip() {
    round_trip(false);
}

#[test]
fn direct_round_trip() {
    round_trip(true);
}

#[test]
fn direct_with_unaligned_memory_and_offsets() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "direct_with_unaligned_memory_and_offsets") {
        return;
    }
    let initial = pattern(1, MIB);
    let img = image(MIB, &initial);
    let Ok(backend) = FileBackend::open(&FileOptions::new(img.path()).direct(true)) else {
        eprintln!("SKIPPED: the file system refuses O_DIRECT");
        return;
    };
    let backend = Arc::new(backend);
    let align = backend.info().request_alignment as u64;
    assert!(align >= 512, "O_DIRECT alignment {align}");
    let ram = ram(4 * MIB as u64);
    let mem = DmaMemory::new(ram.clone());
    let mut expect = initial.clone();

    // Unaligned guest memory (odd address), aligned offset: our aligned copy.
    let data = pattern(2, 8192);
    poke(&ram, 0x1_0001, &data);
    let (w, done) = recorder();
    dma_rw(
        &ctx,
        &mem,
        backend.clone(),
        DmaDirection::Write,
        4096,
        sg(&[(0x1_0001, 8192)]),
        done,
    );
    run_until(&ctx, || !w.borrow().is_empty());
    assert_eq!(*w.borrow(), vec![Ok(8192)]);
    expect[4096..4096 + 8192].copy_from_slice(&data);

    // Unaligned offset and length straight on the backend (512-byte sector inside a
    // 4 KiB block, or a 100-byte write): the buffered descriptor.
    for (offset, len, seed) in [
        (512u64, 512usize, 3u64),
        (70_000, 100, 4),
        (align * 3 + 1, 1000, 5),
    ] {
        let data = pattern(seed, len);
        let mut buf = AlignedBuf::zeroed(len, 1);
        buf.copy_from_slice(&data);
        let (w, done) = recorder();
        let cb = Box::new(move |res: Result<u64, Errno>, _| done(res));
        let op = BlockOp::Write {
            offset,
            bufs: IoBuffers::from_owned(buf),
        };
        backend.submit(&ctx, op, cb).unwrap();
        run_until(&ctx, || !w.borrow().is_empty());
        assert_eq!(*w.borrow(), vec![Ok(len as u64)], "write {len} at {offset}");
        expect[offset as usize..offset as usize + len].copy_from_slice(&data);
    }
    // O_DIRECT reads see what the buffered path wrote (the kernel keeps them coherent).
    let (r, done) = recorder();
    dma_rw(
        &ctx,
        &mem,
        backend.clone(),
        DmaDirection::Read,
        0,
        sg(&[(0x10_0000, MIB as u64)]),
        done,
    );
    run_until(&ctx, || !r.borrow().is_empty());
    assert_eq!(*r.borrow(), vec![Ok(MIB as u64)]);
    assert_eq!(sha(&peek(&ram, 0x10_0000, MIB)), sha(&expect));
    // An unaligned read into unaligned memory.
    let (r, done) = recorder();
    dma_rw(
        &ctx,
        &mem,
        backend.clone(),
        DmaDirection::Read,
        70_000 - 300,
        sg(&[(0x3_0003, 700)]),
        done,
    );
    run_until(&ctx, || !r.borrow().is_empty());
    assert_eq!(*r.borrow(), vec![Ok(700)]);
    assert_eq!(
        peek(&ram, 0x3_0003, 700),
        expect[70_000 - 300..70_000 + 400]
    );
    assert_eq!(sha(&std::fs::read(img.path()).unwrap()), sha(&expect));
}

#[test]
fn discard_and_write_zeroes_read_back_zeros() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "discard_and_write_zeroes_read_back_zeros") {
        return;
    }
    for direct in [false, true] {
        let img = image(MIB, &pattern(9, MIB));
        let Ok(backend) = FileBackend::open(&FileOptions::new(img.path()).direct(direct)) else {
            eprintln!("SKIPPED direct={direct}: cannot open");
            continue;
        };
        let ops = [
            BlockOp::Discard {
                offset: 0,
                len: 65536,
            },
            BlockOp::WriteZeroes {
                offset: 131072,
                len: 65536,
                unmap: false,
            },
            BlockOp::WriteZeroes {
                offset: 262144,
                len: 8192,
                unmap: true,
            },
        ];
        for op in ops {
            let (d, done) = recorder();
            let cb = Box::new(move |res: Result<u64, Errno>, _| done(res));
            backend.submit(&ctx, op, cb).unwrap();
            run_until(&ctx, || !d.borrow().is_empty());
            assert_eq!(*d.borrow(), vec![Ok(0)]);
        }
        let data = std::fs::read(img.path()).unwrap();
        assert!(data[..65536].iter().all(|&b| b == 0), "discard");
        assert!(data[131072..196608].iter().all(|&b| b == 0), "write zeroes");
        assert!(
            data[262144..270336].iter().all(|&b| b == 0),
            "write zeroes, unmap"
        );
        assert_eq!(data[65536..131072], pattern(9, MIB)[65536..131072]);
        assert_eq!(data.len(), MIB, "the size is kept");
    }
}

#[test]
fn read_only_image_refuses_writes() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "read_only_image_refuses_writes") {
        return;
    }
    let img = image(65536, &pattern(3, 65536));
    let backend =
        Arc::new(FileBackend::open(&FileOptions::new(img.path()).read_only(true)).unwrap());
    assert!(backend.info().read_only);
    let mem = DmaMemory::new(ram(1 << 20));
    let (w, done) = recorder();
    dma_rw(
        &ctx,
        &mem,
        backend.clone(),
        DmaDirection::Write,
        0,
        sg(&[(0, 4096)]),
        done,
    );
    run_until(&ctx, || !w.borrow().is_empty());
    assert_eq!(*w.borrow(), vec![Err(Errno::EROFS)]);
    for op in [
        BlockOp::Discard {
            offset: 0,
            len: 512,
        },
        BlockOp::WriteZeroes {
            offset: 0,
            len: 512,
            unmap: false,
        },
    ] {
        let err = backend
            .submit(&ctx, op, Box::new(|_, _| panic!("must not run")))
            .unwrap_err();
        assert_eq!(err, Errno::EROFS);
    }
    // A flush succeeds (QEMU's bdrv_co_flush on a read-only node), and reads work.
    let (f, done) = recorder();
    let cb = Box::new(move |res: Result<u64, Errno>, _| done(res));
    backend.submit(&ctx, BlockOp::Flush, cb).unwrap();
    run_until(&ctx, || !f.borrow().is_empty());
    assert_eq!(*f.borrow(), vec![Ok(0)]);
    let (r, done) = recorder();
    dma_rw(
        &ctx,
        &mem,
        backend,
        DmaDirection::Read,
        0,
        sg(&[(0, 4096)]),
        done,
    );
    run_until(&ctx, || !r.borrow().is_empty());
    assert_eq!(*r.borrow(), vec![Ok(4096)]);
    assert_eq!(std::fs::read(img.path()).unwrap(), pattern(3, 65536));
}

#[test]
fn out_of_range_requests_fail_cleanly() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "out_of_range_requests_fail_cleanly") {
        return;
    }
    let img = image(65536, &[]);
    let backend = Arc::new(FileBackend::open(&FileOptions::new(img.path())).unwrap());
    let mem = DmaMemory::new(ram(1 << 20));
    for (offset, len) in [(65536u64, 512u64), (65024, 1024), (u64::MAX - 511, 512)] {
        let (r, done) = recorder();
        dma_rw(
            &ctx,
            &mem,
            backend.clone(),
            DmaDirection::Read,
            offset,
            sg(&[(0, len)]),
            done,
        );
        run_until(&ctx, || !r.borrow().is_empty());
        assert_eq!(*r.borrow(), vec![Err(Errno::EINVAL)], "{len} at {offset}");
    }
    // Guest addresses outside RAM (no MMIO): EFAULT, including one that wraps.
    for (addr, len) in [
        (1u64 << 40, 512u64),
        (u64::MAX - 100, 512),
        ((1 << 20) - 256, 512),
    ] {
        let (r, done) = recorder();
        dma_rw(
            &ctx,
            &mem,
            backend.clone(),
            DmaDirection::Read,
            0,
            sg(&[(addr, len)]),
            done,
        );
        run_until(&ctx, || !r.borrow().is_empty());
        assert_eq!(*r.borrow(), vec![Err(Errno::EFAULT)], "{len} at {addr:#x}");
    }
}

#[test]
fn bad_images_get_clear_errors() {
    let dir = tempfile::tempdir_in(env_tmp()).unwrap();
    let missing = dir.path().join("missing.img");
    let err = FileBackend::open(&FileOptions::new(&missing)).unwrap_err();
    assert!(matches!(err, OpenError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("missing.img"), "{err}");

    let small = image(100, &[1; 100]);
    let err = FileBackend::open(&FileOptions::new(small.path())).unwrap_err();
    assert!(
        matches!(err, OpenError::TooSmall { size: 100, .. }),
        "{err}"
    );

    let mut opts = FileOptions::new(image(4096, &[]).path());
    opts.min_size = 8192;
    assert!(matches!(
        FileBackend::open(&opts),
        Err(OpenError::TooSmall { .. }) | Err(OpenError::NotFound { .. })
    ));

    let err = FileBackend::open(&FileOptions::new(dir.path())).unwrap_err();
    assert!(matches!(err, OpenError::NotAFile { .. }), "{err}");

    // Unreadable (as root, permissions do not stop us; use a file in a dir we cannot
    // search only when not root).
    let ro = image(4096, &[]);
    let mut perms = std::fs::metadata(ro.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o000);
    std::fs::set_permissions(ro.path(), perms).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        let err = FileBackend::open(&FileOptions::new(ro.path())).unwrap_err();
        assert!(matches!(err, OpenError::Open { .. }), "{err}");
    } else {
        eprintln!("note: running as root, the unreadable-file case is not observable");
    }
}
