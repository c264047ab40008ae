//! [`RamMemory`]: a view of the map that owns its read guard, for vm-memory's
//! `GuestAddressSpace::memory()`.

use std::ops::Deref;
use std::ptr::NonNull;

use crate::{RamBlocks, RamList};

/// One version of the guest-physical map together with the read section that keeps it
/// alive: what [`RamList::memory`] (and so `GuestAddressSpace::memory`) returns.
///
/// It derefs to [`RamBlocks`], which implements vm-memory's `GuestMemoryBackend` and
/// thus `GuestMemory` and `Bytes<GuestAddress>`; every block and `VolatileSlice` it hands
/// out borrows the view, so none outlives the guard inside it.
///
/// **It is `!Send` and `!Sync`**, because an `rcu::Guard` must be dropped on the thread
/// that took it. For rust-vmm users this means:
///
/// - virtio-queue's `Queue::pop_descriptor_chain(mem)` / `iter(mem)` take the view by
///   value and a `DescriptorChain<RamMemory>` carries it: the chain stays on the thread
///   that popped it, and the read section lasts as long as the chain. Call `memory()`
///   per batch of requests (as virtio-queue's own examples do), finish the chain, and
///   pass request data (addresses, lengths) rather than chains to other threads, which
///   take their own `memory()`.
/// - While a view lives, a removed block is not unmapped, and every grace period of the
///   process waits for it: do not block (sleep, wait on I/O) while holding one.
/// - `rcu::synchronize()` and `rcu::barrier()` panic on a thread that holds a view.
/// - `clone()` takes a nested guard on the same thread and shares the version: cheap,
///   no reference count.
///
/// Threads that are QSBR readers, or code that already holds a guard, can skip the view
/// and pass `&RamBlocks` from [`RamList::blocks`]: `&M` is a `GuestAddressSpace` too.
///
/// ```
/// use ram_block::{Backing, RamBlock, RamList};
/// use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};
///
/// let list = RamList::new();
/// list.add(RamBlock::new("ram", GuestAddress(0), 0x10000, Backing::Anonymous { huge_pages: false })?)?;
/// let mem = list.memory(); // a read section begins
/// mem.write_obj(0x1234_5678u32, GuestAddress(0x100))?;
/// assert_eq!(mem.read_obj::<u32>(GuestAddress(0x100))?, 0x1234_5678);
/// drop(mem); // and ends
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct RamMemory {
    /// A version loaded under `_guard`'s read section.
    blocks: NonNull<RamBlocks>,
    /// Keeps this thread in a read section while the view lives; also makes the view
    /// `!Send` and `!Sync`.
    _guard: rcu::Guard,
}

impl RamMemory {
    #[inline]
    pub(crate) fn new(list: &RamList) -> RamMemory {
        let guard = rcu::read();
        let blocks = NonNull::from(list.blocks(&guard));
        RamMemory {
            blocks,
            _guard: guard,
        }
    }
}

impl Deref for RamMemory {
    type Target = RamBlocks;

    #[inline]
    fn deref(&self) -> &RamBlocks {
        // SAFETY: `blocks` was loaded from the list's RcuCell under `_guard` (or under a
        // guard of this thread that was live when `_guard` was taken, for a clone).
        // Guards of one thread nest into one read section, which lasts at least as long
        // as `self`. A version is freed only on the call_rcu thread after a grace period
        // that began once it was unpublished (`replace`, and `clear` when the list
        // drops: see `Shared::drop`); no code path frees a published version directly.
        // That grace period cannot end while this thread's read section is open, so the
        // version is alive for the borrow of `self`.
        unsafe { self.blocks.as_ref() }
    }
}

impl Clone for RamMemory {
    #[inline]
    fn clone(&self) -> RamMemory {
        // The new guard nests in the read section that `self` keeps open on this thread
        // (`self` is !Sync, so `clone` runs on the thread that owns it): the section,
        // and with it the version, now lasts until both views are dropped.
        RamMemory {
            blocks: self.blocks,
            _guard: rcu::read(),
        }
    }
}

impl std::fmt::Debug for RamMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RamMemory").field(&**self).finish()
    }
}
