//! [`IoBuffers`]: the memory of one vectored I/O, with whatever keeps it valid.

use std::alloc::{self, Layout};
use std::sync::Arc;

use map_client::BounceMapping;
use ram_block::RamBlock;
use smallvec::SmallVec;

/// What keeps one iovec's memory valid until the I/O completes.
enum Keep {
    /// Guest RAM: a counted reference to its block (the mapping outlives a hot remove).
    Ram(Arc<RamBlock>),
    /// A bounce buffer of map-client (MMIO).
    Bounce(BounceMapping),
    /// Memory of our own (an aligned bounce for O_DIRECT, a test buffer).
    Owned(#[allow(dead_code, reason = "held, never read")] AlignedBuf),
    /// Memory the creator vouched for ([`IoBuffers::push_raw`]).
    Raw,
}

/// The buffers of one vectored read or write: iovecs plus the owners that keep them
/// mapped. A backend owns an `IoBuffers` while the kernel may access it and hands it back
/// on completion, so no iovec can dangle while an I/O is in flight.
///
/// Not `Send`: the buffers of a request stay in its `AioContext`.
pub struct IoBuffers {
    iov: SmallVec<[libc::iovec; 4]>,
    keep: SmallVec<[Keep; 4]>,
    len: usize,
}

impl Default for IoBuffers {
    fn default() -> Self {
        IoBuffers::new()
    }
}

impl IoBuffers {
    /// No buffers.
    pub fn new() -> IoBuffers {
        IoBuffers {
            iov: SmallVec::new(),
            keep: SmallVec::new(),
            len: 0,
        }
    }

    /// One buffer of our own.
    pub fn from_owned(buf: AlignedBuf) -> IoBuffers {
        let mut b = IoBuffers::new();
        b.push_owned(buf);
        b
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The iovecs, for a `readv`/`writev`.
    pub fn iovecs(&self) -> &[libc::iovec] {
        &self.iov
    }

    /// Number of iovecs.
    pub fn count(&self) -> usize {
        self.iov.len()
    }

    /// The RAM block that every iovec lies in, if they are all guest RAM of one block
    /// (what an io_uring registered buffer can cover: see `FileOptions::registered_buffers`).
    pub fn single_ram_block(&self) -> Option<&Arc<RamBlock>> {
        let mut keep = self.keep.iter();
        let Some(Keep::Ram(first)) = keep.next() else {
            return None;
        };
        keep.all(|k| matches!(k, Keep::Ram(b) if Arc::ptr_eq(b, first)))
            .then_some(first)
    }

    /// Appends `len` bytes of `block` at host address `ptr`.
    ///
    /// # Panics
    ///
    /// If `[ptr, ptr + len)` is not inside the block's mapping (a caller bug, not guest
    /// input: callers translate guest addresses with bounds checks first).
    pub fn push_ram(&mut self, block: Arc<RamBlock>, ptr: *mut u8, len: usize) {
        let base = block.host_address() as usize;
        let start = ptr as usize;
        assert!(
            start >= base
                && start
                    .checked_add(len)
                    .is_some_and(|end| end <= base + block.size() as usize),
            "iovec outside its RAM block"
        );
        self.push_iov(ptr, len);
        self.keep.push(Keep::Ram(block));
    }

    /// Appends a map-client bounce buffer (its whole length).
    pub fn push_bounce(&mut self, mut mapping: BounceMapping) {
        let slice = mapping.as_mut_slice();
        self.push_iov(slice.as_mut_ptr(), slice.len());
        self.keep.push(Keep::Bounce(mapping));
    }

    /// Appends a buffer of our own (its whole length).
    pub fn push_owned(&mut self, mut buf: AlignedBuf) {
        let (ptr, len) = (buf.as_mut_ptr(), buf.len());
        self.push_iov(ptr, len);
        self.keep.push(Keep::Owned(buf));
    }

    /// Appends memory this object does not own.
    ///
    /// # Safety
    ///
    /// `[ptr, ptr + len)` must stay valid for reads and writes, and not be accessed
    /// through Rust references, until this `IoBuffers` is dropped.
    pub unsafe fn push_raw(&mut self, ptr: *mut u8, len: usize) {
        self.push_iov(ptr, len);
        self.keep.push(Keep::Raw);
    }

    fn push_iov(&mut self, ptr: *mut u8, len: usize) {
        self.iov.push(libc::iovec {
            iov_base: ptr.cast(),
            iov_len: len,
        });
        self.len += len;
    }

    /// Whether every iovec's address and length is a multiple of `align` (O_DIRECT's
    /// memory alignment).
    pub fn is_aligned(&self, align: usize) -> bool {
        let mask = align.max(1) - 1;
        self.iov
            .iter()
            .all(|v| (v.iov_base as usize | v.iov_len) & mask == 0)
    }

    /// Copies `src` into the buffers from their start (up to their length); returns the
    /// bytes copied.
    pub fn copy_from(&mut self, src: &[u8]) -> usize {
        let mut done = 0;
        for v in &self.iov {
            let n = v.iov_len.min(src.len() - done);
            // SAFETY: every iovec is valid for writes while `self` lives (the `keep`
            // entries or the `push_raw` contract), and `src` is a different allocation
            // (a caller's slice cannot alias memory we are the sole I/O owner of).
            unsafe { std::ptr::copy_nonoverlapping(src.as_ptr().add(done), v.iov_base.cast(), n) };
            done += n;
            if done == src.len() {
                break;
            }
        }
        done
    }

    /// Copies the buffers' contents, from their start, into `dst`; returns the bytes
    /// copied.
    pub fn copy_to(&self, dst: &mut [u8]) -> usize {
        let mut done = 0;
        for v in &self.iov {
            let n = v.iov_len.min(dst.len() - done);
            // SAFETY: as in `copy_from`, with the roles swapped.
            unsafe {
                std::ptr::copy_nonoverlapping(v.iov_base.cast(), dst.as_mut_ptr().add(done), n)
            };
            done += n;
            if done == dst.len() {
                break;
            }
        }
        done
    }

    /// Removes the last buffer (to trim a transfer to a sector multiple), returning its
    /// length and, if it was a bounce buffer, the mapping.
    pub fn pop(&mut self) -> Option<(usize, Option<BounceMapping>)> {
        let v = self.iov.pop()?;
        self.len -= v.iov_len;
        let bounce = match self.keep.pop() {
            Some(Keep::Bounce(m)) => Some(m),
            _ => None,
        };
        Some((v.iov_len, bounce))
    }

    /// Shortens the last buffer by `by` bytes (which must be less than its length).
    pub fn shrink_last(&mut self, by: usize) {
        if let Some(v) = self.iov.last_mut() {
            assert!(by < v.iov_len, "shrink_last past the buffer");
            v.iov_len -= by;
            self.len -= by;
        }
    }

    /// Takes out the bounce mappings, in order, dropping the other owners (for the
    /// write-back of a completed DMA read).
    pub fn into_bounces(self) -> impl Iterator<Item = (BounceMapping, usize)> {
        self.iov
            .into_iter()
            .zip(self.keep)
            .filter_map(|(v, k)| match k {
                Keep::Bounce(m) => Some((m, v.iov_len)),
                _ => None,
            })
    }
}

impl std::fmt::Debug for IoBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoBuffers")
            .field("count", &self.iov.len())
            .field("len", &self.len)
            .finish()
    }
}

/// A zeroed heap buffer aligned for O_DIRECT.
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
    layout: Layout,
}

// SAFETY: an owned heap allocation with no interior sharing; moving it between threads
// is like moving a `Vec<u8>`.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// `len` zero bytes aligned to `align` (a power of two).
    ///
    /// # Panics
    ///
    /// If `align` is not a power of two or the size overflows.
    pub fn zeroed(len: usize, align: usize) -> AlignedBuf {
        let layout = Layout::from_size_align(len.max(1), align.max(1)).expect("bad layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = std::ptr::NonNull::new(ptr).unwrap_or_else(|| alloc::handle_alloc_error(layout));
        AlignedBuf { ptr, len, layout }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `len` initialized (zeroed) bytes owned by `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `zeroed` with this layout.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_zeroed_aligned_and_sized() {
        for align in [1usize, 512, 4096] {
            let b = AlignedBuf::zeroed(1000, align);
            assert_eq!(b.len(), 1000);
            assert_eq!(b.as_ptr() as usize % align, 0);
            assert!(b.iter().all(|&x| x == 0));
        }
        let empty = AlignedBuf::zeroed(0, 512);
        assert!(empty.is_empty());
    }

    #[test]
    fn copies_cross_iovec_boundaries_and_stop_at_the_shorter_side() {
        let mut bufs = IoBuffers::new();
        bufs.push_owned(AlignedBuf::zeroed(3, 1));
        bufs.push_owned(AlignedBuf::zeroed(5, 1));
        assert_eq!((bufs.len(), bufs.count()), (8, 2));
        assert_eq!(bufs.copy_from(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), 8);
        let mut out = [0u8; 6];
        assert_eq!(bufs.copy_to(&mut out), 6);
        assert_eq!(out, [1, 2, 3, 4, 5, 6]);
        let mut all = [0u8; 12];
        assert_eq!(bufs.copy_to(&mut all), 8);
        assert_eq!(&all[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(bufs.copy_from(&[]), 0);
    }

    #[test]
    fn trimming_keeps_lengths_consistent() {
        let mut bufs = IoBuffers::new();
        bufs.push_owned(AlignedBuf::zeroed(512, 512));
        bufs.push_owned(AlignedBuf::zeroed(700, 512));
        assert!(bufs.is_aligned(1));
        assert!(!bufs.is_aligned(512));
        bufs.shrink_last(188);
        assert_eq!(bufs.len(), 1024);
        assert!(bufs.is_aligned(512));
        assert_eq!(bufs.pop().map(|(n, b)| (n, b.is_none())), Some((512, true)));
        assert_eq!(bufs.len(), 512);
        assert_eq!(bufs.into_bounces().count(), 0);
    }

    #[test]
    fn raw_memory_is_borrowed_not_owned() {
        let mut backing = vec![0u8; 16];
        let mut bufs = IoBuffers::new();
        // SAFETY: `backing` outlives `bufs` and is not otherwise accessed meanwhile.
        unsafe { bufs.push_raw(backing.as_mut_ptr(), 16) };
        bufs.copy_from(&[7; 16]);
        drop(bufs);
        assert_eq!(backing, vec![7; 16]);
    }
}
