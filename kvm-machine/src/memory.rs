//! Guest RAM from the `ram-block` crate, kept in step with KVM's memory slots, and the
//! BIOS ROM at the top of 4 GiB with its PAM-controlled alias below 1 MiB.

use std::sync::{Arc, Mutex};

use kvm_bindings::{KVM_MEM_READONLY, kvm_userspace_memory_region};
use kvm_ioctls::{Cap, VmFd};
use ram_block::{Backing, RamBlock, RamList};
use vm_memory::{Bytes, GuestAddress, GuestMemoryRegion, MemoryRegionAddress};

use super::layout::{FOUR_GIB, RamLayout};
use super::pam::{self, Pam};
use super::{Error, Result};
use pc_platform::PamListener;

/// Who a KVM slot belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    /// A RAM block of the list, by its guest start (one block may have several slots:
    /// `pc.ram` around the PAM area).
    Block(u64),
    /// The BIOS ROM and the PAM segments: live as long as the VM.
    Firmware,
}

/// One KVM memory slot in use.
///
/// A slot that maps memory holds the block that memory belongs to: the mapping cannot
/// be unmapped while KVM may still reach it, whatever happens to the RAM list (a
/// `remove` or `replace_all` through a clone of it only unlinks the block). The slot,
/// and with it the block, goes only in [`delete_slots`], after KVM has let go.
#[derive(Debug)]
struct Slot {
    id: u32,
    owner: Owner,
    guest: u64,
    /// What the slot maps (`None`: an id reserved for the PAM map, which holds its own).
    memory: Option<Arc<RamBlock>>,
}

/// The guest's memory: the RAM list every thread translates through, and the KVM slots
/// that map it.
///
/// Without a BIOS, each block has one slot. With one ([`load_bios`](Self::load_bios)),
/// `pc.ram` leaves 0xC0000–0xFFFFF to the PAM map ([`pam`](super::pam)), which the host
/// bridge's PAM registers drive; the block itself stays one block in the list.
pub struct GuestRam {
    vm: Arc<VmFd>,
    list: RamList,
    /// The slots in use; guarded so that adds and removes pair slot and block changes.
    slots: Mutex<Vec<Slot>>,
    /// The BIOS image, not in `list`: firmware, not RAM (DMA cannot reach it).
    rom: Option<Arc<RamBlock>>,
    bios: Arc<Vec<u8>>,
    readonly_rom: bool,
    pam: Option<Arc<Pam>>,
}

impl GuestRam {
    /// Creates the RAM blocks of `layout` (memfd-backed, so a vhost-user backend could
    /// map them) and registers them with KVM.
    ///
    /// # Errors
    ///
    /// [`Error::Memory`] if a block cannot be created, [`Error::Kvm`] if KVM refuses a
    /// slot.
    pub fn new(vm: &Arc<VmFd>, layout: RamLayout) -> Result<GuestRam> {
        let ram = GuestRam {
            vm: vm.clone(),
            list: RamList::new(),
            slots: Mutex::new(Vec::new()),
            rom: None,
            bios: Arc::new(Vec::new()),
            readonly_rom: vm.check_extension(Cap::ReadonlyMem),
            pam: None,
        };
        let memfd = || Backing::Memfd { huge_pages: false };
        ram.add_block(RamBlock::new(
            "pc.ram",
            GuestAddress(0),
            layout.below_4g,
            memfd(),
        )?)?;
        if layout.above_4g > 0 {
            let high = RamBlock::new(
                "pc.ram.high",
                GuestAddress(FOUR_GIB),
                layout.above_4g,
                memfd(),
            )?;
            ram.add_block(high)?;
        }
        Ok(ram)
    }

    /// The RAM list (cheap to clone): what devices and loaders use.
    pub fn list(&self) -> &RamList {
        &self.list
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, Vec<Slot>> {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `block` with KVM, then publishes it in the list (hot add).
    ///
    /// # Errors
    ///
    /// KVM's or the list's refusal; on a list error the slot is removed again.
    pub fn add_block(&self, block: RamBlock) -> Result<()> {
        let vm = &*self.vm;
        let mut slots = self.lock_slots();
        let id = free_slot(&slots);
        let start = block.start().0;
        let size = block.size();
        let host = host_address(&block)?;
        // SAFETY: `host..host + size` is the block's mapping, which lives as long as the
        // block: here `block` itself, from `add` on the `Arc` the slot stores, which
        // only `delete_slots` drops, after deleting the slot. If `add` fails, the slot
        // is deleted below before the block drops.
        unsafe { set_region(vm, id, start, size, host, 0) }?;
        let memory = match self.list.add(block) {
            Ok(memory) => memory,
            Err(e) => {
                // SAFETY: deleting a slot (size 0) never gives KVM a mapping.
                let _ = unsafe { set_region(vm, id, start, 0, 0, 0) };
                return Err(e.into());
            }
        };
        slots.push(Slot {
            id,
            owner: Owner::Block(start),
            guest: start,
            memory: Some(memory),
        });
        Ok(())
    }

    /// Deletes the slots of the block at `start`, then removes the block from the list
    /// (it is unmapped after a grace period, and once the PAM map, which holds
    /// `pc.ram`, is gone).
    ///
    /// # Errors
    ///
    /// [`Error::Memory`] if no block starts there.
    pub fn remove_block(&self, start: u64) -> Result<()> {
        let mut slots = self.lock_slots();
        if !slots.iter().any(|s| s.owner == Owner::Block(start)) {
            return Err(ram_block::Error::NoSuchBlock { start }.into());
        }
        delete_slots(&self.vm, &mut slots, Owner::Block(start))?;
        self.list.remove(GuestAddress(start))?;
        Ok(())
    }

    /// Maps `bios` read-only at the top of 4 GiB (writes exit as MMIO and are dropped,
    /// where KVM supports read-only slots; else writable, restored on reset), takes
    /// 0xC0000–0xFFFFF out of `pc.ram`'s slots and hands it to the PAM map in its
    /// power-on state: the last 128 KiB of the image at 0xE0000–0xFFFFF (read-only),
    /// nothing at 0xC0000–0xDFFFF. SeaBIOS makes the area RAM through the PAM registers
    /// and copies itself there, as on QEMU; the RAM below starts out zeroed.
    ///
    /// # Errors
    ///
    /// [`Error::Bios`] if the image is empty, not a multiple of 4 KiB or over 16 MiB;
    /// [`Error::Kvm`] if KVM refuses a slot.
    pub fn load_bios(&mut self, vm: &Arc<VmFd>, bios: Vec<u8>) -> Result<()> {
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
        let rom = Arc::new(rom);
        let host = host_address(&rom)?;
        let flags = if self.readonly_rom {
            KVM_MEM_READONLY
        } else {
            0
        };
        let mut slots = self.lock_slots();
        let id = free_slot(&slots);
        // SAFETY: the mapping belongs to `rom`, which the slot holds until it is
        // deleted.
        unsafe { set_region(vm, id, start, size, host, flags) }?;
        slots.push(Slot {
            id,
            owner: Owner::Firmware,
            guest: start,
            memory: Some(rom.clone()),
        });

        // `pc.ram`: one slot from 0 becomes the slots around the PAM area.
        let ram = {
            let guard = rcu::read();
            self.list.blocks(&guard).find_shared(GuestAddress(0))
        };
        let ram = ram.ok_or_else(|| Error::Bios("no RAM at guest address 0".into()))?;
        let ram_host = host_address(&ram)?;
        delete_slots(vm, &mut slots, Owner::Block(0))?;
        for (guest, len) in pam::ram_slots(ram.size()) {
            let id = free_slot(&slots);
            // SAFETY: `guest..guest + len` lies inside `pc.ram` (`ram_slots` stays below
            // its size), whose block the slot holds until it is deleted.
            unsafe { set_region(vm, id, guest, len, ram_host + guest, 0) }?;
            slots.push(Slot {
                id,
                owner: Owner::Block(0),
                guest,
                memory: Some(ram.clone()),
            });
        }

        // The PAM segments: ids reserved for the VM's life, mapped per their mode.
        let mut ids = [0; pam::SEGMENTS];
        for id in &mut ids {
            *id = free_slot(&slots);
            slots.push(Slot {
                id: *id,
                owner: Owner::Firmware,
                guest: 0,
                memory: None,
            });
        }
        drop(slots);
        let map = Pam::new(vm.clone(), ram, rom.clone(), self.readonly_rom, ids)?;
        self.pam = Some(Arc::new(map));
        self.rom = Some(rom);
        self.bios = Arc::new(bios);
        Ok(())
    }

    /// The PAM map, for the host bridge's PAM registers; `None` without a BIOS (RAM
    /// everywhere below 1 MiB, as a directly booted kernel expects).
    pub fn pam(&self) -> Option<Arc<dyn PamListener>> {
        self.pam.clone().map(|p| p as Arc<dyn PamListener>)
    }

    /// A closure that rewrites the BIOS image into the ROM, for the reset path: `None`
    /// without a BIOS, or where the ROM is read-only to the guest (KVM's read-only
    /// slots) and so never changes.
    pub fn rom_restorer(&self) -> Option<Box<dyn Fn() -> Result<()> + Send + Sync>> {
        let rom = self.rom.clone().filter(|_| !self.readonly_rom)?;
        let bios = self.bios.clone();
        Some(Box::new(move || {
            rom.write_slice(&bios, MemoryRegionAddress(0))
                .map_err(|e| Error::Bios(e.to_string()))
        }))
    }
}

/// Deletes the KVM slots of `owner` and forgets them, dropping their hold on the
/// memory only after KVM has let go (a slot KVM refuses to delete stays listed, and
/// keeps its memory).
fn delete_slots(vm: &VmFd, slots: &mut Vec<Slot>, owner: Owner) -> Result<()> {
    while let Some(at) = slots.iter().position(|s| s.owner == owner) {
        let (id, guest) = (slots[at].id, slots[at].guest);
        // SAFETY: deleting a slot hands KVM no memory; the guest can no longer reach
        // that range through KVM once this returns.
        unsafe { set_region(vm, id, guest, 0, 0, 0) }?;
        drop(slots.remove(at));
    }
    Ok(())
}

impl Drop for GuestRam {
    /// Deletes the slots that map memory before that memory can go: a `GuestRam`
    /// dropped before its VM leaves KVM nothing that points at unmapped memory. A slot
    /// KVM refuses to delete keeps its block mapped (leaked) rather than dangle.
    fn drop(&mut self) {
        let slots = std::mem::take(&mut *self.lock_slots());
        for slot in slots {
            if slot.memory.is_none() {
                continue; // the PAM map's ids: it deletes its own slots
            }
            // SAFETY: deleting a slot hands KVM no memory.
            if unsafe { set_region(&self.vm, slot.id, slot.guest, 0, 0, 0) }.is_err() {
                std::mem::forget(slot.memory);
            }
        }
    }
}

/// The lowest slot id `slots` does not use.
fn free_slot(slots: &[Slot]) -> u32 {
    (0..)
        .find(|id| slots.iter().all(|s| s.id != *id))
        .unwrap_or(0)
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
pub(super) unsafe fn set_region(
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

    use super::*;

    /// Issue 15: a KVM slot's memory outlives its registration by type. Removing the
    /// block through a clone of the RAM list (which anyone holding the list can do) and
    /// waiting for every deferred unmap leaves the block mapped while its slot exists;
    /// it goes once the slot does.
    #[test]
    fn a_slot_keeps_its_memory_mapped_whatever_happens_to_the_list() {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("SKIPPED memory slot ownership: /dev/kvm unavailable");
            return;
        };
        let vm = Arc::new(kvm.create_vm().expect("KVM_CREATE_VM"));
        let ram = GuestRam::new(&vm, RamLayout::new(16 << 20)).expect("guest RAM");
        let block: Weak<RamBlock> = {
            let guard = rcu::read();
            let found = ram.list().blocks(&guard).find_shared(GuestAddress(0));
            Arc::downgrade(&found.expect("pc.ram"))
        };
        let someone_else = ram.list().clone();
        someone_else.remove(GuestAddress(0)).unwrap();
        rcu::barrier(); // every deferred drop (the list's references) has run
        assert!(
            block.upgrade().is_some(),
            "pc.ram was unmapped while its KVM slot still pointed at it"
        );
        drop(ram);
        rcu::barrier();
        assert!(
            block.upgrade().is_none(),
            "the slot's hold was never released"
        );
    }
}
