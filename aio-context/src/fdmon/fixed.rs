//! io_uring's registered ("fixed") buffers, one table per ring.
//!
//! An O_DIRECT read or write pins the pages of its buffer for the time of the I/O and
//! unpins them after (`pin_user_pages` per request: 256 pages for 1 MiB). A buffer
//! registered with the ring is pinned once, and `READ_FIXED` / `WRITE_FIXED` (and
//! `READV_FIXED` / `WRITEV_FIXED`, Linux 6.15) name it by index instead. Measured with
//! fio on this project's bench machine: 1 MiB reads at a third of the CPU per I/O
//! (block-dma's DESIGN.md, "Registered buffers").
//!
//! What is registered is a whole memory region of an *owner* (a guest RAM block), on the
//! first I/O into it, split into slots of at most 1 GiB (the kernel's limit per buffer).
//! The table holds a counted reference to each owner, so a region stays mapped while the
//! kernel has it registered; a region whose owner is held by nothing else is unregistered
//! (and its owner dropped) at the next registration, or when the ring closes. So a
//! removed RAM block's memory stays pinned until the ring registers another region: the
//! price of not looking at the owners on every I/O.
//!
//! Every failure (no sparse tables before Linux 5.13, `RLIMIT_MEMLOCK`, a region the
//! kernel cannot pin, a full table) is remembered per owner, logged once, and the I/O
//! takes the plain path: registration is an optimisation, never a requirement.

use std::any::Any;
use std::io;
use std::sync::{Arc, Weak};

/// Slots in the sparse table: at most 1 GiB each, so 64 GiB of registered memory.
const SLOTS: u16 = 64;
/// The kernel's limit for one registered buffer.
const MAX_SLOT_BYTES: usize = 1 << 30;

/// A region to register: `[base, base + size)`, kept mapped by its owner.
pub(crate) struct Region<'a> {
    /// The owner's address (one owner, one region).
    pub(crate) key: *const (),
    /// A counted reference to the owner, taken only when the region is registered.
    pub(crate) owner: &'a dyn Fn() -> Arc<dyn Any + Send + Sync>,
    /// Start of the region.
    pub(crate) base: *mut u8,
    /// Its length in bytes.
    pub(crate) size: usize,
}

struct Registered {
    owner: Arc<dyn Any + Send + Sync>,
    base: usize,
    size: usize,
    first_slot: u16,
    slots: u16,
}

impl Registered {
    /// Nothing but this table holds the owner. (A weak reference upgraded after this
    /// check only keeps the owner alive without the registration: harmless.)
    fn is_orphan(&self) -> bool {
        Arc::strong_count(&self.owner) == 1
    }
}

/// Where a ring's sparse table of registered buffers or files stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Table {
    /// Not set up yet: the first registration asks the kernel for a sparse table.
    Untried,
    /// Set up.
    Ready,
    /// The kernel refused the table: no registration on this ring.
    Unavailable,
}

impl Table {
    /// Sets the table up on its first use (`setup` asks the kernel for it), once: a
    /// refusal is final for the ring.
    pub(super) fn ensure(&mut self, setup: impl FnOnce() -> io::Result<()>) -> io::Result<()> {
        match *self {
            Table::Ready => Ok(()),
            Table::Unavailable => Err(io::ErrorKind::Unsupported.into()),
            Table::Untried => {
                let r = setup();
                *self = if r.is_ok() {
                    Table::Ready
                } else {
                    Table::Unavailable
                };
                r
            }
        }
    }
}

/// The slot that holds `[ptr, ptr + len)` of a region `[base, base + size)` registered
/// from `first` on, one slot per `MAX_SLOT_BYTES`; `None` outside the region, for an
/// empty range, or across a slot boundary (such a range takes the plain path).
fn slot_of(base: usize, size: usize, first: u16, ptr: usize, len: usize) -> Option<u16> {
    let start = ptr.checked_sub(base)?;
    let end = start.checked_add(len)?;
    if len == 0 || end > size {
        return None;
    }
    let slot = start / MAX_SLOT_BYTES;
    ((end - 1) / MAX_SLOT_BYTES == slot).then(|| first + slot as u16)
}

/// The ring's table of registered buffers and what keeps each mapped.
pub(crate) struct FixedBuffers {
    table: Table,
    registered: Vec<Registered>,
    /// Owners whose region the kernel refused (weak: compared by address only; a weak
    /// reference keeps the allocation, so the address is not reused while listed).
    refused: Vec<Weak<dyn Any + Send + Sync>>,
    used: [bool; SLOTS as usize],
}

impl Default for FixedBuffers {
    fn default() -> Self {
        FixedBuffers {
            table: Table::Untried,
            registered: Vec::new(),
            refused: Vec::new(),
            used: [false; SLOTS as usize],
        }
    }
}

fn key_of(owner: &Arc<dyn Any + Send + Sync>) -> *const () {
    Arc::as_ptr(owner).cast()
}

impl FixedBuffers {
    /// The slot that holds `[ptr, ptr + len)` of `region`, registering the region on its
    /// first use; `None` where it cannot be registered or the range crosses a slot.
    pub(crate) fn slot_for(
        &mut self,
        submitter: &io_uring::Submitter<'_>,
        region: &Region<'_>,
        ptr: *const u8,
        len: usize,
    ) -> Option<u16> {
        let found = self
            .registered
            .iter()
            .position(|r| key_of(&r.owner) == region.key);
        let entry = match found {
            Some(i) => &self.registered[i],
            None => self.register(submitter, region)?,
        };
        slot_of(entry.base, entry.size, entry.first_slot, ptr as usize, len)
    }

    fn register(
        &mut self,
        submitter: &io_uring::Submitter<'_>,
        region: &Region<'_>,
    ) -> Option<&Registered> {
        if self
            .refused
            .iter()
            .any(|w| Weak::as_ptr(w).cast::<()>() == region.key)
        {
            return None;
        }
        self.refused.retain(|w| w.strong_count() > 0);
        match self.try_register(submitter, region) {
            Ok(()) => self.registered.last(),
            Err(e) => {
                tracing::warn!(
                    "aio-context: io_uring buffer registration of {} bytes at {:p} refused ({e}); \
                     I/O into it pins its pages per request",
                    region.size,
                    region.base
                );
                self.refused.push(Arc::downgrade(&(region.owner)()));
                None
            }
        }
    }

    fn try_register(
        &mut self,
        submitter: &io_uring::Submitter<'_>,
        region: &Region<'_>,
    ) -> io::Result<()> {
        self.table
            .ensure(|| submitter.register_buffers_sparse(u32::from(SLOTS)))?;
        self.unregister_orphans(submitter);
        if region.size == 0 {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        let slots = region.size.div_ceil(MAX_SLOT_BYTES);
        let first = (0..self.used.len())
            .find(|&i| {
                self.used
                    .get(i..i + slots)
                    .is_some_and(|run| run.iter().all(|u| !u))
            })
            .ok_or_else(|| io::Error::other("the table of registered buffers is full"))?;
        let iovecs: Vec<libc::iovec> = (0..slots)
            .map(|k| {
                let off = k * MAX_SLOT_BYTES;
                libc::iovec {
                    // SAFETY: `off` < `region.size`: inside the region.
                    iov_base: unsafe { region.base.add(off) }.cast(),
                    iov_len: (region.size - off).min(MAX_SLOT_BYTES),
                }
            })
            .collect();
        // SAFETY: the region is mapped while its owner lives (the caller's contract), and
        // the owner is kept below until these slots are emptied again (`unregister_orphans`)
        // or the ring is closed (`Ring`'s fields drop the ring before this table).
        unsafe { submitter.register_buffers_update(first as u32, &iovecs, None) }?;
        self.used[first..first + slots].fill(true);
        self.registered.push(Registered {
            owner: (region.owner)(),
            base: region.base as usize,
            size: region.size,
            first_slot: first as u16,
            slots: slots as u16,
        });
        Ok(())
    }

    /// Empties the slots of regions that nothing but this table holds, and drops them.
    /// An op still in flight on such a slot keeps the pages: the kernel holds its own
    /// reference to a buffer until the ops using it complete.
    fn unregister_orphans(&mut self, submitter: &io_uring::Submitter<'_>) {
        let mut i = 0;
        while i < self.registered.len() {
            let r = &self.registered[i];
            if !r.is_orphan() {
                i += 1;
                continue;
            }
            let (first, n) = (usize::from(r.first_slot), usize::from(r.slots));
            let empty = vec![
                libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                };
                n
            ];
            // SAFETY: empty iovecs register nothing.
            if unsafe { submitter.register_buffers_update(first as u32, &empty, None) }.is_err() {
                // Still registered: keep the owner (and its mapping) rather than unmap
                // memory the kernel may still name.
                i += 1;
                continue;
            }
            self.used[first..first + n].fill(false);
            self.registered.swap_remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{MAX_SLOT_BYTES, slot_of};

    const G: usize = MAX_SLOT_BYTES;

    #[test]
    fn a_range_maps_to_the_slot_of_its_gibibyte() {
        let base = 0x7f00_0000_0000;
        let size = 2 * G + 4096;
        assert_eq!(slot_of(base, size, 5, base, 4096), Some(5));
        assert_eq!(slot_of(base, size, 5, base + G - 4096, 4096), Some(5));
        assert_eq!(slot_of(base, size, 5, base + G, 4096), Some(6));
        assert_eq!(slot_of(base, size, 5, base + 2 * G, 4096), Some(7));
        assert_eq!(
            slot_of(base, size, 5, base + 2 * G, 4097),
            None,
            "past the end"
        );
        assert_eq!(
            slot_of(base, size, 5, base + G - 512, 1024),
            None,
            "across a slot"
        );
        assert_eq!(
            slot_of(base, size, 5, base - 1, 2),
            None,
            "before the start"
        );
        assert_eq!(slot_of(base, size, 5, base, 0), None, "empty");
        assert_eq!(slot_of(base, size, 5, usize::MAX, 2), None, "wraps");
    }
}
