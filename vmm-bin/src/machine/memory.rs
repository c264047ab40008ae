//! Guest RAM from the `ram-block` crate, kept in step with KVM's memory slots, and the
//! BIOS ROM at the top of 4 GiB.

use std::sync::{Arc, Mutex};

use kvm_bindings::{KVM_MEM_READONLY, kvm_userspace_memory_region};
use kvm_ioctls::{Cap, VmFd};
use ram_block::{Backing, RamBlock, RamList};
use vm_memory::{Bytes, GuestAddress, GuestMemoryRegion, MemoryRegionAddress};

use super::layout::{FOUR_GIB, ISA_BIOS_END, ISA_BIOS_MAX, RamLayout};
use super::{Error, Result};

/// The guest's memory: the RAM list every thread translates through, and the KVM slot
/// of each block.
pub struct GuestRam {
    list: RamList,
    /// `(slot, guest start, size)` of each registered region; guarded so that adds and
    /// removes pair slot and block changes.
    slots: Mutex<Vec<(u32, u64, u64)>>,
    /// The BIOS image, not in `list`: firmware, not RAM (DMA cannot reach it).
    rom: Option<Arc<RamBlock>>,
    bios: Arc<Vec<u8>>,
    readonly_rom: bool,
}

impl GuestRam {
    /// Creates the RAM blocks of `layout` (memfd-backed, so a vhost-user backend could
    /// map them) and registers them with KVM.
    ///
    /// # Errors
    ///
    /// [`Error::Memory`] if a block cannot be created, [`Error::Kvm`] if KVM refuses a
    /// slot.
    pub fn new(vm: &VmFd, layout: RamLayout) -> Result<GuestRam> {
        let ram = GuestRam {
            list: RamList::new(),
            slots: Mutex::new(Vec::new()),
            rom: None,
            bios: Arc::new(Vec::new()),
            readonly_rom: vm.check_extension(Cap::ReadonlyMem),
        };
        let memfd = || Backing::Memfd { huge_pages: false };
        ram.add_block(
            vm,
            RamBlock::new("pc.ram", GuestAddress(0), layout.below_4g, memfd())?,
        )?;
        if layout.above_4g > 0 {
            let high = RamBlock::new(
                "pc.ram.high",
                GuestAddress(FOUR_GIB),
                layout.above_4g,
                memfd(),
            )?;
            ram.add_block(vm, high)?;
        }
        Ok(ram)
    }

    /// The RAM list (cheap to clone): what devices and loaders use.
    pub fn list(&self) -> &RamList {
        &self.list
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, Vec<(u32, u64, u64)>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `block` with KVM, then publishes it in the list (hot add).
    ///
    /// # Errors
    ///
    /// KVM's or the list's refusal; on a list error the slot is removed again.
    pub fn add_block(&self, vm: &VmFd, block: RamBlock) -> Result<()> {
        let mut slots = self.lock_slots();
        let slot = (0..)
            .find(|s| slots.iter().all(|(used, ..)| used != s))
            .unwrap_or(0);
        let start = block.start().0;
        let size = block.size();
        let host = host_address(&block)?;
        // SAFETY: `host..host + size` is the block's mapping, which lives as long as the
        // block. The block is owned by the RAM list from here on, and the list unmaps a
        // block only after `remove_block` has deleted this slot first (and a grace
        // period); if `add` fails below, the slot is deleted before the block drops.
        unsafe { set_region(vm, slot, start, size, host, 0) }?;
        if let Err(e) = self.list.add(block) {
            // SAFETY: deleting a slot (size 0) never gives KVM a mapping.
            let _ = unsafe { set_region(vm, slot, start, 0, 0, 0) };
            return Err(e.into());
        }
        slots.push((slot, start, size));
        Ok(())
    }

    /// Deletes the slot of the block at `start`, then removes the block from the list
    /// (it is unmapped after a grace period).
    ///
    /// # Errors
    ///
    /// [`Error::Memory`] if no block starts there.
    pub fn remove_block(&self, vm: &VmFd, start: u64) -> Result<()> {
        let mut slots = self.lock_slots();
        let Some(at) = slots.iter().position(|(_, s, _)| *s == start) else {
            return Err(ram_block::Error::NoSuchBlock { start }.into());
        };
        let (slot, ..) = slots.remove(at);
        // SAFETY: deleting a slot hands KVM no memory; the guest can no longer reach
        // the block through KVM once this returns.
        unsafe { set_region(vm, slot, start, 0, 0, 0) }?;
        self.list.remove(GuestAddress(start))?;
        Ok(())
    }

    /// Maps `bios` read-only at the top of 4 GiB (writes exit as MMIO and are dropped,
    /// where KVM supports read-only slots; else writable, restored on reset) and copies
    /// its last 128 KiB below 1 MiB.
    ///
    /// # Errors
    ///
    /// [`Error::Bios`] if the image is empty, not a multiple of 4 KiB or over 16 MiB.
    pub fn load_bios(&mut self, vm: &VmFd, bios: Vec<u8>) -> Result<()> {
        let size = bios.len() as u64;
        if size == 0 || size % 4096 != 0 || size > 16 << 20 {
            return Err(Error::Bios(format!(
                "image of {size} bytes: must be a non-empty multiple of 4 KiB, at most 16 MiB"
            )));
        }
        let start = FOUR_GIB - size;
        let rom = RamBlock::new(
            "pc.bios",
            GuestAddress(start),
            size,
            Backing::Anonymous { huge_pages: false },
        )?;
        rom.write_slice(&bios, MemoryRegionAddress(0))
            .map_err(|e| Error::Bios(e.to_string()))?;
        let host = host_address(&rom)?;
        let flags = if self.readonly_rom {
            KVM_MEM_READONLY
        } else {
            0
        };
        let mut slots = self.lock_slots();
        let slot = (0..)
            .find(|s| slots.iter().all(|(used, ..)| used != s))
            .unwrap_or(0);
        // SAFETY: the mapping belongs to `rom`, which `self` keeps for as long as the VM
        // exists (it is never replaced: `load_bios` runs once, before the vCPUs).
        unsafe { set_region(vm, slot, start, size, host, flags) }?;
        slots.push((slot, start, size));
        drop(slots);
        self.rom = Some(Arc::new(rom));
        self.bios = Arc::new(bios);
        self.restore_bios_shadow()
    }

    /// A closure that does [`restore_bios_shadow`](Self::restore_bios_shadow), for the
    /// reset path; `None` without a BIOS.
    pub fn bios_shadow(&self) -> Option<Box<dyn Fn() -> Result<()> + Send + Sync>> {
        if self.bios.is_empty() {
            return None;
        }
        let list = self.list.clone();
        let bios = self.bios.clone();
        let rom = self.rom.clone().filter(|_| !self.readonly_rom);
        Some(Box::new(move || restore(&list, &bios, rom.as_deref())))
    }

    /// Copies the BIOS's last 128 KiB to the area below 1 MiB again (and the ROM, if
    /// the guest could write it): the power-on contents SeaBIOS expects after a reset.
    ///
    /// # Errors
    ///
    /// [`Error::Bios`] if low RAM does not cover the shadow area.
    pub fn restore_bios_shadow(&self) -> Result<()> {
        let rom = self.rom.as_deref().filter(|_| !self.readonly_rom);
        restore(&self.list, &self.bios, rom)
    }
}

/// Copies `bios`'s last 128 KiB below 1 MiB, and all of it into `rom` if given.
fn restore(list: &RamList, bios: &[u8], rom: Option<&RamBlock>) -> Result<()> {
    if bios.is_empty() {
        return Ok(());
    }
    let isa = (bios.len() as u64).min(ISA_BIOS_MAX) as usize;
    let tail = &bios[bios.len() - isa..];
    let mem = list.memory();
    mem.write_slice(tail, GuestAddress(ISA_BIOS_END - isa as u64))
        .map_err(|e| Error::Bios(format!("low RAM too small for the BIOS: {e}")))?;
    if let Some(rom) = rom {
        rom.write_slice(bios, MemoryRegionAddress(0))
            .map_err(|e| Error::Bios(e.to_string()))?;
    }
    Ok(())
}

fn host_address(block: &RamBlock) -> Result<u64> {
    block
        .get_host_address(MemoryRegionAddress(0))
        .map(|p| p as u64)
        .map_err(|e| Error::Bios(format!("no host mapping for {}: {e}", block.name())))
}

/// `KVM_SET_USER_MEMORY_REGION`.
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
