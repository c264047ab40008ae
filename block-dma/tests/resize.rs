//! `block_resize` at the backend: the size every request is checked against changes
//! with the file, a shrink refuses requests beyond the new end, a growth serves them,
//! a read-only image refuses to change, and a shrink drains the requests in flight
//! before it cuts the file.

mod common;

use std::cell::RefCell;
use std::rc::Rc;

use aio_context::AioContext;
use block_dma::{AlignedBuf, BlockBackend, BlockOp, Errno, FileBackend, FileOptions, IoBuffers};
use common::*;

const KIB: u64 = 1 << 10;

/// Reads 4 KiB at `offset`: the submission's refusal or the completion's result.
fn read_4k(ctx: &AioContext, backend: &FileBackend, offset: u64) -> Result<u64, Errno> {
    let got: Rc<RefCell<Option<Result<u64, Errno>>>> = Rc::default();
    let g = got.clone();
    let bufs = IoBuffers::from_owned(AlignedBuf::zeroed(4096, 4096));
    let done = Box::new(move |res, _| *g.borrow_mut() = Some(res));
    backend.submit(ctx, BlockOp::Read { offset, bufs }, done)?;
    run_until(ctx, || got.borrow().is_some());
    got.take().unwrap()
}

/// A context and a backend over a fresh 64 KiB image; `None` (SKIPPED) without io_uring.
fn backend_64k(test: &str) -> Option<(AioContext, tempfile::NamedTempFile, FileBackend)> {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, test) {
        return None;
    }
    let img = image(64 * KIB as usize, &[]);
    let backend = FileBackend::open(&FileOptions::new(img.path())).unwrap();
    Some((ctx, img, backend))
}

#[test]
fn a_resize_moves_the_end_requests_are_checked_against() {
    let Some((ctx, img, backend)) = backend_64k("resize") else {
        return;
    };
    assert_eq!(backend.size(), 64 * KIB);
    assert_eq!(read_4k(&ctx, &backend, 64 * KIB), Err(Errno::EINVAL));

    backend.resize(128 * KIB).unwrap();
    assert_eq!(backend.size(), 128 * KIB);
    assert_eq!(std::fs::metadata(img.path()).unwrap().len(), 128 * KIB);
    assert_eq!(read_4k(&ctx, &backend, 64 * KIB), Ok(4096));
    assert_eq!(read_4k(&ctx, &backend, 124 * KIB), Ok(4096));

    backend.resize(32 * KIB).unwrap();
    assert_eq!(backend.size(), 32 * KIB);
    assert_eq!(std::fs::metadata(img.path()).unwrap().len(), 32 * KIB);
    assert_eq!(read_4k(&ctx, &backend, 32 * KIB), Err(Errno::EINVAL));
    assert_eq!(read_4k(&ctx, &backend, 28 * KIB), Ok(4096));
    // The size the image was opened with stays in the static facts.
    assert_eq!(backend.info().size, 64 * KIB);
    // An unaligned size is the file's size, as QEMU's file driver does it.
    backend.resize(33 * KIB + 1).unwrap();
    assert_eq!(std::fs::metadata(img.path()).unwrap().len(), 33 * KIB + 1);
}

#[test]
fn a_read_only_image_keeps_its_size() {
    let img = image(64 * KIB as usize, &[]);
    let backend = FileBackend::open(&FileOptions::new(img.path()).read_only(true)).unwrap();
    assert_eq!(backend.resize(128 * KIB), Err(Errno::EROFS));
    assert_eq!(backend.size(), 64 * KIB);
    assert_eq!(std::fs::metadata(img.path()).unwrap().len(), 64 * KIB);
}

#[test]
fn a_backend_without_resize_says_so() {
    let slow = SlowBackend::new(64 * KIB, std::time::Duration::from_millis(1));
    assert_eq!(slow.resize(128 * KIB), Err(Errno::EOPNOTSUPP));
    assert_eq!(slow.size(), 64 * KIB);
}

/// A read's result and the file's length when it completed.
type Noted = Rc<RefCell<Option<(Result<u64, Errno>, u64)>>>;

/// Submits a 4 KiB read at `offset` whose completion records its result and the
/// file's length at that moment.
fn read_noting_len(
    ctx: &AioContext,
    backend: &FileBackend,
    path: &std::path::Path,
    offset: u64,
) -> Noted {
    let got: Noted = Rc::default();
    let g = got.clone();
    let path = path.to_owned();
    let bufs = IoBuffers::from_owned(AlignedBuf::zeroed(4096, 4096));
    let done = Box::new(move |res, _| {
        let len = std::fs::metadata(&path).unwrap().len();
        *g.borrow_mut() = Some((res, len));
    });
    backend
        .submit(ctx, BlockOp::Read { offset, bufs }, done)
        .unwrap();
    got
}

/// QEMU drains a node before it truncates it: a request in flight past the new end
/// (checked against the old size) completes, with its data, before the file is cut.
/// Without the drain the cut came first and the read completed after it.
#[test]
fn a_shrink_waits_for_requests_in_flight_in_another_thread() {
    let Some((ctx, img, backend)) = backend_64k("resize drain") else {
        return;
    };
    // In flight in this thread's context, which nobody polls yet.
    let got = read_noting_len(&ctx, &backend, img.path(), 60 * KIB);
    let b = backend.clone();
    let shrink = std::thread::spawn(move || b.resize(32 * KIB));
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(
        !shrink.is_finished(),
        "the shrink did not wait for the read in flight past its new end"
    );
    assert_eq!(std::fs::metadata(img.path()).unwrap().len(), 64 * KIB);
    // Requests checked from now on see the new size already.
    assert_eq!(
        read_4k_refused(&ctx, &backend, 60 * KIB),
        Some(Errno::EINVAL)
    );
    run_until(&ctx, || got.borrow().is_some());
    shrink.join().unwrap().unwrap();
    assert_eq!(
        got.take(),
        Some((Ok(4096), 64 * KIB)),
        "the read completed before the cut"
    );
    assert_eq!(std::fs::metadata(img.path()).unwrap().len(), 32 * KIB);
}

/// The same in the requests' own thread (a VMM's device without an iothread): the
/// shrink polls the thread's context while it drains, so it neither deadlocks nor
/// cuts first.
#[test]
fn a_shrink_in_the_requests_thread_completes_them_first() {
    let Some((ctx, img, backend)) = backend_64k("resize drain, same thread") else {
        return;
    };
    let reads: Vec<_> = (0..8)
        .map(|i| read_noting_len(&ctx, &backend, img.path(), (32 + 4 * i) * KIB))
        .collect();
    backend.resize(16 * KIB).unwrap();
    for r in reads {
        assert_eq!(r.take(), Some((Ok(4096), 64 * KIB)), "none is lost or cut");
    }
    assert_eq!(std::fs::metadata(img.path()).unwrap().len(), 16 * KIB);
}

/// A submission refused at once, if it is.
fn read_4k_refused(ctx: &AioContext, backend: &FileBackend, offset: u64) -> Option<Errno> {
    let bufs = IoBuffers::from_owned(AlignedBuf::zeroed(4096, 4096));
    backend
        .submit(ctx, BlockOp::Read { offset, bufs }, Box::new(|_, _| {}))
        .err()
}
