//! The RAM block list: an RCU-published [`RamBlocks`] version that readers look up under
//! a guard, and writers replace under a mutex.

use std::sync::{Arc, Mutex};

use rcu::{RcuCell, ReadSide};
use vm_memory::{GuestAddress, GuestAddressSpace, GuestMemoryRegion, VolatileSlice};

use crate::{Error, RamBlock, RamBlocks, RamMemory, Result};

/// The guest's RAM blocks (QEMU's `ram_list`): a handle, cheap to clone, shared by the
/// threads that look up guest memory (vCPUs, iothreads) and the one that plugs and
/// unplugs it.
///
/// - **Readers** never block and never write shared memory except the MRU hint: they
///   look up under any RCU read guard ([`blocks`](Self::blocks), [`find`](Self::find),
///   [`translate`](Self::translate)), or take a [`RamMemory`] view with
///   [`memory`](Self::memory) (vm-memory's `GuestAddressSpace`). What they get borrows
///   the guard.
/// - **Writers** ([`add`](Self::add), [`remove`](Self::remove)) are serialized by a
///   mutex and publish a new version of the map; they never wait for readers.
/// - **Reclaim**: a removed block is unmapped on the `call_rcu` thread after a grace
///   period, so a reader that found it before the removal keeps using it safely.
///
/// Each of `find`, `translate` and `memory` loads the *current* version: two calls can
/// see different maps if a writer ran between them (a block removed and another added
/// at the same address). Where several lookups must agree, load the version once with
/// [`blocks`](Self::blocks) (or hold one [`RamMemory`]) and look up in it.
#[derive(Clone)]
pub struct RamList {
    shared: Arc<Shared>,
}

struct Shared {
    /// The version readers see. Never empty: `new` publishes one, writers replace it.
    current: RcuCell<RamBlocks>,
    /// Serializes writers; holds the current version's blocks, in address order.
    writer: Mutex<Vec<Arc<RamBlock>>>,
}

impl Drop for Shared {
    fn drop(&mut self) {
        // A `RamMemory` view points at the current version without keeping `Shared`
        // alive, so the version must outlive every read section that might hold such a
        // view: unpublish it and let it go after a grace period, like any replaced one.
        // (RcuCell's own drop would free it at once.)
        self.current.clear();
    }
}

impl RamList {
    /// An empty map: no guest address is RAM.
    pub fn new() -> RamList {
        RamList {
            shared: Arc::new(Shared {
                current: RcuCell::new(RamBlocks::new(&[])),
                writer: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Places `block` in the map (hot add): readers that start from now on can find it.
    ///
    /// # Errors
    ///
    /// [`Error::Overlap`] if it overlaps a block already placed (adjacent is fine);
    /// [`Error::DuplicateName`] if a block with its name is already placed. The block is
    /// dropped (unmapped) with the error.
    ///
    /// Returns the placed block: a holder of this `Arc` keeps the mapping alive whatever
    /// later happens to the list (a KVM memory slot that points into it holds one for as
    /// long as the slot exists).
    pub fn add(&self, block: RamBlock) -> Result<Arc<RamBlock>> {
        let mut blocks = self.lock_writer();
        if blocks.iter().any(|b| b.name() == block.name()) {
            return Err(Error::DuplicateName {
                name: block.name().to_owned(),
            });
        }
        // Sorted and disjoint: only the neighbours of the insertion point can overlap.
        let index = blocks.partition_point(|b| b.start() < block.start());
        let neighbours = index.checked_sub(1).into_iter().chain([index]);
        for other in neighbours.filter_map(|i| blocks.get(i)) {
            if other.start() <= block.last_addr() && block.start() <= other.last_addr() {
                return Err(Error::Overlap {
                    name: block.name().to_owned(),
                    start: block.start().0,
                    last: block.last_addr().0,
                    other: other.name().to_owned(),
                    other_start: other.start().0,
                    other_last: other.last_addr().0,
                });
            }
        }
        let block = Arc::new(block);
        blocks.insert(index, block.clone());
        // Release (inside `replace`) publishes the block's mapping and fields to readers
        // that load the new version with Acquire.
        self.shared.current.replace(RamBlocks::new(&blocks));
        Ok(block)
    }

    /// Replaces the whole map with `blocks` in one step (a vhost-user `SET_MEM_TABLE`):
    /// a reader sees either the old map or the new one, never a mix or a gap. The old
    /// blocks are unmapped after a grace period, like [`RamList::remove`]'s.
    ///
    /// # Errors
    ///
    /// [`Error::Overlap`] or [`Error::DuplicateName`] among `blocks`; the map is then
    /// unchanged.
    pub fn replace_all(&self, blocks: Vec<RamBlock>) -> Result<()> {
        let mut new: Vec<Arc<RamBlock>> = blocks.into_iter().map(Arc::new).collect();
        new.sort_by_key(|b| b.start());
        for pair in new.windows(2) {
            if pair[1].start() <= pair[0].last_addr() {
                return Err(Error::Overlap {
                    name: pair[1].name().to_owned(),
                    start: pair[1].start().0,
                    last: pair[1].last_addr().0,
                    other: pair[0].name().to_owned(),
                    other_start: pair[0].start().0,
                    other_last: pair[0].last_addr().0,
                });
            }
        }
        let mut names: Vec<&str> = new.iter().map(|b| b.name()).collect();
        names.sort_unstable();
        if let Some(dup) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(Error::DuplicateName {
                name: dup[0].to_owned(),
            });
        }
        let mut writer = self.lock_writer();
        self.shared.current.replace(RamBlocks::new(&new));
        let old = std::mem::replace(&mut *writer, new);
        rcu::defer_drop(old);
        Ok(())
    }

    /// Removes the block that starts at `start` (hot remove; QEMU's `qemu_ram_free`).
    ///
    /// The block is unlinked at once: readers that start from now on do not find it,
    /// and the MRU hint that may name it goes away with the old version. It is unmapped
    /// (and its fd closed) after a grace period, on the `call_rcu` thread, so readers
    /// that still hold it, or slices of it, keep valid memory until their guards drop.
    /// Never blocks on readers; [`rcu::barrier`] waits for the unmap.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchBlock`] if no block starts at `start`.
    pub fn remove(&self, start: GuestAddress) -> Result<()> {
        let mut blocks = self.lock_writer();
        let index = blocks
            .binary_search_by_key(&start, |b| b.start())
            .map_err(|_| Error::NoSuchBlock { start: start.0 })?;
        let removed = blocks.remove(index);
        // Unlink: publish a version without the block (and with an empty MRU cache).
        // The old version is dropped after a grace period; so is `removed`, the last
        // reference outside the old versions. Whichever drops last unmaps the block,
        // and both wait for every reader that could have seen it: seed 001's
        // `call_rcu(block, reclaim_ramblock, rcu)`.
        self.shared.current.replace(RamBlocks::new(&blocks));
        rcu::defer_drop(removed);
        Ok(())
    }

    /// The current version of the map, for as long as `guard` (and `self`) are borrowed.
    /// Every block and slice it returns borrows it, hence the guard.
    ///
    /// Accepts any read side: a memb [`rcu::Guard`] or a QSBR guard on an event-loop
    /// thread.
    #[inline]
    pub fn blocks<'g, G: ReadSide>(&'g self, guard: &'g G) -> &'g RamBlocks {
        self.shared
            .current
            .load(guard)
            .expect("the RAM list always publishes a version")
    }

    /// The block that contains `addr`, under `guard` (MRU first, then a binary search).
    #[inline]
    pub fn find<'g, G: ReadSide>(
        &'g self,
        guard: &'g G,
        addr: GuestAddress,
    ) -> Option<&'g RamBlock> {
        self.blocks(guard).find(addr)
    }

    /// The `len` bytes at `addr`, all in one block, under `guard`; see
    /// [`RamBlocks::translate`].
    ///
    /// # Errors
    ///
    /// [`Error::NotRam`], [`Error::RangeLeavesBlock`].
    #[inline]
    pub fn translate<'g, G: ReadSide>(
        &'g self,
        guard: &'g G,
        addr: GuestAddress,
        len: usize,
    ) -> Result<VolatileSlice<'g>> {
        self.blocks(guard).translate(addr, len)
    }

    /// The contiguous prefix of the `len` bytes at `addr`, under `guard`; see
    /// [`RamBlocks::translate_prefix`].
    ///
    /// # Errors
    ///
    /// [`Error::NotRam`].
    #[inline]
    pub fn translate_prefix<'g, G: ReadSide>(
        &'g self,
        guard: &'g G,
        addr: GuestAddress,
        len: usize,
    ) -> Result<VolatileSlice<'g>> {
        self.blocks(guard).translate_prefix(addr, len)
    }

    /// A view of the current map that owns its own memb read guard (what
    /// [`GuestAddressSpace::memory`] returns); see [`RamMemory`].
    #[inline]
    pub fn memory(&self) -> RamMemory {
        RamMemory::new(self)
    }

    fn lock_writer(&self) -> std::sync::MutexGuard<'_, Vec<Arc<RamBlock>>> {
        // A writer that panicked left the list consistent: it publishes only at the end.
        self.shared.writer.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for RamList {
    fn default() -> RamList {
        RamList::new()
    }
}

/// The list as vm-memory's address space: `memory()` takes a read guard and returns a
/// view of the current version that owns it, so rust-vmm code written against
/// `M: GuestAddressSpace` runs on our memory. See [`RamMemory`] for what holding a view
/// means.
impl GuestAddressSpace for RamList {
    type M = RamBlocks;
    type T = RamMemory;

    #[inline]
    fn memory(&self) -> RamMemory {
        RamMemory::new(self)
    }
}

impl std::fmt::Debug for RamList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let guard = rcu::read();
        f.debug_tuple("RamList").field(self.blocks(&guard)).finish()
    }
}
