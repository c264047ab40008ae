//! A reset while PIO I/O is in flight: the cancelled request's late data must not
//! reach the next command. Regression test for the shared PIO buffer: a read that
//! the kernel completes after a software reset wrote into the buffer the next PIO
//! WRITE had already filled, and the disk got the stale read's bytes.

mod common;

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aio_context::AioContext;
use block_dma::{
    BackendInfo, BlockBackend, BlockOp, DmaMemory, Done, Errno, FileBackend, FileOptions, Ticket,
};
use common::*;
use ide::IdeDevice;

thread_local! {
    /// The read the gate holds back, as the kernel would hold an iovec.
    static HELD: RefCell<Option<(BlockOp, Done)>> = const { RefCell::new(None) };
}

/// Holds back reads while `hold` is set (their buffers stay referenced); everything
/// else goes to the file.
struct Gate {
    inner: FileBackend,
    hold: AtomicBool,
}

impl BlockBackend for Gate {
    fn info(&self) -> &BackendInfo {
        self.inner.info()
    }
    fn submit(&self, ctx: &AioContext, op: BlockOp, done: Done) -> Result<Ticket, Errno> {
        if self.hold.load(Ordering::Relaxed) && matches!(op, BlockOp::Read { .. }) {
            // A ticket for the cancel path: a flush nobody waits for.
            let ticket = self
                .inner
                .submit(ctx, BlockOp::Flush, Box::new(|_, _| {}))?;
            HELD.with(|h| *h.borrow_mut() = Some((op, done)));
            return Ok(ticket);
        }
        self.inner.submit(ctx, op, done)
    }
    fn cancel(&self, ctx: &AioContext, ticket: Ticket) {
        self.inner.cancel(ctx, ticket)
    }
}

/// The held read completes late: its buffers get `fill`, then its callback runs.
fn release(fill: u8) {
    let Some((op, done)) = HELD.with(|h| h.borrow_mut().take()) else {
        panic!("no read held");
    };
    let mut bufs = op.into_bufs().unwrap();
    let len = bufs.len();
    bufs.copy_from(&vec![fill; len]);
    done(Ok(len as u64), Some(bufs));
}

#[test]
fn a_read_completing_after_srst_does_not_corrupt_the_next_pio_write() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "late_read_after_srst") {
        return;
    }
    let img = image(&pattern(1, 64 * 1024));
    let gate = Arc::new(Gate {
        inner: FileBackend::open(&FileOptions::new(img.path())).unwrap(),
        hold: AtomicBool::new(true),
    });
    let drive = drive_on(gate.clone(), "disk0");
    let r = Rig::new(
        ctx,
        DmaMemory::new(ram()),
        [[Some(IdeDevice::disk("disk0", drive)), None], [None, None]],
    );
    // A PIO read the backend holds.
    r.task28(0, 0, 1, 1);
    r.outb(0, 7, 0x20);
    r.spin(3);
    assert!(HELD.with(|h| h.borrow().is_some()));
    // Software reset, then a PIO write of fresh data.
    r.ctrl(0, 0x04);
    r.ctrl(0, 0x00);
    gate.hold.store(false, Ordering::Relaxed);
    let new = pattern(2, 512);
    r.task28(0, 0, 5, 1);
    r.outb(0, 7, 0x30);
    r.write_data(0, &new);
    // The stale read lands now, before the write is submitted.
    release(0xee);
    assert_eq!(r.settle(0), 0x50);
    let file = std::fs::read(img.path()).unwrap();
    assert_eq!(
        &file[5 * 512..6 * 512],
        &new[..],
        "the write carries the guest's data"
    );
}
