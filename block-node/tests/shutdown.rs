//! `block_node::shutdown`: a drain returns only once every request in flight on the
//! iothread has completed, and the flush after it succeeds.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aio_context::{AioContext, IoThread};
use block_dma::{AlignedBuf, BlockBackend, BlockOp, FileBackend, FileOptions, IoBuffers};
use block_node::shutdown::{drain, flush};

#[test]
fn drain_waits_for_every_write_in_flight_then_flush_runs() {
    const WRITES: u64 = 16;
    const LEN: usize = 4 << 20;
    let img = tempfile::NamedTempFile::new().unwrap();
    img.as_file().set_len(WRITES * LEN as u64).unwrap();
    let backend: Arc<dyn BlockBackend> =
        Arc::new(FileBackend::open(&FileOptions::new(img.path())).unwrap());
    let thread = IoThread::spawn("drain-test").unwrap();
    let completed = Arc::new(AtomicU64::new(0));
    let (b, c) = (backend.clone(), completed.clone());
    // 64 MiB of writes, submitted in one go from the iothread's own context.
    thread.run(move || {
        let ctx = AioContext::current().unwrap();
        for i in 0..WRITES {
            let bufs = IoBuffers::from_owned(AlignedBuf::zeroed(LEN, 4096));
            let c = c.clone();
            let op = BlockOp::Write {
                offset: i * LEN as u64,
                bufs,
            };
            let done = Box::new(move |result, _| {
                assert_eq!(result, Ok(LEN as u64));
                c.fetch_add(1, Ordering::SeqCst);
            });
            b.submit(&ctx, op, done).unwrap();
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    assert!(drain(&thread, deadline), "drained before the deadline");
    assert_eq!(
        completed.load(Ordering::SeqCst),
        WRITES,
        "every write completed before drain returned"
    );
    flush(&thread, backend, deadline).unwrap();
}
