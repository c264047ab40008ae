//! Guest RAM from the `ram-block` crate, kept in step with KVM's memory slots, and the
//! BIOS ROM at the top of 4 GiB with its PAM-controlled alias below 1 MiB.

use std::sync::{Arc, Mutex};

use kvm_ioctls::{Cap, VmFd};
use ram_block::{Backing, RamBlock, RamList};
use vm_memory::{Bytes, GuestAddress, MemoryRegionAddress};

use super::layout::{FOUR_GIB, RamLayout};
use super::pam::{self, Pam};
use super::slot::MemorySlot;
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

/// One KVM memory slot id in use.
///
/// A slot that maps memory is a [`MemorySlot`], which holds the block that memory
/// belongs to: the mapping cannot be unmapped while KVM may still reach it, whatever
/// happens to the RAM list (a `remove` or `replace_all` through a clone of it only
/// unlinks the block).
#[derive(Debug)]
struct Slot {
    id: u32,
    owner: Owner,
    /// What the slot maps (`None`: an id reserved for the PAM map, which holds its own
    /// slots).
    mapping: Option<MemorySlot>,
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

    /// Publishes `block` in the list, then registers it with KVM (hot add).
    ///
    /// # Errors
    ///
    /// The list's or KVM's refusal; on a KVM error the block is unlinked again.
    pub fn add_block(&self, block: RamBlock) -> Result<()> {
        let mut slots = self.lock_slots();
        let id = free_slot(&slots);
        let (start, size) = (block.start().0, block.size());
        let memory = self.list.add(block)?;
        match MemorySlot::map(&self.vm, id, start, memory, 0, size, false) {
            Ok(mapping) => {
                slots.push(Slot {
                    id,
                    owner: Owner::Block(start),
                    mapping: Some(mapping),
                });
                Ok(())
            }
            Err(e) => {
                let _ = self.list.remove(GuestAddress(start));
                Err(e)
            }
        }
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
        delete_slots(&mut slots, Owner::Block(start))?;
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
    /// [`Error::BiosSize`] if the image is empty, not a multiple of 4 KiB or over 16 MiB;
    /// [`Error::Kvm`] if KVM refuses a slot.
    pub fn load_bios(&mut self, vm: &Arc<VmFd>, bios: Vec<u8>) -> Result<()> {
        let size = bios.len() as u64;
        if size == 0 || size % 4096 != 0 || size > 16 << 20 {
            return Err(Error::BiosSize { size });
        }
        let start = FOUR_GIB - size;
        let rom = RamBlock::new(
            "pc.bios",
            GuestAddress(start),
            size,
            Backing::Anonymous { huge_pages: false },
        )?;
        rom.write_slice(&bios, MemoryRegionAddress(0))
            .map_err(Error::Rom)?;
        let rom = Arc::new(rom);
        let mut slots = self.lock_slots();
        let id = free_slot(&slots);
        let mapping = MemorySlot::map(vm, id, start, rom.clone(), 0, size, self.readonly_rom)?;
        slots.push(Slot {
            id,
            owner: Owner::Firmware,
            mapping: Some(mapping),
        });

        // `pc.ram`: one slot from 0 becomes the slots around the PAM area.
        let ram = {
            let guard = rcu::read();
            self.list.blocks(&guard).find_shared(GuestAddress(0))
        };
        let ram = ram.ok_or(Error::NoLowRam)?;
        delete_slots(&mut slots, Owner::Block(0))?;
        for (guest, len) in pam::ram_slots(ram.size()) {
            let id = free_slot(&slots);
            // `pc.ram` starts at guest 0: the offset into the block is the address.
            let mapping = MemorySlot::map(vm, id, guest, ram.clone(), guest, len, false)?;
            slots.push(Slot {
                id,
                owner: Owner::Block(0),
                mapping: Some(mapping),
            });
        }

        // The PAM segments: ids reserved for the VM's life, mapped per their mode.
        let mut ids = [0; pam::SEGMENTS];
        for id in &mut ids {
            *id = free_slot(&slots);
            slots.push(Slot {
                id: *id,
                owner: Owner::Firmware,
                mapping: None,
            });
        }
        drop(slots);
        let bios = Arc::new(bios);
        let map = Pam::new(
            vm.clone(),
            ram,
            (rom.clone(), bios.clone()),
            self.readonly_rom,
            ids,
        )?;
        self.pam = Some(Arc::new(map));
        self.rom = Some(rom);
        self.bios = bios;
        Ok(())
    }

    /// The PAM map, for the host bridge's PAM registers; `None` without a BIOS (RAM
    /// everywhere below 1 MiB, as a directly booted kernel expects).
    pub fn pam(&self) -> Option<Arc<dyn PamListener>> {
        self.pam.clone().map(|p| p as Arc<dyn PamListener>)
    }

    /// A closure that puts the BIOS back for the reset path: the image into the ROM
    /// (where the ROM is writable to the guest, without KVM's read-only slots) and into
    /// the shadow RAM ([`Pam::preload`]); `None` without a BIOS.
    pub fn rom_restorer(&self) -> Option<Box<dyn Fn() -> Result<()> + Send + Sync>> {
        let pam = self.pam.clone()?;
        let rom = self.rom.clone().filter(|_| !self.readonly_rom);
        let bios = self.bios.clone();
        Some(Box::new(move || {
            if let Some(rom) = &rom {
                rom.write_slice(&bios, MemoryRegionAddress(0))
                    .map_err(Error::Rom)?;
            }
            pam.preload()
        }))
    }
}

/// Deletes the KVM slots of `owner` and forgets them; each lets go of its memory only
/// after KVM has (a slot KVM refuses to delete stays listed, and keeps its memory).
fn delete_slots(slots: &mut Vec<Slot>, owner: Owner) -> Result<()> {
    while let Some(at) = slots.iter().position(|s| s.owner == owner) {
        let Slot { id, owner, mapping } = slots.remove(at);
        if let Some(Err((mapping, e))) = mapping.map(MemorySlot::delete) {
            let mapping = Some(mapping);
            slots.insert(at, Slot { id, owner, mapping });
            return Err(e);
        }
    }
    Ok(())
}

/// The lowest slot id `slots` does not use.
fn free_slot(slots: &[Slot]) -> u32 {
    (0..)
        .find(|id| slots.iter().all(|s| s.id != *id))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::sync::Weak;

    use kvm_ioctls::Kvm;

    use super::*;

    /// A VM with `mib` MiB of guest RAM, or `None` (after a SKIPPED line for `what`)
    /// without /dev/kvm.
    fn vm_with_ram(what: &str, mib: u64) -> Option<(Arc<VmFd>, GuestRam)> {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("SKIPPED {what}: /dev/kvm unavailable");
            return None;
        };
        let vm = Arc::new(kvm.create_vm().expect("KVM_CREATE_VM"));
        let ram = GuestRam::new(&vm, RamLayout::new(mib << 20)).expect("guest RAM");
        Some((vm, ram))
    }

    /// `pc.ram`, the block at guest 0.
    fn low_ram(ram: &GuestRam) -> Arc<RamBlock> {
        let guard = rcu::read();
        let found = ram.list().blocks(&guard).find_shared(GuestAddress(0));
        found.expect("pc.ram")
    }

    /// Issue 15: a KVM slot's memory outlives its registration by type. Removing the
    /// block through a clone of the RAM list (which anyone holding the list can do) and
    /// waiting for every deferred unmap leaves the block mapped while its slot exists;
    /// it goes once the slot does.
    #[test]
    fn a_slot_keeps_its_memory_mapped_whatever_happens_to_the_list() {
        let Some((_vm, ram)) = vm_with_ram("memory slot ownership", 16) else {
            return;
        };
        let block: Weak<RamBlock> = Arc::downgrade(&low_ram(&ram));
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

    /// Issue 20: at power-on the shadow RAM holds the BIOS (the image's tail ending at
    /// 1 MiB, zeros below it) and PAM0 says the F segment reads it (0x10), so SeaBIOS
    /// does not copy itself there; a reset puts both back whatever the guest wrote.
    #[test]
    fn the_shadow_ram_holds_the_bios_at_power_on_and_after_reset() {
        let Some((vm, mut ram)) = vm_with_ram("shadow RAM preload", 16) else {
            return;
        };
        // A 128 KiB image: 0xE0000..1 MiB; every byte tells where it is.
        let image: Vec<u8> = (0..128 * 1024u32).map(|i| (i % 251) as u8 + 1).collect();
        ram.load_bios(&vm, image.clone()).expect("BIOS");
        let pam = ram.pam().expect("a PAM map with a BIOS");
        assert_eq!(pam.power_on(), [0x10, 0, 0, 0, 0, 0, 0]);
        let shadow = |ram: &GuestRam| {
            let mut bytes = vec![0u8; 0x40000];
            let block = low_ram(ram);
            block
                .read_slice(&mut bytes, MemoryRegionAddress(0xc_0000))
                .unwrap();
            bytes
        };
        let want: Vec<u8> = vec![0u8; 0x20000].into_iter().chain(image).collect();
        assert!(shadow(&ram) == want, "the shadow RAM is not the BIOS");

        // The guest scribbles over it (SeaBIOS's variables, an option ROM).
        let block = low_ram(&ram);
        for at in [0xc_8000, 0xf_ff00] {
            block
                .write_slice(&[0xcc; 0x100], MemoryRegionAddress(at))
                .unwrap();
        }
        assert!(shadow(&ram) != want);
        let restore = ram.rom_restorer().expect("a restorer with a BIOS");
        restore().expect("reset");
        assert!(shadow(&ram) == want, "reset did not put the BIOS back");
    }
}
