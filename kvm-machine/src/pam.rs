//! The i440FX's Programmable Attribute Map (PAM): what backs the BIOS shadow area
//! 0xC0000–0xFFFFF, segment by segment, as QEMU's `hw/pci-host/pam.c` models it.
//!
//! Seven registers of the host bridge (config 0x59..=0x5F) hold thirteen 2-bit fields:
//! PAM0's high nibble for 0xF0000–0xFFFFF (64 KiB), then PAM1..PAM6, low nibble first,
//! for twelve 16 KiB segments from 0xC0000 to 0xEFFFF. Bit 0 of a field enables reads
//! from RAM, bit 1 writes to RAM ([`Mode`]). As in QEMU, a segment is either RAM
//! (mode 3: read/write; mode 1: read-only, writes dropped) or the PCI address space
//! (modes 0 and 2): there, 0xE0000–0xFFFFF is the `isa-bios` ROM, a read-only alias of
//! the last 128 KiB of the BIOS image, and 0xC0000–0xDFFFF is empty (reads 0xFF, writes
//! dropped; QEMU has its zero-filled `pc.rom` there, which only `-option-rom` fills).
//!
//! Power-on and reset (issue 20): the shadow RAM 0xC0000–0xFFFFF already holds the
//! BIOS (the image's last 256 KiB, ending at 1 MiB; zeros below a smaller image) and
//! PAM0 is 0x10, the F segment reading that RAM (mode 1); every other field is 0. The
//! CPU runs SeaBIOS from it; SeaBIOS makes the area RAM (read/write,
//! `make_bios_writable`), sees the RAM present (PAM0's read-enable bit) and so does not
//! copy itself from the flash at 0xFFF00000, and write-protects 0xF0000 again before
//! booting (`make_bios_readonly`). The RAM then holds what the copy would have left
//! (SeaBIOS copies its 32-bit code, which starts above the image's leading zeros), one
//! emulated `rep movsb` of about 180 KiB fewer: 0.1 s of the 0.8 s to SeaBIOS's first
//! byte on a KVM that emulates real and protected mode instruction by instruction.
//! On the chipset and on QEMU every field is 0 at power-on and SeaBIOS copies.
//!
//! The machine realizes the map with KVM memory slots ([`Pam`]): `pc.ram`'s slots leave
//! a hole at 0xC0000–0xFFFFF ([`ram_slots`]) and each segment has its own slot whose
//! backing and flags follow its mode ([`Backing::plan`]). A read-only slot (ROM, mode 1)
//! turns writes into MMIO exits that the vCPU drops, because nothing is mapped there on
//! the MMIO bus; a segment with no slot reads 0xFF the same way. Without
//! `KVM_CAP_READONLY_MEM` read-only slots cannot be had: mode 1 then stays writable and
//! the ROM alias writes through to the ROM image (restored on reset), as the high ROM
//! mapping already does on such hosts.
//!
//! Where this differs from QEMU under KVM (checked with QEMU 10.0.2 and
//! `tests/bootsector/pamtest.S`): PAM0 reads 0x10 at power-on (above), 0 there. QEMU's
//! mode-1 alias gets a writable KVM slot (its
//! read-only flag lives on the alias, and KVM slots take the flags of the RAM region
//! behind it), so there the F segment stays writable after SeaBIOS locks it; we write-
//! protect it as the chipset and QEMU's TCG do. And 0xC0000–0xDFFFF reads 0xFF here,
//! zeros (`pc.rom`) there.
//!
//! Guest input: config writes to the seven registers, any value; every value decodes
//! to one of four modes per segment, and a mapping the segment cannot have (RAM that
//! is not there with tiny `-m`, a BIOS shorter than 128 KiB) is clipped to what exists.

use std::sync::{Arc, Mutex};

use kvm_ioctls::VmFd;
use ram_block::RamBlock;
use vm_memory::Bytes;

use super::Result;
use super::layout::{ISA_BIOS_END, ISA_BIOS_MAX};
use super::slot::MemorySlot;
use pc_platform::PamListener;

/// Config offset of PAM0 in the i440FX host bridge (00:00.0).
pub const PAM0: usize = 0x59;
/// Number of PAM registers (0x59..=0x5F).
pub const PAM_REGISTERS: usize = 7;
/// Number of PAM segments.
pub const SEGMENTS: usize = 13;
/// Start of the area the PAM registers control.
pub const SHADOW_START: u64 = 0xc_0000;
/// End (exclusive) of that area: 1 MiB.
pub const SHADOW_END: u64 = ISA_BIOS_END;

/// The values of the PAM registers, PAM0 first.
pub type PamRegisters = [u8; PAM_REGISTERS];

/// The registers at power-on and reset: the F segment reads the shadow RAM, which
/// [`Pam::preload`] has filled with the BIOS; the rest is the PCI space.
pub const POWER_ON: PamRegisters = [0x10, 0, 0, 0, 0, 0, 0];

/// One PAM segment: a guest range and the 2-bit field that controls it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical start.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// Which register (0 = PAM0 at 0x59) holds its field.
    pub register: usize,
    /// Bit position of the field in that register (0 or 4).
    pub shift: u32,
}

impl Segment {
    /// Segment `index` (0..13): 0 is 0xF0000–0xFFFFF, 1..=12 are the 16 KiB segments
    /// from 0xC0000 up (QEMU's `pam_regions[]` order).
    ///
    /// # Panics
    ///
    /// If `index >= SEGMENTS`.
    pub const fn new(index: usize) -> Segment {
        assert!(index < SEGMENTS, "PAM segment index out of range");
        if index == 0 {
            return Segment {
                start: 0xf_0000,
                size: 0x1_0000,
                register: 0,
                shift: 4,
            };
        }
        let i = index - 1;
        Segment {
            start: SHADOW_START + i as u64 * 0x4000,
            size: 0x4000,
            register: 1 + i / 2,
            shift: (i as u32 % 2) * 4,
        }
    }

    /// All thirteen segments, in index order.
    pub fn all() -> [Segment; SEGMENTS] {
        std::array::from_fn(Segment::new)
    }

    /// The segment's mode in `registers`.
    pub fn mode(&self, registers: &PamRegisters) -> Mode {
        Mode::from_bits(registers[self.register] >> self.shift)
    }

    /// The guest range, as `start..end`.
    pub fn range(&self) -> std::ops::Range<u64> {
        self.start..self.start + self.size
    }
}

/// A segment's 2-bit attribute field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// 0: reads and writes go to the PCI address space (the ROM alias, or nothing).
    Pci = 0,
    /// 1: reads from RAM, writes dropped (QEMU: "not quite correct", writes should go
    /// to PCI; nothing decodes there).
    ReadOnly = 1,
    /// 2: reads from PCI, writes to RAM; QEMU maps it as mode 0, and so do we.
    WriteOnly = 2,
    /// 3: RAM, read/write.
    ReadWrite = 3,
}

impl Mode {
    /// The mode in the low two bits of `bits`.
    pub fn from_bits(bits: u8) -> Mode {
        match bits & 3 {
            0 => Mode::Pci,
            1 => Mode::ReadOnly,
            2 => Mode::WriteOnly,
            _ => Mode::ReadWrite,
        }
    }
}

/// What a segment's slot maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// `pc.ram`, at `offset` bytes into the block.
    Ram {
        /// Offset into `pc.ram` (equal to the guest address: the block starts at 0).
        offset: u64,
    },
    /// The BIOS image (`pc.bios`), at `offset` bytes into it.
    Rom {
        /// Offset into the image.
        offset: u64,
    },
}

/// One KVM slot a segment gets in some mode: `guest..guest + size` maps `source`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotPlan {
    /// Guest-physical start (the segment's start, unless clipped).
    pub guest: u64,
    /// Length.
    pub size: u64,
    /// The memory behind it.
    pub source: Source,
    /// Whether the slot is `KVM_MEM_READONLY`.
    pub readonly: bool,
}

/// The memory around the shadow area that segments can map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backing {
    /// Size of `pc.ram` (RAM below 4 GiB, from guest address 0).
    pub ram_size: u64,
    /// Size of the BIOS image (mapped at the top of 4 GiB).
    pub bios_size: u64,
    /// Whether KVM has read-only slots (`KVM_CAP_READONLY_MEM`).
    pub readonly_mem: bool,
}

impl Backing {
    /// Where the `isa-bios` ROM alias sits below 1 MiB: the last `min(bios, 128 KiB)`
    /// bytes of the image, ending at 1 MiB (QEMU's `x86_isa_bios_init`).
    pub fn isa_bios(&self) -> std::ops::Range<u64> {
        let size = self.bios_size.min(ISA_BIOS_MAX);
        ISA_BIOS_END - size..ISA_BIOS_END
    }

    /// The slot `segment` gets in `mode`, or `None` where nothing backs it (0xC0000 to
    /// 0xDFFFF in the PCI modes, or no RAM there). A plan is clipped to the memory that
    /// exists (RAM below `ram_size`, the image's part of the ROM alias).
    pub fn plan(&self, segment: Segment, mode: Mode) -> Option<SlotPlan> {
        let (range, readonly) = match mode {
            Mode::ReadWrite => (0..self.ram_size, false),
            Mode::ReadOnly => (0..self.ram_size, self.readonly_mem),
            Mode::Pci | Mode::WriteOnly => (self.isa_bios(), self.readonly_mem),
        };
        let start = segment.start.max(range.start);
        let end = (segment.start + segment.size).min(range.end);
        if start >= end {
            return None;
        }
        let source = match mode {
            Mode::ReadWrite | Mode::ReadOnly => Source::Ram { offset: start },
            Mode::Pci | Mode::WriteOnly => Source::Rom {
                offset: self.bios_size - (ISA_BIOS_END - start),
            },
        };
        Some(SlotPlan {
            guest: start,
            size: end - start,
            source,
            readonly,
        })
    }

    /// The slot of every segment under `registers`.
    pub fn plan_all(&self, registers: &PamRegisters) -> [Option<SlotPlan>; SEGMENTS] {
        Segment::all().map(|s| self.plan(s, s.mode(registers)))
    }
}

/// The ranges (`start`, `size`) of `pc.ram` of `ram_size` bytes that keep plain
/// read/write slots when a BIOS is loaded: everything but the shadow area.
pub fn ram_slots(ram_size: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::with_capacity(2);
    let low = ram_size.min(SHADOW_START);
    if low > 0 {
        out.push((0, low));
    }
    if ram_size > SHADOW_END {
        out.push((SHADOW_END, ram_size - SHADOW_END));
    }
    out
}

/// The live map: one KVM slot id per segment, re-pointed as the guest writes the PAM
/// registers. Shared by the host bridge (config writes from vCPU threads, reset).
pub struct Pam {
    vm: Arc<VmFd>,
    /// `pc.ram` and the BIOS image, what the segments' slots map (each slot holds its
    /// own `Arc` of the block it maps, for as long as it is registered).
    ram: Arc<RamBlock>,
    rom: Arc<RamBlock>,
    backing: Backing,
    /// The BIOS image, copied into the shadow RAM at power-on and reset.
    image: Arc<Vec<u8>>,
    /// The KVM slot id reserved for each segment.
    ids: [u32; SEGMENTS],
    /// What each segment's slot maps now (`None`: no slot). Also serializes updates.
    current: Mutex<[Option<(SlotPlan, MemorySlot)>; SEGMENTS]>,
}

impl Pam {
    /// A map over `ram` (`pc.ram`, from guest 0) and `rom` (the BIOS `image`'s block)
    /// using the reserved slot ids `ids`, in the power-on state: the shadow RAM
    /// preloaded ([`preload`](Self::preload)), the registers [`POWER_ON`].
    ///
    /// # Errors
    ///
    /// KVM refusing a slot.
    pub(super) fn new(
        vm: Arc<VmFd>,
        ram: Arc<RamBlock>,
        (rom, image): (Arc<RamBlock>, Arc<Vec<u8>>),
        readonly_mem: bool,
        ids: [u32; SEGMENTS],
    ) -> Result<Pam> {
        let backing = Backing {
            ram_size: ram.size(),
            bios_size: rom.size(),
            readonly_mem,
        };
        let pam = Pam {
            vm,
            ram,
            rom,
            backing,
            image,
            ids,
            current: Mutex::new(std::array::from_fn(|_| None)),
        };
        pam.preload()?;
        pam.apply(&POWER_ON)?;
        Ok(pam)
    }

    /// Fills the shadow RAM (0xC0000–0xFFFFF, what of it `pc.ram` has) with the BIOS
    /// as SeaBIOS's own copy would: the image's last 256 KiB ending at 1 MiB, zeros
    /// below a smaller image. The machine's power-on and reset (vCPUs paused).
    ///
    /// # Errors
    ///
    /// [`super::Error::Rom`] if the RAM block refuses the write (it cannot: the range
    /// is clipped to the block).
    pub fn preload(&self) -> Result<()> {
        let area = (SHADOW_END - SHADOW_START) as usize;
        let mut shadow = vec![0u8; area];
        let tail = &self.image[self.image.len().saturating_sub(area)..];
        shadow[area - tail.len()..].copy_from_slice(tail);
        let end = SHADOW_END.min(self.ram.size());
        if end <= SHADOW_START {
            return Ok(());
        }
        let shadow = &shadow[..(end - SHADOW_START) as usize];
        self.ram
            .write_slice(shadow, vm_memory::MemoryRegionAddress(SHADOW_START))
            .map_err(super::Error::Rom)
    }

    /// What backs the map.
    pub fn backing(&self) -> Backing {
        self.backing
    }

    /// Re-points the slots of the segments whose mapping `registers` changes. A
    /// segment's slot is deleted and created again (KVM cannot change a slot's backing
    /// or its read-only flag in place); a vCPU touching that segment in between sees an
    /// MMIO exit (reads 0xFF), as on QEMU, whose memory listener does the same.
    ///
    /// # Errors
    ///
    /// KVM refusing a slot: that segment is left unmapped, the rest still updated.
    pub fn apply(&self, registers: &PamRegisters) -> Result<()> {
        let wanted = self.backing.plan_all(registers);
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut result = Ok(());
        for (index, want) in wanted.into_iter().enumerate() {
            let slot = &mut current[index];
            if slot.as_ref().map(|(plan, _)| *plan) == want {
                continue;
            }
            if let Some((old, mapping)) = slot.take() {
                if let Err((mapping, e)) = mapping.delete() {
                    // The old mapping stays; remember it so that a later write retries.
                    *slot = Some((old, mapping));
                    result = result.and(Err(e));
                    continue;
                }
            }
            let Some(plan) = want else { continue };
            let (block, offset) = match plan.source {
                Source::Ram { offset } => (&self.ram, offset),
                Source::Rom { offset } => (&self.rom, offset),
            };
            // `Backing::plan` clips the plan to these two blocks' sizes; the id is
            // reserved for this segment and only this function re-points it, always
            // deleting the old slot first.
            let id = self.ids[index];
            let (guest, size, readonly) = (plan.guest, plan.size, plan.readonly);
            match MemorySlot::map(&self.vm, id, guest, block.clone(), offset, size, readonly) {
                Ok(mapping) => *slot = Some((plan, mapping)),
                Err(e) => result = result.and(Err(e)),
            }
        }
        result
    }
}

impl PamListener for Pam {
    fn pam_changed(&self, registers: &PamRegisters) {
        if let Err(e) = self.apply(registers) {
            tracing::error!("PAM {registers:02x?}: {e}");
        }
    }
    fn power_on(&self) -> PamRegisters {
        POWER_ON
    }
}

impl std::fmt::Debug for Pam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pam")
            .field("backing", &self.backing)
            .field("ids", &self.ids)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn backing(ram_size: u64, bios_size: u64) -> Backing {
        Backing {
            ram_size,
            bios_size,
            readonly_mem: true,
        }
    }

    #[test]
    fn segments_cover_the_shadow_area_as_qemu_numbers_them() {
        let all = Segment::all();
        assert_eq!(
            all[0],
            Segment {
                start: 0xf_0000,
                size: 0x1_0000,
                register: 0,
                shift: 4
            }
        );
        // PAM1 low nibble: 0xC0000, high nibble: 0xC4000; PAM6 high nibble: 0xEC000.
        assert_eq!(
            (all[1].start, all[1].register, all[1].shift),
            (0xc_0000, 1, 0)
        );
        assert_eq!(
            (all[2].start, all[2].register, all[2].shift),
            (0xc_4000, 1, 4)
        );
        assert_eq!(
            (all[12].start, all[12].register, all[12].shift),
            (0xe_c000, 6, 4)
        );
        // Together they tile 0xC0000..0x100000 without gaps or overlaps.
        let mut ranges: Vec<_> = all.iter().map(Segment::range).collect();
        ranges.sort_by_key(|r| r.start);
        assert_eq!(ranges[0].start, SHADOW_START);
        for pair in ranges.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        assert_eq!(ranges[SEGMENTS - 1].end, SHADOW_END);
    }

    #[test]
    fn modes_decode_from_the_right_nibble() {
        // SeaBIOS's make_bios_writable: PAM0 = 0x30, PAM1..6 = 0x33.
        let writable = [0x30, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33];
        assert!(
            Segment::all()
                .iter()
                .all(|s| s.mode(&writable) == Mode::ReadWrite)
        );
        // PAM0's low nibble controls nothing.
        let regs = [0x0f, 0x21, 0, 0, 0, 0, 0x10];
        let s = Segment::all();
        assert_eq!(s[0].mode(&regs), Mode::Pci);
        assert_eq!(s[1].mode(&regs), Mode::ReadOnly);
        assert_eq!(s[2].mode(&regs), Mode::WriteOnly);
        assert_eq!(s[11].mode(&regs), Mode::Pci);
        assert_eq!(s[12].mode(&regs), Mode::ReadOnly);
        // Reserved bits above the two mode bits are ignored.
        assert_eq!(Mode::from_bits(0xff), Mode::ReadWrite);
    }

    #[test]
    fn power_on_maps_the_rom_alias_at_e_and_f_and_nothing_below() {
        let b = backing(128 * MIB, 256 << 10);
        let plan = b.plan_all(&[0; PAM_REGISTERS]);
        assert_eq!(
            plan[0],
            Some(SlotPlan {
                guest: 0xf_0000,
                size: 0x1_0000,
                // The last 64 KiB of the 256 KiB image.
                source: Source::Rom { offset: 0x3_0000 },
                readonly: true,
            })
        );
        assert_eq!(
            plan[9],
            Some(SlotPlan {
                guest: 0xe_0000,
                size: 0x4000,
                source: Source::Rom { offset: 0x2_0000 },
                readonly: true,
            })
        );
        for (index, slot) in plan.iter().enumerate().take(9).skip(1) {
            assert_eq!(*slot, None, "segment {index} (0xC0000-0xDFFFF) is empty");
        }
        // Mode 2 reads the same PCI space.
        assert_eq!(
            b.plan_all(&[0x20, 0x22, 0x22, 0x22, 0x22, 0x22, 0x22]),
            plan
        );
    }

    #[test]
    fn ram_modes_map_pc_ram_at_the_same_offset() {
        let b = backing(128 * MIB, 256 << 10);
        let s = Segment::new(5); // 0xD0000
        let rw = b.plan(s, Mode::ReadWrite).unwrap();
        assert_eq!(
            rw,
            SlotPlan {
                guest: 0xd_0000,
                size: 0x4000,
                source: Source::Ram { offset: 0xd_0000 },
                readonly: false
            }
        );
        let ro = b.plan(s, Mode::ReadOnly).unwrap();
        assert!(ro.readonly);
        assert_eq!(ro.source, rw.source);
        // Without read-only slots, mode 1 (and the ROM) degrade to writable.
        let old_kvm = Backing {
            readonly_mem: false,
            ..b
        };
        assert!(!old_kvm.plan(s, Mode::ReadOnly).unwrap().readonly);
        assert!(!old_kvm.plan(Segment::new(0), Mode::Pci).unwrap().readonly);
    }

    #[test]
    fn plans_are_clipped_to_memory_that_exists() {
        // A 64 KiB BIOS: its alias covers only 0xF0000-0xFFFFF.
        let small = backing(128 * MIB, 64 << 10);
        assert_eq!(small.isa_bios(), 0xf_0000..0x10_0000);
        assert_eq!(small.plan(Segment::new(9), Mode::Pci), None);
        assert_eq!(
            small.plan(Segment::new(0), Mode::Pci).unwrap().source,
            Source::Rom { offset: 0 }
        );
        // An 8 KiB BIOS: only the top 8 KiB of the F segment.
        let tiny = backing(128 * MIB, 8 << 10);
        let p = tiny.plan(Segment::new(0), Mode::Pci).unwrap();
        assert_eq!((p.guest, p.size), (0xf_e000, 0x2000));
        // RAM ending inside the area (-m under 1 MiB would be refused by the CLI, but
        // the plan does not depend on it).
        let low = backing(0xc_6000, 256 << 10);
        assert_eq!(
            low.plan(Segment::new(1), Mode::ReadWrite).unwrap().size,
            0x4000
        );
        assert_eq!(
            low.plan(Segment::new(2), Mode::ReadWrite).unwrap().size,
            0x2000
        );
        assert_eq!(low.plan(Segment::new(3), Mode::ReadWrite), None);
        assert_eq!(low.plan(Segment::new(0), Mode::ReadOnly), None);
    }

    #[test]
    fn pc_ram_keeps_everything_but_the_shadow_area() {
        assert_eq!(
            ram_slots(128 * MIB),
            [(0, 0xc_0000), (0x10_0000, 128 * MIB - 0x10_0000)]
        );
        assert_eq!(ram_slots(MIB), [(0, 0xc_0000)]);
        assert_eq!(ram_slots(0x8_0000), [(0, 0x8_0000)]);
        assert_eq!(ram_slots(0), []);
    }
}
