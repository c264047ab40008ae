//! One RAM block: a range of guest-physical addresses backed by one host mapping.

use std::os::fd::{AsFd, BorrowedFd};

use vm_memory::bitmap::BS;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryError, GuestMemoryRegion, GuestMemoryRegionBytes,
    GuestUsize, MemoryRegionAddress, VolatileSlice,
};

use crate::backing::{Backing, HostMemory};
use crate::{Error, Result};

/// A block of guest RAM (QEMU's `RAMBlock`): `size` bytes at guest address `start`,
/// backed by one host mapping that lives exactly as long as the block.
///
/// A block is created on its own: build it, optionally fill it through
/// [`RamBlock::volatile_slice`], then hand it to
/// [`RamList::add`](crate::RamList::add). Once added, readers reach it only under a
/// read guard, and [`RamList::remove`](crate::RamList::remove) unmaps it after a grace
/// period.
///
/// ```
/// use ram_block::{Backing, RamBlock};
/// use vm_memory::{Bytes, GuestAddress, GuestMemoryRegion, MemoryRegionAddress};
///
/// let block = RamBlock::new("rom", GuestAddress(0xf_0000), 0x1_0000, Backing::Anonymous { huge_pages: false })?;
/// block.write_slice(b"\xea\x5b\xe0\x00\xf0", MemoryRegionAddress(0xfff0))?; // through vm-memory's Bytes
/// assert_eq!(block.last_addr(), GuestAddress(0xf_ffff));
/// assert!(block.contains(GuestAddress(0xf_fff0)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct RamBlock {
    name: String,
    start: GuestAddress,
    size: u64,
    host: HostMemory,
}

impl RamBlock {
    /// Maps `size` bytes of `backing` for guest addresses `start..start + size`.
    ///
    /// # Errors
    ///
    /// [`Error::EmptyBlock`], [`Error::PastTopOfAddressSpace`] (the block may end exactly
    /// at the top, `u64::MAX`, but not wrap), [`Error::TooLarge`], and the mapping errors
    /// of the backing: [`Error::HugePageMisaligned`], [`Error::HugePagesUnavailable`],
    /// [`Error::BadFileOffset`], [`Error::FileTooSmall`], [`Error::Os`].
    pub fn new(
        name: impl Into<String>,
        start: GuestAddress,
        size: u64,
        backing: Backing,
    ) -> Result<RamBlock> {
        let name = name.into();
        if size == 0 {
            return Err(Error::EmptyBlock { name });
        }
        if start.0.checked_add(size - 1).is_none() {
            return Err(Error::PastTopOfAddressSpace {
                name,
                start: start.0,
                size,
            });
        }
        if size > isize::MAX as u64 {
            return Err(Error::TooLarge { name, size });
        }
        let host = backing.map(&name, size)?;
        Ok(RamBlock {
            name,
            start,
            size,
            host,
        })
    }

    /// The block's name (QEMU's `idstr`), unique within a [`RamList`](crate::RamList).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The first guest address.
    #[inline]
    pub fn start(&self) -> GuestAddress {
        self.start
    }

    /// The size in bytes.
    #[inline]
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether `addr` is in the block. One subtraction and one comparison (QEMU's
    /// `addr - block->offset < block->max_length`): the wrapping subtraction sends
    /// addresses below `start` to huge offsets, so no case is special, not even a block
    /// that ends at `u64::MAX`.
    #[inline]
    pub fn contains(&self, addr: GuestAddress) -> bool {
        addr.0.wrapping_sub(self.start.0) < self.size
    }

    /// The host address of the block's first byte, for the interfaces that take one
    /// (`KVM_SET_USER_MEMORY_REGION`, a vhost-user memory table). Dereferencing it is
    /// the caller's business; it is valid until the block is reclaimed.
    pub fn host_address(&self) -> *mut u8 {
        self.host.mapping.as_ptr()
    }

    /// The fd behind a shared block (memfd or handed-in fd) and the block's offset in it,
    /// for handing the memory to another process; `None` for anonymous memory.
    pub fn shared_fd(&self) -> Option<(BorrowedFd<'_>, u64)> {
        self.host
            .file
            .as_ref()
            .map(|f| (f.file().as_fd(), f.start()))
    }

    /// Whether the block is made of huge pages.
    pub fn huge_pages(&self) -> bool {
        self.host.huge_pages
    }

    /// The whole block, for volatile access (to fill it before it is added, for example).
    pub fn volatile_slice(&self) -> VolatileSlice<'_> {
        self.mapped(0, self.size as usize)
    }

    /// The `len` bytes at guest address `addr`, all inside this block, or an error: a
    /// bounds-checked translation that never yields a pointer outside the mapping.
    ///
    /// # Errors
    ///
    /// [`Error::NotRam`] if `addr` is not in the block, [`Error::RangeLeavesBlock`] if
    /// the range does not end in it.
    #[inline]
    pub fn slice(&self, addr: GuestAddress, len: usize) -> Result<VolatileSlice<'_>> {
        self.slice_at(self.offset_of(addr)?, len)
    }

    /// The longest prefix of the `len` bytes at `addr` that lies in this block (what
    /// QEMU's `address_space_map` returns): `min(len, bytes left in the block)` bytes.
    ///
    /// # Errors
    ///
    /// [`Error::NotRam`] if `addr` is not in the block.
    #[inline]
    pub fn slice_prefix(&self, addr: GuestAddress, len: usize) -> Result<VolatileSlice<'_>> {
        Ok(self.prefix_at(self.offset_of(addr)?, len))
    }

    #[inline]
    fn offset_of(&self, addr: GuestAddress) -> Result<u64> {
        let offset = addr.0.wrapping_sub(self.start.0);
        if offset < self.size {
            Ok(offset)
        } else {
            Err(Error::NotRam { addr: addr.0 })
        }
    }

    /// [`slice`](Self::slice) for an offset already known to be in the block.
    #[inline]
    pub(crate) fn slice_at(&self, offset: u64, len: usize) -> Result<VolatileSlice<'_>> {
        debug_assert!(offset < self.size);
        // `room >= 1`: `offset < size`. Comparing against the room left cannot overflow,
        // where `offset + len` could.
        let room = self.size - offset;
        if len as u64 > room {
            return Err(self.range_leaves(offset, len));
        }
        Ok(self.mapped(offset, len))
    }

    /// The error for a range from `offset` that runs past the block's end; out of line,
    /// off the translation fast path.
    #[cold]
    #[inline(never)]
    fn range_leaves(&self, offset: u64, len: usize) -> Error {
        Error::RangeLeavesBlock {
            addr: self.start.0.wrapping_add(offset),
            len: len as u64,
            block_start: self.start.0,
            block_last: self.last_addr().0,
        }
    }

    /// [`slice_prefix`](Self::slice_prefix) for an offset already known to be in the
    /// block.
    #[inline]
    pub(crate) fn prefix_at(&self, offset: u64, len: usize) -> VolatileSlice<'_> {
        debug_assert!(offset < self.size);
        let len = (len as u64).min(self.size - offset) as usize;
        self.mapped(offset, len)
    }

    /// `offset + len <= size` (checked by every caller).
    #[inline]
    fn mapped(&self, offset: u64, len: usize) -> VolatileSlice<'_> {
        // The mapping is at least `size` bytes, so this holds; a `None` here would be a
        // bug in this file, and is turned into a panic rather than a wild pointer.
        self.host
            .mapping
            .slice(offset as usize, len)
            .expect("RamBlock range inside its mapping")
    }
}

/// vm-memory's view of a block, so that rust-vmm crates run on our memory. There is no
/// dirty bitmap (`B = ()`): live migration is not this crate's job yet.
impl GuestMemoryRegion for RamBlock {
    type B = ();

    #[inline]
    fn len(&self) -> GuestUsize {
        self.size
    }

    #[inline]
    fn start_addr(&self) -> GuestAddress {
        self.start
    }

    fn bitmap(&self) -> BS<'_, ()> {}

    #[inline]
    fn get_host_address(&self, addr: MemoryRegionAddress) -> vm_memory::GuestMemoryResult<*mut u8> {
        if addr.0 >= self.size {
            return Err(GuestMemoryError::InvalidBackendAddress);
        }
        // In bounds, so this is a plain offset into the mapping (no dereference).
        Ok(self.host.mapping.as_ptr().wrapping_add(addr.0 as usize))
    }

    fn file_offset(&self) -> Option<&FileOffset> {
        self.host.file.as_ref()
    }

    /// `count` bytes at region offset `offset`, as vm-memory's mmap regions do:
    /// `offset + count <= len` (so an empty slice at `offset == len` is allowed).
    #[inline]
    fn get_slice(
        &self,
        offset: MemoryRegionAddress,
        count: usize,
    ) -> vm_memory::GuestMemoryResult<VolatileSlice<'_, BS<'_, ()>>> {
        if offset.0 > self.size || count as u64 > self.size - offset.0 {
            return Err(GuestMemoryError::InvalidBackendAddress);
        }
        Ok(self.mapped(offset.0, count))
    }

    #[cfg(target_os = "linux")]
    fn is_hugetlbfs(&self) -> Option<bool> {
        Some(self.host.huge_pages)
    }
}

/// `Bytes<MemoryRegionAddress>` from vm-memory's default implementation over
/// [`GuestMemoryRegion::get_slice`].
impl GuestMemoryRegionBytes for RamBlock {}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(start: u64, size: u64) -> RamBlock {
        RamBlock::new(
            "t",
            GuestAddress(start),
            size,
            Backing::Anonymous { huge_pages: false },
        )
        .unwrap()
    }

    #[test]
    fn contains_needs_no_special_case_at_either_end_of_the_address_space() {
        let low = block(0, 16);
        assert!(low.contains(GuestAddress(0)) && low.contains(GuestAddress(15)));
        assert!(!low.contains(GuestAddress(16)) && !low.contains(GuestAddress(u64::MAX)));
        let top = block(u64::MAX - 15, 16);
        assert!(top.contains(GuestAddress(u64::MAX)) && top.contains(GuestAddress(u64::MAX - 15)));
        assert!(!top.contains(GuestAddress(0)) && !top.contains(GuestAddress(u64::MAX - 16)));
    }

    #[test]
    fn range_errors_report_the_guest_range_and_the_block() {
        let b = block(0x1000, 0x100);
        match b.slice(GuestAddress(0x10f0), 0x20) {
            Err(Error::RangeLeavesBlock {
                addr,
                len,
                block_start,
                block_last,
            }) => {
                assert_eq!(
                    (addr, len, block_start, block_last),
                    (0x10f0, 0x20, 0x1000, 0x10ff)
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            b.slice(GuestAddress(0x1100), 0),
            Err(Error::NotRam { addr: 0x1100 })
        ));
    }
}
