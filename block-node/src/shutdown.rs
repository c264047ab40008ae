//! QEMU's exit for block I/O (`vm_shutdown`: `bdrv_drain_all`, then `bdrv_flush_all`),
//! for users that run their drives on [`IoThread`]s: wait until an iothread has no
//! request in flight ([`drain`]), then flush each writable backend from the thread that
//! runs it ([`flush`]), both bounded by a deadline so that a wedged device cannot hold
//! the exit forever. The VMM's disks and the storage daemon's exports exit this way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aio_context::{AioContext, IoThread};
use block_dma::{BlockBackend, BlockOp, Errno};

/// How long an exit waits for in-flight I/O and flushes before giving up on them.
pub const SHUTDOWN_IO_DEADLINE: Duration = Duration::from_secs(60);

/// Why a [`flush`] did not succeed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlushError {
    /// The thread given runs no [`AioContext`] (it is stopping).
    #[error("the iothread has no context")]
    NoContext,
    /// The backend refused the flush or the flush failed.
    #[error("{0}")]
    Failed(#[from] Errno),
    /// The flush did not complete before the deadline.
    #[error("the flush did not finish in time")]
    TimedOut,
}

/// Waits until `thread`'s context has no io_uring operation in flight, seen twice in a
/// row (a kick that was pending at the first look has been handled by the second: each
/// look is a separate iteration of its loop). False at `deadline`.
pub fn drain(thread: &IoThread, deadline: Instant) -> bool {
    let mut idle_looks = 0;
    while idle_looks < 2 {
        let in_flight =
            thread.run(|| AioContext::current().map_or(0, |ctx| ctx.io_uring_ops_in_flight()));
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
) -> Result<(), FlushError> {
    let (tx, rx) = std::sync::mpsc::channel();
    thread.run(move || {
        let Some(ctx) = AioContext::current() else {
            let _ = tx.send(Err(FlushError::NoContext));
            return;
        };
        let done_tx = tx.clone();
        let done: block_dma::Done = Box::new(move |result, _| {
            let _ = done_tx.send(result.map(drop).map_err(FlushError::Failed));
        });
        if let Err(e) = backend.submit(&ctx, BlockOp::Flush, done) {
            let _ = tx.send(Err(FlushError::Failed(e)));
        }
    });
    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .map_err(|_| FlushError::TimedOut)?
}
