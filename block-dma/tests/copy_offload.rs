//! Large reads of a file whose data is a memory copy (here a buffered file in the page
//! cache) go to the kernel's io-wq workers (`IOSQE_ASYNC`, block-dma DESIGN.md "Large
//! copies"); small ones run inline. Observable as the worker thread the kernel names
//! `iou-wrk-<submitting tid>`: a cached read of a disk file system (ext4, xfs, btrfs)
//! completes inline and starts none. (Not tmpfs: its reads refuse io_uring's inline,
//! non-blocking attempt and always go to a worker.)

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use aio_context::{AioContext, thread_has_io_worker};
use block_dma::{AlignedBuf, BlockBackend, BlockOp, FileBackend, FileOptions, IoBuffers};

const FILE_SIZE: usize = 4 << 20;

/// Reads `len` bytes, 8 times, in a fresh thread with a fresh context; whether an io-wq
/// worker of that thread showed up (`None`: skipped).
fn reads_start_a_worker(path: std::path::PathBuf, len: usize) -> Option<bool> {
    std::thread::spawn(move || {
        let ctx = AioContext::new().unwrap();
        if !ctx.supports_io_uring_ops() {
            eprintln!("SKIPPED copy_offload: no io_uring operations");
            return None;
        }
        let backend = FileBackend::open(&FileOptions::new(&path)).unwrap();
        assert!(!thread_has_io_worker());
        for i in 0..8 {
            let done = Rc::new(Cell::new(None));
            let d = done.clone();
            let op = BlockOp::Read {
                offset: (i * len % FILE_SIZE) as u64,
                bufs: IoBuffers::from_owned(AlignedBuf::zeroed(len, 4096)),
            };
            let cb = Box::new(move |res, _| d.set(Some(res)));
            backend.submit(&ctx, op, cb).unwrap();
            let start = Instant::now();
            while done.get().is_none() {
                assert!(start.elapsed() < Duration::from_secs(10), "read hangs");
                ctx.poll(true);
            }
            assert_eq!(done.get(), Some(Ok(len as u64)));
        }
        Some(thread_has_io_worker())
    })
    .join()
    .unwrap()
}

#[test]
fn large_memory_copies_go_to_io_workers() {
    if std::env::var_os("BLOCK_DMA_ASYNC_MIN_BYTES").is_some() {
        eprintln!("SKIPPED large_memory_copies_go_to_io_workers: BLOCK_DMA_ASYNC_MIN_BYTES set");
        return;
    }
    // The page cache of the file system the build runs on (tmpfs: see the top).
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let file = tempfile::NamedTempFile::new_in(dir).unwrap();
    std::io::Write::write_all(&mut file.as_file(), &vec![7u8; FILE_SIZE]).unwrap();
    let kind = nix::sys::statfs::fstatfs(file.as_file())
        .unwrap()
        .filesystem_type();
    if kind == nix::sys::statfs::TMPFS_MAGIC {
        eprintln!("SKIPPED large_memory_copies_go_to_io_workers: the target dir is on tmpfs");
        return;
    }
    let path = file.path().to_path_buf();
    if let Some(worker) = reads_start_a_worker(path.clone(), 4096) {
        assert!(!worker, "a 4 KiB page-cache read went to an io-wq worker");
    }
    if let Some(worker) = reads_start_a_worker(path, 1 << 20) {
        assert!(
            worker,
            "a 1 MiB page-cache read was not forced to an io-wq worker"
        );
    }
}
