//! `FileOptions::registered_files`: the image's descriptors registered with the ring
//! (`IOSQE_FIXED_FILE` requests), the data checked by hash, and the release of the
//! kernel's reference once the backend is dropped. What the ring's table holds is seen
//! through a read lease: `F_SETLEASE` with `F_RDLCK` fails with `EAGAIN` while the file
//! is open for writing anywhere, the ring's table included.

mod common;

use std::os::fd::AsRawFd;
use std::sync::Arc;

use aio_context::AioContext;
use block_dma::{DmaDirection, DmaMemory, FileBackend, FileOptions, OpenError, dma_rw};
use common::*;

const MIB: usize = 1 << 20;

/// Whether a read lease can be taken on `path` now (no writer anywhere); releases it.
fn no_writer(path: &std::path::Path) -> bool {
    let f = std::fs::File::open(path).unwrap();
    // SAFETY: fcntl on a descriptor we own; F_SETLEASE takes an int.
    let r = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_RDLCK) };
    if r == 0 {
        // SAFETY: as above.
        unsafe { libc::fcntl(f.as_raw_fd(), libc::F_SETLEASE, libc::F_UNLCK) };
        return true;
    }
    let e = std::io::Error::last_os_error();
    assert_eq!(e.raw_os_error(), Some(libc::EAGAIN), "F_SETLEASE: {e}");
    false
}

/// Writes and reads 1 MiB (aligned: the O_DIRECT descriptor) and 512 bytes at an
/// unaligned offset (the buffered one) through a backend opened with `registered`,
/// drops it, and returns whether the file still had a writer right after the drop
/// (before the context ran again) and whether it has one after the context ran.
fn round_trip_then_drop(registered: bool) -> Option<(bool, bool)> {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "registered files") {
        return None;
    }
    // Only the path: the temporary file's own descriptor would be a writer too.
    let img = image(4 * MIB, &[]).into_temp_path();
    let options = FileOptions::new(&img)
        .direct(true)
        .registered_files(registered);
    let backend = match FileBackend::open(&options) {
        Err(OpenError::Open { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
            eprintln!("SKIPPED registered files: the file system refuses O_DIRECT");
            return None;
        }
        r => Arc::new(r.unwrap()),
    };
    let ram = ram(16 << 20);
    let mem = DmaMemory::new(ram.clone());
    let data = pattern(5, MIB);
    poke(&ram, 0x10_0000, &data);
    let rw = |dir, offset: u64, pieces: &[(u64, u64)]| {
        let (r, done) = recorder();
        dma_rw(&ctx, &mem, backend.clone(), dir, offset, sg(pieces), done);
        run_until(&ctx, || !r.borrow().is_empty());
        r.borrow()[0]
    };
    let m = MIB as u64;
    assert_eq!(rw(DmaDirection::Write, m, &[(0x10_0000, m)]), Ok(m));
    assert_eq!(rw(DmaDirection::Read, m, &[(0x40_0000, m)]), Ok(m));
    assert_eq!(sha(&peek(&ram, 0x40_0000, MIB)), sha(&data));
    // Unaligned: the buffered descriptor.
    assert_eq!(
        rw(DmaDirection::Write, 3 * m + 7, &[(0x10_0000, 512)]),
        Ok(512)
    );
    assert_eq!(
        rw(DmaDirection::Read, 3 * m + 7, &[(0x80_0000, 512)]),
        Ok(512)
    );
    assert_eq!(peek(&ram, 0x80_0000, 512), &data[..512]);
    let on_disk = std::fs::read(&img).unwrap();
    assert_eq!(sha(&on_disk[MIB..2 * MIB]), sha(&data));
    assert_eq!(&on_disk[3 * MIB + 7..3 * MIB + 7 + 512], &data[..512]);

    assert!(!no_writer(&img), "the backend has the file open");
    drop(backend);
    let held_after_drop = !no_writer(&img);
    settle(&ctx);
    let held_after_poll = !no_writer(&img);
    Some((held_after_drop, held_after_poll))
}

#[test]
fn registered_files_round_trip_and_are_released_after_the_drop() {
    if std::env::var_os("BLOCK_DMA_REGISTERED_FILES").is_some() {
        eprintln!("SKIPPED registered files: BLOCK_DMA_REGISTERED_FILES is set");
        return;
    }
    let Some((held, still_held)) = round_trip_then_drop(true) else {
        return;
    };
    assert!(
        held,
        "the ring's table holds the file until the context runs: the requests went \
         through registered files (if the kernel refused them, a warning says so)"
    );
    assert!(
        !still_held,
        "the context released the dropped backend's files"
    );
    // The control: without the option the drop closes the file at once.
    let (held, still_held) = round_trip_then_drop(false).unwrap();
    assert!(
        !held && !still_held,
        "without registered files nothing holds the file after the drop"
    );
}
