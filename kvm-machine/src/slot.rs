//! KVM memory slots that own their memory.
//!
//! `KVM_SET_USER_MEMORY_REGION` hands KVM a host address range; KVM (and so the guest)
//! reaches that range until the slot is deleted. Unmapping the range first is a
//! use-after-free in the kernel's eyes and the guest's. A [`MemorySlot`] makes that
//! impossible by type: it is the only way this crate registers memory, it can only be
//! made from an `Arc<RamBlock>` and a range inside that block, it keeps the `Arc` for as
//! long as it exists, and it deletes the registration before it lets the `Arc` go
//! (in [`MemorySlot::delete`] or its `Drop`). Whatever happens to the RAM list (a
//! `remove` or `replace_all` through any clone of it only unlinks the block), a
//! registered range stays mapped. Where KVM refuses to delete a slot, the block is
//! leaked rather than unmapped.
//!
//! See `DESIGN.md` ("Memory slots") for the whole argument.

use std::sync::Arc;

use kvm_bindings::{KVM_MEM_READONLY, kvm_userspace_memory_region};
use kvm_ioctls::VmFd;
use ram_block::RamBlock;

use crate::{Error, Result};

/// One registered KVM memory slot: guest `guest..guest + size` maps `size` bytes of a
/// RAM block from `offset`. Holds the block until the registration is gone.
///
/// Slot ids are the caller's: two live `MemorySlot`s with one id on one VM would
/// re-point (or delete) each other's registration. That costs the guest its memory
/// (MMIO exits), never the host: every registration still points into a block some
/// `MemorySlot` holds.
pub struct MemorySlot {
    /// Declared first: the registration is deleted (in `Drop`) while both are alive.
    vm: Arc<VmFd>,
    id: u32,
    guest: u64,
    size: u64,
    readonly: bool,
    /// Whether KVM still holds the registration (`false` after [`MemorySlot::delete`]).
    registered: bool,
    memory: Arc<RamBlock>,
}

impl MemorySlot {
    /// Registers slot `id`: guest `guest..guest + size` maps `memory` from `offset`,
    /// read-only to the guest if `readonly` (writes then exit as MMIO).
    ///
    /// # Errors
    ///
    /// [`Error::SlotRange`] if the range is empty or leaves the block;
    /// [`Error::Kvm`] if KVM refuses the slot (alignment, overlap, a read-only slot
    /// without `KVM_CAP_READONLY_MEM`).
    pub fn map(
        vm: &Arc<VmFd>,
        id: u32,
        guest: u64,
        memory: Arc<RamBlock>,
        offset: u64,
        size: u64,
        readonly: bool,
    ) -> Result<MemorySlot> {
        let inside = offset
            .checked_add(size)
            .is_some_and(|end| end <= memory.size());
        if size == 0 || !inside {
            return Err(Error::SlotRange {
                block: memory.name().to_string(),
                offset,
                size,
            });
        }
        let host = memory.host_address() as u64 + offset;
        let flags = if readonly { KVM_MEM_READONLY } else { 0 };
        // SAFETY: `host..host + size` lies inside `memory`'s mapping (checked above),
        // which lives as long as the block. The `MemorySlot` built below holds an `Arc`
        // of the block and drops it only after deleting this registration (`delete`,
        // `Drop`), or never, if KVM refuses the deletion: so the range stays mapped for
        // as long as KVM can reach it. On failure nothing was registered.
        unsafe { set_region(vm, id, guest, size, host, flags) }?;
        Ok(MemorySlot {
            vm: vm.clone(),
            id,
            guest,
            size,
            readonly,
            registered: true,
            memory,
        })
    }

    /// Deletes the registration, then lets the block go.
    ///
    /// # Errors
    ///
    /// KVM refusing the deletion: the slot comes back, still registered and still
    /// holding its memory (dropping it tries again, and leaks the block if KVM refuses
    /// again).
    #[allow(clippy::result_large_err)] // the slot itself comes back; it is not large
    pub fn delete(mut self) -> std::result::Result<(), (MemorySlot, Error)> {
        match self.unregister() {
            Ok(()) => {
                self.registered = false;
                Ok(())
            }
            Err(e) => Err((self, e)),
        }
    }

    fn unregister(&self) -> Result<()> {
        // SAFETY: a size of 0 deletes the slot: KVM is handed no memory, and the guest
        // no longer reaches the old range once this returns.
        unsafe { set_region(&self.vm, self.id, self.guest, 0, 0, 0) }
    }

    /// The KVM slot id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The first guest address.
    pub fn guest(&self) -> u64 {
        self.guest
    }

    /// The size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the guest may only read it.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// The block the slot maps (and holds).
    pub fn memory(&self) -> &Arc<RamBlock> {
        &self.memory
    }
}

impl Drop for MemorySlot {
    /// Deletes the registration before the block's `Arc` goes; if KVM refuses, the
    /// block is leaked (kept mapped forever) rather than left for KVM to dangle into.
    fn drop(&mut self) {
        if self.registered && self.unregister().is_err() {
            std::mem::forget(self.memory.clone());
        }
    }
}

impl std::fmt::Debug for MemorySlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySlot")
            .field("id", &self.id)
            .field("guest", &format_args!("{:#x}", self.guest))
            .field("size", &format_args!("{:#x}", self.size))
            .field("readonly", &self.readonly)
            .field("block", &self.memory.name())
            .finish()
    }
}

/// `KVM_SET_USER_MEMORY_REGION`; private to this module, so that [`MemorySlot`] is the
/// only way to reach it.
///
/// # Safety
///
/// `host..host + size` must stay mapped (and not be reused for anything else) until the
/// slot is deleted or changed; `size == 0` deletes the slot.
unsafe fn set_region(
    vm: &VmFd,
    slot: u32,
    start: u64,
    size: u64,
    host: u64,
    flags: u32,
) -> Result<()> {
    let region = kvm_userspace_memory_region {
        slot,
        flags,
        guest_phys_addr: start,
        memory_size: size,
        userspace_addr: host,
    };
    // SAFETY: the caller guarantees the mapping's lifetime.
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| Error::Kvm("KVM_SET_USER_MEMORY_REGION", e))
}

#[cfg(test)]
mod tests {
    use std::sync::Weak;

    use kvm_ioctls::Kvm;
    use ram_block::Backing;
    use vm_memory::GuestAddress;

    use super::*;

    fn vm_or_skip(what: &str) -> Option<Arc<VmFd>> {
        match Kvm::new().and_then(|kvm| kvm.create_vm()) {
            Ok(vm) => Some(Arc::new(vm)),
            Err(e) => {
                eprintln!("SKIPPED memory slot {what}: /dev/kvm unavailable ({e})");
                None
            }
        }
    }

    fn block(size: u64) -> Arc<RamBlock> {
        let anon = Backing::Anonymous { huge_pages: false };
        Arc::new(RamBlock::new("test.ram", GuestAddress(0), size, anon).unwrap())
    }

    /// A slot cannot be made over bytes its block does not have: the range is checked
    /// before KVM sees it.
    #[test]
    fn a_range_outside_the_block_is_refused() {
        let Some(vm) = vm_or_skip("range check") else {
            return;
        };
        let memory = block(64 << 10);
        for (offset, size) in [
            (0, 0),
            (0, 128 << 10),
            (60 << 10, 8 << 10),
            (u64::MAX, 4096),
        ] {
            let err = MemorySlot::map(&vm, 0, 0, memory.clone(), offset, size, false)
                .expect_err("out of range");
            assert!(matches!(err, Error::SlotRange { .. }), "{err}");
        }
    }

    /// The slot is the block's last owner: the block goes when the slot does (after
    /// the registration), and `delete` frees the id for the next slot.
    #[test]
    fn the_block_lives_exactly_as_long_as_its_registration() {
        let Some(vm) = vm_or_skip("ownership") else {
            return;
        };
        let memory = block(64 << 10);
        let weak: Weak<RamBlock> = Arc::downgrade(&memory);
        let slot = MemorySlot::map(&vm, 3, 0x10_0000, memory, 0, 64 << 10, false).unwrap();
        assert!(weak.upgrade().is_some(), "the slot holds its block");
        slot.delete().map_err(|(_, e)| e).unwrap();
        assert!(weak.upgrade().is_none(), "a deleted slot lets its block go");

        let again = block(64 << 10);
        let weak = Arc::downgrade(&again);
        // Another id over the same guest range: KVM refuses overlapping slots, so this
        // only succeeds if `delete` really removed the registration.
        let slot = MemorySlot::map(&vm, 4, 0x10_0000, again, 0, 64 << 10, false)
            .expect("the range is free again after delete");
        drop(slot);
        assert!(weak.upgrade().is_none(), "a dropped slot lets its block go");
        // Dropping deleted the registration too.
        MemorySlot::map(&vm, 5, 0x10_0000, block(64 << 10), 0, 64 << 10, false)
            .expect("the range is free again after drop");
    }
}
