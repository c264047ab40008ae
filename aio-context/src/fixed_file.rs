//! [`FixedFile`]: an open file that io_uring rings may register in their file tables.

use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::sync::{Arc, Mutex, PoisonError};

use crate::{AioContext, AioHandle};

/// What rings' tables know a [`FixedFile`] by (weakly): the file and the contexts
/// that registered it.
pub(crate) struct Shared {
    pub(crate) file: File,
    /// The contexts whose ring registered the file, told when it is dropped.
    rings: Mutex<Vec<AioHandle>>,
}

/// An open file that the io_uring ring of each [`AioContext`] doing I/O on it may
/// register (`IORING_REGISTER_FILES`), so its ops skip the per-op descriptor lookup:
/// [`AioContext::fixed_file`] returns the slot, and an SQE that sets
/// `IOSQE_FIXED_FILE` names the slot instead of the descriptor.
///
/// A ring's table references the open file in the kernel, not the descriptor: the
/// file stays open there after this value is dropped, until each ring that registered
/// it has emptied its slot. Dropping a `FixedFile` schedules that on those contexts;
/// it happens at their next iteration (a context that has ended closed its ring, and
/// with it the table).
///
/// Dereferences to the [`File`] for everything else.
pub struct FixedFile {
    /// Dropped first in `drop`, before the rings are told (see there).
    shared: ManuallyDrop<Arc<Shared>>,
}

impl FixedFile {
    /// Wraps `file`; nothing is registered until an op on a ring asks for its slot.
    pub fn new(file: File) -> FixedFile {
        FixedFile {
            shared: ManuallyDrop::new(Arc::new(Shared {
                file,
                rings: Mutex::new(Vec::new()),
            })),
        }
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Remembers that `ctx`'s ring registered this file.
    pub(crate) fn registered_on(&self, ctx: &AioContext) {
        self.shared
            .rings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(ctx.handle());
    }
}

impl std::ops::Deref for FixedFile {
    type Target = File;

    fn deref(&self) -> &File {
        &self.shared.file
    }
}

impl AsFd for FixedFile {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.shared.file.as_fd()
    }
}

impl AsRawFd for FixedFile {
    fn as_raw_fd(&self) -> RawFd {
        self.shared.file.as_raw_fd()
    }
}

impl std::fmt::Debug for FixedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FixedFile")
            .field("fd", &self.shared.file.as_raw_fd())
            .finish_non_exhaustive()
    }
}

impl Drop for FixedFile {
    /// Drops the file (the only strong reference), then has every context that
    /// registered it empty its slot: a sweep scheduled before the drop could run first,
    /// on another thread, and find the file still alive.
    fn drop(&mut self) {
        let rings = std::mem::take(
            &mut *self
                .shared
                .rings
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        // SAFETY: `shared` is not used again: this is the value's drop.
        drop(unsafe { ManuallyDrop::take(&mut self.shared) });
        for ring in rings {
            ring.schedule_oneshot(|| {
                if let Some(ctx) = AioContext::current() {
                    ctx.release_dead_fixed_files();
                }
            });
        }
    }
}
