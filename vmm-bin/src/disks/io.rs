//! Block I/O helpers of the VMM's disks: QEMU's exit (drain, then flush).

use std::sync::Arc;
use std::time::{Duration, Instant};

use aio_context::IoThread;
use block_dma::{BlockBackend, BlockOp};

/// How long an exit waits for in-flight I/O and flushes before giving up on them.
pub(crate) const SHUTDOWN_IO_DEADLINE: Duration = Duration::from_secs(60);

/// Waits until `thread`'s context has no io_uring operation in flight, seen twice in a
/// row (a kick that was pending at the first look has been handled by the second: each
/// look is a separate iteration of its loop). False at `deadline`.
pub fn drain(thread: &IoThread, deadline: Instant) -> bool {
    let mut idle_looks = 0;
    while idle_looks < 2 {
        let in_flight = thread.run(|| {
            aio_context::AioContext::current().map_or(0, |ctx| ctx.io_uring_ops_in_flight())
        });
        if in_flight == 0 {
            idle_looks += 1;
            continue;
        }
        idle_looks = 0;
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    true
}

/// Flushes `backend` (fdatasync through its io_uring) from `thread`'s context and waits
/// for the result, at most until `deadline`.
///
/// # Errors
///
/// The flush's error, or a flush that did not finish in time.
pub fn flush(
    thread: &IoThread,
    backend: Arc<dyn BlockBackend>,
    deadline: Instant,
) -> Result<(), String> {
    let (tx, rx) = std::sync::mpsc::channel();
    thread.run(move || {
        let Some(ctx) = aio_context::AioContext::current() else {
            let _ = tx.send(Err("the iothread has no context".to_owned()));
            return;
        };
        let done_tx = tx.clone();
        let done: block_dma::Done = Box::new(move |result, _| {
            let _ = done_tx.send(result.map(drop).map_err(|e| e.to_string()));
        });
        if let Err(e) = backend.submit(&ctx, BlockOp::Flush, done) {
            let _ = tx.send(Err(e.to_string()));
        }
    });
    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .map_err(|_| "the flush did not finish in time".to_owned())?
}

#[cfg(test)]
mod tests {
    use super::*;
    use block_dma::{FileBackend, FileOptions};
    use virtio_blk::{BlkOptions, VirtioBlk};
    use virtio_core::VirtioDevice;

    /// `VIRTIO_BLK_F_DISCARD`.
    const F_DISCARD: u64 = 1 << 13;

    /// Whether the guest is offered discard for a drive given as `-drive ARG`.
    fn offers_discard(arg: &str) -> bool {
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(1 << 20).unwrap();
        let config = crate::cli::parse([
            "-drive".to_owned(),
            format!("file={},if=virtio,{arg}", img.path().display()),
        ])
        .unwrap();
        let file = FileBackend::open(&FileOptions::new(img.path())).unwrap();
        assert!(
            file.info().discard,
            "the file backend offers discard on this host (fallocate)"
        );
        // As the disks build it: a drive in the node registry, taken by the device.
        let nodes = block_node::NodeRegistry::new();
        nodes.add_drive(&config.drives[0], "d").unwrap();
        let claim = nodes
            .attach("d", block_node::AttachOptions::default())
            .unwrap();
        let blk = VirtioBlk::new(claim.drive().clone(), BlkOptions::default()).unwrap();
        blk.features() & F_DISCARD != 0
    }

    #[test]
    fn discard_reaches_the_guest_only_with_unmap() {
        assert!(
            !offers_discard("media=disk"),
            "discard=ignore is QEMU's default"
        );
        assert!(!offers_discard("discard=ignore"));
        assert!(!offers_discard("discard=off"));
        assert!(offers_discard("discard=unmap"));
        assert!(offers_discard("discard=on"));
    }

    #[test]
    fn drain_waits_for_every_write_in_flight_then_flush_runs() {
        const WRITES: u64 = 16;
        const LEN: usize = 4 << 20;
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(WRITES * LEN as u64).unwrap();
        let backend: Arc<dyn BlockBackend> =
            Arc::new(FileBackend::open(&FileOptions::new(img.path())).unwrap());
        let thread = IoThread::spawn("drain-test").unwrap();
        let completed = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (b, c) = (backend.clone(), completed.clone());
        // 64 MiB of writes, submitted in one go from the iothread's own context.
        thread.run(move || {
            let ctx = aio_context::AioContext::current().unwrap();
            for i in 0..WRITES {
                let bufs =
                    block_dma::IoBuffers::from_owned(block_dma::AlignedBuf::zeroed(LEN, 4096));
                let c = c.clone();
                let op = BlockOp::Write {
                    offset: i * LEN as u64,
                    bufs,
                };
                b.submit(
                    &ctx,
                    op,
                    Box::new(move |result, _| {
                        assert_eq!(result, Ok(LEN as u64));
                        c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }),
                )
                .unwrap();
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        assert!(drain(&thread, deadline), "drained before the deadline");
        assert_eq!(
            completed.load(std::sync::atomic::Ordering::SeqCst),
            WRITES,
            "every write completed before drain returned"
        );
        flush(&thread, backend, deadline).unwrap();
    }
}
