//! The narrow backend trait every image format or transport implements.

use aio_context::{AioContext, OpId};

use crate::{Errno, IoBuffers};

/// One block operation. Offsets and lengths are in bytes.
#[derive(Debug)]
pub enum BlockOp {
    /// Read `bufs.len()` bytes at `offset` into `bufs`.
    Read {
        /// Byte offset in the image.
        offset: u64,
        /// Where the data goes.
        bufs: IoBuffers,
    },
    /// Write `bufs` at `offset`.
    Write {
        /// Byte offset in the image.
        offset: u64,
        /// The data.
        bufs: IoBuffers,
    },
    /// Make completed writes durable (`fdatasync`).
    Flush,
    /// Deallocate `len` bytes at `offset` (the data becomes unspecified; zeros for a
    /// raw file).
    Discard {
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// Make `len` bytes at `offset` read as zeros.
    WriteZeroes {
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: u64,
        /// Whether the range may be deallocated (virtio-blk's UNMAP flag).
        unmap: bool,
    },
}

impl BlockOp {
    /// What kind of operation this is.
    pub fn kind(&self) -> OpKind {
        match self {
            BlockOp::Read { .. } => OpKind::Read,
            BlockOp::Write { .. } => OpKind::Write,
            BlockOp::Flush => OpKind::Flush,
            BlockOp::Discard { .. } => OpKind::Discard,
            BlockOp::WriteZeroes { .. } => OpKind::WriteZeroes,
        }
    }

    /// The byte range the operation touches, if any (`(offset, len)`).
    pub fn range(&self) -> Option<(u64, u64)> {
        match self {
            BlockOp::Read { offset, bufs } | BlockOp::Write { offset, bufs } => {
                Some((*offset, bufs.len() as u64))
            }
            BlockOp::Discard { offset, len } | BlockOp::WriteZeroes { offset, len, .. } => {
                Some((*offset, *len))
            }
            BlockOp::Flush => None,
        }
    }

    /// Takes the buffers out of a read or write.
    pub fn into_bufs(self) -> Option<IoBuffers> {
        match self {
            BlockOp::Read { bufs, .. } | BlockOp::Write { bufs, .. } => Some(bufs),
            _ => None,
        }
    }
}

/// The kind of a [`BlockOp`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// [`BlockOp::Read`].
    Read,
    /// [`BlockOp::Write`].
    Write,
    /// [`BlockOp::Flush`].
    Flush,
    /// [`BlockOp::Discard`].
    Discard,
    /// [`BlockOp::WriteZeroes`].
    WriteZeroes,
}

impl OpKind {
    /// Whether the operation modifies the image (refused on a read-only one). A flush
    /// does not: on a read-only image it succeeds, as in QEMU (`bdrv_co_flush`).
    pub fn writes(self) -> bool {
        matches!(self, OpKind::Write | OpKind::Discard | OpKind::WriteZeroes)
    }
}

/// What the backend hands back: the result (bytes transferred for a read or write, 0
/// otherwise) and, for a read or write, the buffers (which the kernel no longer
/// accesses).
pub type Done = Box<dyn FnOnce(Result<u64, Errno>, Option<IoBuffers>)>;

/// Static facts about an opened image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendInfo {
    /// Size in bytes when the image was opened. A backend that can be resized reports
    /// its current size through [`BlockBackend::size`]; readers of the size after a
    /// `block_resize` use that.
    pub size: u64,
    /// Whether writes are refused.
    pub read_only: bool,
    /// Request alignment in bytes (offsets and lengths that are multiples of it take
    /// the fast path); 1 for buffered I/O.
    pub request_alignment: u32,
    /// Memory alignment in bytes of the fast path's buffers; 1 for buffered I/O.
    pub memory_alignment: u32,
    /// Whether [`BlockOp::Discard`] does something.
    pub discard: bool,
    /// Whether [`BlockOp::WriteZeroes`] is offered.
    pub write_zeroes: bool,
    /// Whether the host page cache is bypassed (O_DIRECT, `cache.direct=on`).
    pub direct: bool,
}

/// A submitted operation, for [`BlockBackend::cancel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ticket {
    /// An io_uring operation of the submitting context.
    Uring(OpId),
}

/// A block backend: an image that runs [`BlockOp`]s on io_uring.
///
/// `submit` is called on an `AioContext`'s thread and `done` runs later on the same
/// thread, from that context's event loop; never inside `submit`. The backend keeps the
/// buffers until the kernel has let go of them, even when cancelled.
pub trait BlockBackend: Send + Sync {
    /// The image's facts.
    fn info(&self) -> &BackendInfo;

    /// Starts `op`; `done` runs exactly once, in `ctx`.
    ///
    /// # Errors
    ///
    /// If the operation cannot even be queued (no io_uring, the ring failed), `op` and
    /// `done` are dropped and the error returned; the caller completes the request.
    fn submit(&self, ctx: &AioContext, op: BlockOp, done: Done) -> Result<Ticket, Errno>;

    /// Asks for a cancel of an operation `submit` returned: its `done` then runs with
    /// `ECANCELED` (or its real result, if it finished first). A ticket of a completed
    /// operation is ignored.
    fn cancel(&self, ctx: &AioContext, ticket: Ticket);

    /// The image's size in bytes now: [`BackendInfo::size`] for a backend that cannot
    /// be resized. Operations are checked against this value when they are submitted,
    /// so a device that reads it sees the same size its requests are judged by.
    fn size(&self) -> u64 {
        self.info().size
    }

    /// Changes the image's size to `size` bytes (QEMU's `bdrv_co_truncate`, called by
    /// `block_resize`). A shrink refuses operations beyond the new end before the
    /// image is cut; a growth takes effect once the image is long enough.
    ///
    /// # Errors
    ///
    /// `EROFS` for a read-only image, `EOPNOTSUPP` for a backend without resize (the
    /// default), or the operating system's error.
    fn resize(&self, size: u64) -> Result<(), Errno> {
        let _ = size;
        Err(Errno::EOPNOTSUPP)
    }
}

/// Checks `op` against `info`: a write to a read-only image, a range outside the image,
/// or an operation the image does not offer. Backends call it before queueing.
///
/// # Errors
///
/// `EROFS`, `EINVAL` (range), `EOPNOTSUPP`.
pub fn check_op(info: &BackendInfo, op: &BlockOp) -> Result<(), Errno> {
    check_op_sized(info, info.size, op)
}

/// [`check_op`] against `size` (a resizable backend's [`BlockBackend::size`]) instead
/// of the size the image was opened with.
///
/// # Errors
///
/// As [`check_op`].
pub fn check_op_sized(info: &BackendInfo, size: u64, op: &BlockOp) -> Result<(), Errno> {
    if op.kind().writes() && info.read_only {
        return Err(Errno::EROFS);
    }
    match op.kind() {
        OpKind::Discard if !info.discard => return Err(Errno::EOPNOTSUPP),
        OpKind::WriteZeroes if !info.write_zeroes => return Err(Errno::EOPNOTSUPP),
        _ => {}
    }
    if let Some((offset, len)) = op.range() {
        if offset.checked_add(len).is_none_or(|end| end > size) {
            return Err(Errno::EINVAL);
        }
    }
    Ok(())
}

/// A shared backend is a backend (wrappers such as [`FaultInjector`](crate::FaultInjector)
/// can take an `Arc` the test or the VMM keeps a reference to).
impl<B: BlockBackend + ?Sized> BlockBackend for std::sync::Arc<B> {
    fn info(&self) -> &BackendInfo {
        (**self).info()
    }
    fn submit(&self, ctx: &AioContext, op: BlockOp, done: Done) -> Result<Ticket, Errno> {
        (**self).submit(ctx, op, done)
    }
    fn cancel(&self, ctx: &AioContext, ticket: Ticket) {
        (**self).cancel(ctx, ticket)
    }
    fn size(&self) -> u64 {
        (**self).size()
    }
    fn resize(&self, size: u64) -> Result<(), Errno> {
        (**self).resize(size)
    }
}
