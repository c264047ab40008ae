//! An owned range of host virtual memory, and the one place that turns it into
//! [`VolatileSlice`]s.
//!
//! Real builds map it with `mmap(2)` and unmap it on drop. Under miri (which cannot run
//! `mmap`) anonymous memory comes from the heap instead, page aligned and zeroed, so the
//! list, MRU and bounds logic above it runs unchanged under miri; shared (fd) mappings
//! are not available there.

use std::num::NonZeroUsize;
use std::os::fd::BorrowedFd;
use std::ptr::NonNull;

use vm_memory::VolatileSlice;

/// `len` bytes of host memory at `ptr`, owned: unmapped (or freed) on drop.
pub(crate) struct Mapping {
    ptr: NonNull<u8>,
    len: NonZeroUsize,
}

// SAFETY: `Mapping` owns its memory like a `Box<[u8]>` does; moving it to another thread
// moves that ownership, and only `Drop` (which needs ownership) unmaps it.
unsafe impl Send for Mapping {}
// SAFETY: through `&Mapping` threads get only `VolatileSlice`s, which access the bytes
// with volatile loads and stores and never form `&[u8]`/`&mut [u8]`: the bytes are shared
// with the guest anyway, and no Rust reference to them exists that a race could break.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// The host's base page size.
    pub(crate) fn page_size() -> usize {
        #[cfg(not(miri))]
        {
            use nix::unistd::{SysconfVar, sysconf};
            match sysconf(SysconfVar::PAGE_SIZE) {
                Ok(Some(size)) if size > 0 => size as usize,
                _ => 4096,
            }
        }
        #[cfg(miri)]
        4096
    }

    /// Private anonymous memory, zero filled; with `huge_pages`, `MAP_HUGETLB`.
    #[cfg(not(miri))]
    pub(crate) fn anonymous(len: NonZeroUsize, huge_pages: bool) -> nix::Result<Mapping> {
        use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous};
        let mut flags = MapFlags::MAP_PRIVATE;
        if huge_pages {
            flags |= MapFlags::MAP_HUGETLB;
        }
        // SAFETY: a fresh mapping at an address of the kernel's choosing (no hint, no
        // MAP_FIXED), so no existing memory is replaced; the result is owned by the
        // returned `Mapping` alone.
        let ptr = unsafe {
            mmap_anonymous(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                flags,
            )?
        };
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Anonymous memory from the heap (miri cannot `mmap`), page aligned and zeroed.
    #[cfg(miri)]
    pub(crate) fn anonymous(len: NonZeroUsize, _huge_pages: bool) -> nix::Result<Mapping> {
        let layout = Self::heap_layout(len).ok_or(nix::errno::Errno::ENOMEM)?;
        // SAFETY: `layout` has a non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(ptr).ok_or(nix::errno::Errno::ENOMEM)?;
        Ok(Mapping { ptr, len })
    }

    #[cfg(miri)]
    fn heap_layout(len: NonZeroUsize) -> Option<std::alloc::Layout> {
        std::alloc::Layout::from_size_align(len.get(), Self::page_size()).ok()
    }

    /// `fd` from `offset`, mapped shared read-write: stores reach the file and every
    /// other mapping of it (another process's included).
    #[cfg(not(miri))]
    pub(crate) fn shared(
        fd: BorrowedFd<'_>,
        offset: i64,
        len: NonZeroUsize,
    ) -> nix::Result<Mapping> {
        use nix::sys::mman::{MapFlags, ProtFlags, mmap};
        // SAFETY: a fresh mapping at an address of the kernel's choosing (no MAP_FIXED);
        // the caller checked that the file covers `offset + len` bytes where it can (a
        // regular file), so touching the mapping does not raise SIGBUS.
        let ptr = unsafe {
            mmap(
                None,
                len,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                fd,
                offset,
            )?
        };
        Ok(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// Miri cannot map files.
    #[cfg(miri)]
    pub(crate) fn shared(
        _fd: BorrowedFd<'_>,
        _offset: i64,
        _len: NonZeroUsize,
    ) -> nix::Result<Mapping> {
        Err(nix::errno::Errno::ENOSYS)
    }

    /// The first byte.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// The length in bytes (whole pages).
    pub(crate) fn len(&self) -> usize {
        self.len.get()
    }

    /// `len` bytes from `offset`, or `None` if they are not all inside the mapping.
    #[inline]
    pub(crate) fn slice(&self, offset: usize, len: usize) -> Option<VolatileSlice<'_>> {
        if offset > self.len.get() || len > self.len.get() - offset {
            return None;
        }
        // SAFETY: `offset + len <= self.len` (checked above, without overflow), so the
        // range lies inside the mapping, which stays mapped while `self` is borrowed
        // (only `Drop` unmaps it) and so for the slice's lifetime. Every access to guest
        // memory, here and in the guest, is volatile (`VolatileSlice`); we never create
        // references to it.
        Some(unsafe { VolatileSlice::new(self.ptr.as_ptr().add(offset), len) })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        #[cfg(not(miri))]
        {
            // SAFETY: `ptr`/`len` are exactly what mmap returned; `&mut self` means no
            // slice borrows the mapping any more, and it is unmapped once, here.
            let unmapped = unsafe { nix::sys::mman::munmap(self.ptr.cast(), self.len.get()) };
            debug_assert!(
                unmapped.is_ok(),
                "munmap of a RAM block failed: {unmapped:?}"
            );
        }
        #[cfg(miri)]
        {
            let layout = Self::heap_layout(self.len).expect("layout was valid at allocation");
            // SAFETY: allocated in `anonymous` with this layout (miri maps nothing else);
            // `&mut self` means no slice borrows it; freed once, here.
            unsafe { std::alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

impl std::fmt::Debug for Mapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mapping")
            .field("ptr", &self.ptr)
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_stay_inside_the_mapping() {
        let m = Mapping::anonymous(NonZeroUsize::new(4096).unwrap(), false).unwrap();
        assert_eq!(m.slice(0, 4096).unwrap().len(), 4096);
        assert_eq!(m.slice(4096, 0).unwrap().len(), 0);
        assert_eq!(m.slice(4095, 1).unwrap().len(), 1);
        assert!(m.slice(4095, 2).is_none());
        assert!(m.slice(4097, 0).is_none());
        assert!(m.slice(1, usize::MAX).is_none()); // no overflow in the check
        assert!(m.slice(usize::MAX, 1).is_none());
    }
}
