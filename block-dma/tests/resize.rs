//! `block_resize` at the backend: the size every request is checked against changes
//! with the file, a shrink refuses requests beyond the new end, a growth serves them,
//! and a read-only image refuses to change.

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

#[test]
fn a_resize_moves_the_end_requests_are_checked_against() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "resize") {
        return;
    }
    let img = image(64 * KIB as usize, &[]);
    let backend = FileBackend::open(&FileOptions::new(img.path())).unwrap();
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
