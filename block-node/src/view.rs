//! A restricted view of a shared backend: a node opened read-write can be handed to a
//! user read-only (an export with `writable=off`) or without discard
//! (`discard=ignore`), without opening the image again.

use std::sync::Arc;

use aio_context::AioContext;
use block_dma::{BackendInfo, BlockBackend, BlockOp, Done, Errno, Ticket};

/// `inner` with writes and/or discard taken away: its [`BackendInfo`] says so (a
/// virtio-blk device then offers neither), and an operation that arrives anyway is
/// refused before it reaches the image (`EROFS`, `EOPNOTSUPP`).
pub struct View {
    inner: Arc<dyn BlockBackend>,
    info: BackendInfo,
}

impl View {
    /// The view of `inner`: read-only if `read_only` (or if `inner` is), with
    /// discard only if `discard` (and `inner` offers it).
    pub fn new(inner: Arc<dyn BlockBackend>, read_only: bool, discard: bool) -> View {
        let base = inner.info();
        let info = BackendInfo {
            read_only: base.read_only || read_only,
            discard: base.discard && discard && !read_only,
            write_zeroes: base.write_zeroes && !read_only,
            ..base.clone()
        };
        View { inner, info }
    }

    /// `inner` itself when the view would change nothing, else a [`View`].
    pub fn wrap(
        inner: Arc<dyn BlockBackend>,
        read_only: bool,
        discard: bool,
    ) -> Arc<dyn BlockBackend> {
        let view = View::new(inner.clone(), read_only, discard);
        if view.info == *inner.info() {
            inner
        } else {
            Arc::new(view)
        }
    }
}

impl BlockBackend for View {
    fn info(&self) -> &BackendInfo {
        &self.info
    }

    fn submit(&self, ctx: &AioContext, op: BlockOp, done: Done) -> Result<Ticket, Errno> {
        block_dma::check_op_sized(&self.info, self.inner.size(), &op)?;
        self.inner.submit(ctx, op, done)
    }

    fn cancel(&self, ctx: &AioContext, ticket: Ticket) {
        self.inner.cancel(ctx, ticket)
    }

    fn size(&self) -> u64 {
        self.inner.size()
    }

    /// Refused through a read-only view; the image's own resize otherwise.
    fn resize(&self, size: u64) -> Result<(), Errno> {
        if self.info.read_only {
            return Err(Errno::EROFS);
        }
        self.inner.resize(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use block_dma::{FileBackend, FileOptions};

    fn image() -> (tempfile::NamedTempFile, Arc<dyn BlockBackend>) {
        let img = tempfile::NamedTempFile::new().unwrap();
        img.as_file().set_len(1 << 20).unwrap();
        let file = FileBackend::open(&FileOptions::new(img.path())).unwrap();
        (img, Arc::new(file))
    }

    #[test]
    fn a_discard_that_arrives_anyway_is_refused_before_the_image() {
        let (_img, file) = image();
        assert!(file.info().discard, "fallocate punches holes on this host");
        let view = View::new(file, false, false);
        assert!(!view.info().discard && !view.info().read_only);
        let ctx = AioContext::new().unwrap();
        let op = BlockOp::Discard {
            offset: 0,
            len: 4096,
        };
        let result = view.submit(&ctx, op, Box::new(|_, _| panic!("nothing was submitted")));
        assert_eq!(result.unwrap_err(), Errno::EOPNOTSUPP);
    }

    #[test]
    fn a_read_only_view_refuses_writes() {
        let (_img, file) = image();
        let view = View::new(file.clone(), true, true);
        assert!(view.info().read_only && !view.info().discard);
        let ctx = AioContext::new().unwrap();
        let bufs = block_dma::IoBuffers::from_owned(block_dma::AlignedBuf::zeroed(512, 512));
        let op = BlockOp::Write { offset: 0, bufs };
        let result = view.submit(&ctx, op, Box::new(|_, _| panic!("nothing was submitted")));
        assert_eq!(result.unwrap_err(), Errno::EROFS);
        assert!(Arc::ptr_eq(&View::wrap(file.clone(), false, true), &file));
    }
}
