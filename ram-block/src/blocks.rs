//! One published version of the guest-physical map: the blocks sorted by address, and
//! the most-recently-used cache that belongs to that version.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use vm_memory::bitmap::MS;
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryError, GuestMemoryRegion, GuestMemoryResult,
    MemoryRegionAddress, VolatileSlice,
};

use crate::{Error, RamBlock, Result};

/// The guest-physical map as one reader sees it: an immutable, sorted set of
/// non-overlapping blocks with holes between them, plus a most-recently-used hint.
///
/// Readers get a `&RamBlocks` under a read guard ([`RamList::blocks`]) or inside a
/// [`RamMemory`] ([`RamList::memory`]); every block and slice it hands out borrows it,
/// so nothing outlives the read section. Writers never change a published version: they
/// publish a new one, so a reader sees one consistent map for as long as it holds it
/// (vm-memory's `GuestMemoryBackend` contract).
///
/// **The MRU cache** (QEMU's `ram_list.mru_block`) lives in the version, as an index into
/// its own block array. A stale entry can therefore never name freed memory: it names a
/// block of the same version, and a version's blocks are reclaimed only with the version,
/// after a grace period. Removing a block publishes a new version whose cache is empty
/// before the old version's grace period starts, and every hit is re-validated against
/// the address, so a stale hint costs a miss, never a wrong answer.
///
/// [`RamList::blocks`]: crate::RamList::blocks
/// [`RamList::memory`]: crate::RamList::memory
/// [`RamMemory`]: crate::RamMemory
pub struct RamBlocks {
    /// Sorted by `start`, non-overlapping.
    entries: Vec<Entry>,
    /// Index in `entries` of the last block a miss found; `usize::MAX` when none.
    mru: AtomicUsize,
}

/// A block, with its guest range copied beside the pointer: lookups (the cache check
/// and the binary search) compare addresses without dereferencing any block.
struct Entry {
    start: u64,
    size: u64,
    block: Arc<RamBlock>,
}

impl Entry {
    /// `addr`'s offset in the block, if the block contains it (see [`RamBlock::contains`]).
    #[inline]
    fn offset_of(&self, addr: GuestAddress) -> Option<u64> {
        let offset = addr.0.wrapping_sub(self.start);
        (offset < self.size).then_some(offset)
    }
}

impl RamBlocks {
    /// A version holding `blocks` (sorted by start address, non-overlapping), with an
    /// empty cache.
    pub(crate) fn new(blocks: &[Arc<RamBlock>]) -> RamBlocks {
        debug_assert!(blocks.windows(2).all(|w| w[0].last_addr() < w[1].start()));
        let entries = blocks
            .iter()
            .map(|b| Entry {
                start: b.start().0,
                size: b.size(),
                block: Arc::clone(b),
            })
            .collect();
        RamBlocks {
            entries,
            mru: AtomicUsize::new(usize::MAX),
        }
    }

    /// The number of blocks.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the map has no block.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The blocks, in guest address order.
    pub fn iter(&self) -> impl Iterator<Item = &RamBlock> {
        self.entries.iter().map(|e| &*e.block)
    }

    /// The block named `name`.
    pub fn find_by_name(&self, name: &str) -> Option<&RamBlock> {
        self.iter().find(|b| b.name() == name)
    }

    /// The block that contains `addr` (QEMU's `qemu_get_ram_block`): the cached block if
    /// it contains `addr`, else a binary search, whose result becomes the cached block.
    #[inline]
    pub fn find(&self, addr: GuestAddress) -> Option<&RamBlock> {
        self.find_entry(addr).map(|(entry, _)| &*entry.block)
    }

    /// The block that contains `addr`, as a counted reference that keeps its memory
    /// mapped after the guard ends, even if the block is removed meanwhile (QEMU's
    /// `memory_region_ref` in `address_space_map`): what in-flight DMA holds so the kernel
    /// never writes into unmapped guest memory. The unmap waits for the last reference.
    #[inline]
    pub fn find_shared(&self, addr: GuestAddress) -> Option<Arc<RamBlock>> {
        self.find_entry(addr)
            .map(|(entry, _)| Arc::clone(&entry.block))
    }

    /// The entry that contains `addr`, and `addr`'s offset in it.
    #[inline]
    fn find_entry(&self, addr: GuestAddress) -> Option<(&Entry, u64)> {
        // Relaxed: the index is only a hint. Any index stored here names a block of this
        // version, whose contents the Acquire load of the version already made visible,
        // and the hit is re-validated against `addr` below.
        let hint = self.mru.load(Ordering::Relaxed);
        if let Some(entry) = self.entries.get(hint) {
            if let Some(offset) = entry.offset_of(addr) {
                return Some((entry, offset));
            }
        }
        self.search_and_cache(addr)
    }

    fn search_and_cache(&self, addr: GuestAddress) -> Option<(&Entry, u64)> {
        // The last block starting at or below `addr` is the only one that can hold it.
        let index = self
            .entries
            .partition_point(|e| e.start <= addr.0)
            .checked_sub(1)?;
        let entry = &self.entries[index];
        let offset = entry.offset_of(addr)?; // else a hole
        // Relaxed, as in `find_entry`. Concurrent readers may overwrite each other's
        // hints; any of them is correct for this version.
        self.mru.store(index, Ordering::Relaxed);
        Some((entry, offset))
    }

    /// The `len` bytes of guest memory at `addr`, all in one block, or an error: the
    /// guest controls `addr` and `len`, so every range is checked, including ranges
    /// that wrap past `u64::MAX`. A range that leaves its block is an error even when
    /// an adjacent block continues it: the two are not contiguous on the host. (For
    /// accesses that may span blocks, use vm-memory's `Bytes` or `get_slices`.)
    ///
    /// `len == 0` gives an empty slice if `addr` is RAM.
    ///
    /// # Errors
    ///
    /// [`Error::NotRam`] if no block contains `addr`; [`Error::RangeLeavesBlock`] if the
    /// range does not end in the block that contains `addr`.
    #[inline]
    pub fn translate(&self, addr: GuestAddress, len: usize) -> Result<VolatileSlice<'_>> {
        // `let else`, not `ok_or(Error)`: the eager form builds and drops an `Error`
        // (which has a destructor) on every successful translation.
        let Some((entry, offset)) = self.find_entry(addr) else {
            return Err(Error::NotRam { addr: addr.0 });
        };
        entry.block.slice_at(offset, len)
    }

    /// The contiguous prefix of the `len` bytes at `addr`: up to the end of the block
    /// that contains `addr` (QEMU's `address_space_map` semantics: the caller maps the
    /// rest, if any, with another call).
    ///
    /// # Errors
    ///
    /// [`Error::NotRam`] if no block contains `addr`.
    #[inline]
    pub fn translate_prefix(&self, addr: GuestAddress, len: usize) -> Result<VolatileSlice<'_>> {
        let Some((entry, offset)) = self.find_entry(addr) else {
            return Err(Error::NotRam { addr: addr.0 });
        };
        Ok(entry.block.prefix_at(offset, len))
    }
}

/// The map as vm-memory's physical memory. vm-memory 0.18 calls this trait
/// `GuestMemoryBackend` and derives `GuestMemory` (and with it `Bytes<GuestAddress>`)
/// for every implementation, so linux-loader (which takes `GuestMemoryBackend`) and
/// virtio-queue (which takes `GuestMemory`) both accept `&RamBlocks`.
impl GuestMemoryBackend for RamBlocks {
    type R = RamBlock;

    fn num_regions(&self) -> usize {
        self.entries.len()
    }

    #[inline]
    fn find_region(&self, addr: GuestAddress) -> Option<&RamBlock> {
        self.find(addr)
    }

    /// Overridden so that the offset comes from the lookup, not from a second one.
    #[inline]
    fn to_region_addr(&self, addr: GuestAddress) -> Option<(&RamBlock, MemoryRegionAddress)> {
        self.find_entry(addr)
            .map(|(entry, offset)| (&*entry.block, MemoryRegionAddress(offset)))
    }

    /// Overridden to skip the default's second lookup (vm-memory's semantics: the whole
    /// range must lie in the block that contains `addr`).
    #[inline]
    fn get_slice(
        &self,
        addr: GuestAddress,
        count: usize,
    ) -> GuestMemoryResult<VolatileSlice<'_, MS<'_, Self>>> {
        let Some((block, offset)) = self.to_region_addr(addr) else {
            return Err(GuestMemoryError::InvalidGuestAddress(addr));
        };
        block.get_slice(offset, count)
    }

    fn iter(&self) -> impl Iterator<Item = &RamBlock> {
        RamBlocks::iter(self)
    }
}

impl std::fmt::Debug for RamBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(
                self.iter()
                    .map(|b| format!("{:?} {:#x}..={:#x}", b.name(), b.start().0, b.last_addr().0)),
            )
            .finish()
    }
}
