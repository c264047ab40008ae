//! The guest-physical layout of the i440FX PC: RAM below the PCI hole, the rest above
//! 4 GiB, the BIOS at the top of 4 GiB, and the e820 map that describes it.

/// Where low RAM stops at most: the PCI hole starts here (QEMU's i440FX without
/// gigabyte alignment).
pub const PCI_HOLE_START: u64 = 0xe000_0000;
/// 4 GiB.
pub const FOUR_GIB: u64 = 1 << 32;
/// KVM's identity-map page (three pages before it are the TSS): QEMU's placement,
/// reserved in the e820 map.
pub const KVM_IDENTITY_MAP: u64 = 0xfeff_c000;
/// KVM's TSS (three pages).
pub const KVM_TSS: u64 = 0xfeff_d000;
/// The reserved range around them.
pub const KVM_RESERVED: (u64, u64) = (0xfeff_c000, 0x4000);
/// End of the legacy BIOS area below 1 MiB, where the `isa-bios` alias of the BIOS
/// image's last 128 KiB ends.
pub const ISA_BIOS_END: u64 = 0x10_0000;
/// Most of the BIOS image that is mirrored below 1 MiB.
pub const ISA_BIOS_MAX: u64 = 128 << 10;
/// Start of the EBDA (the end of conventional RAM in the e820 map given to Linux).
pub const EBDA_START: u64 = 0x9_fc00;

/// An e820 entry type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum E820Type {
    /// Usable RAM.
    Ram = 1,
    /// Reserved.
    Reserved = 2,
}

/// One e820 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// Start.
    pub addr: u64,
    /// Length.
    pub size: u64,
    /// Type.
    pub kind: E820Type,
}

/// How much RAM sits where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamLayout {
    /// Bytes from 0.
    pub below_4g: u64,
    /// Bytes from 4 GiB.
    pub above_4g: u64,
}

impl RamLayout {
    /// Splits `ram` bytes around the PCI hole: `below_4g = min(ram, 0xE0000000)`.
    pub fn new(ram: u64) -> RamLayout {
        let below_4g = ram.min(PCI_HOLE_START);
        RamLayout {
            below_4g,
            above_4g: ram - below_4g,
        }
    }

    /// Total RAM.
    pub fn total(&self) -> u64 {
        self.below_4g + self.above_4g
    }

    /// The e820 map firmware gets through fw_cfg's `etc/e820` (QEMU's: RAM from 0, RAM
    /// above 4 GiB, KVM's reserved pages; SeaBIOS adds its own reservations).
    pub fn firmware_e820(&self) -> Vec<E820Entry> {
        let mut map = vec![E820Entry {
            addr: 0,
            size: self.below_4g,
            kind: E820Type::Ram,
        }];
        if self.above_4g > 0 {
            map.push(E820Entry {
                addr: FOUR_GIB,
                size: self.above_4g,
                kind: E820Type::Ram,
            });
        }
        map.push(E820Entry {
            addr: KVM_RESERVED.0,
            size: KVM_RESERVED.1,
            kind: E820Type::Reserved,
        });
        map
    }

    /// The e820 map a directly booted Linux gets: conventional RAM up to the EBDA, the
    /// BIOS area reserved, RAM from 1 MiB, KVM's reserved pages (so Linux never places
    /// a BAR over them), RAM above 4 GiB.
    pub fn linux_e820(&self) -> Vec<E820Entry> {
        let mut map = vec![
            E820Entry {
                addr: 0,
                size: EBDA_START,
                kind: E820Type::Ram,
            },
            E820Entry {
                addr: EBDA_START,
                size: ISA_BIOS_END - EBDA_START,
                kind: E820Type::Reserved,
            },
        ];
        if self.below_4g > ISA_BIOS_END {
            map.push(E820Entry {
                addr: ISA_BIOS_END,
                size: self.below_4g - ISA_BIOS_END,
                kind: E820Type::Ram,
            });
        }
        map.push(E820Entry {
            addr: KVM_RESERVED.0,
            size: KVM_RESERVED.1,
            kind: E820Type::Reserved,
        });
        if self.above_4g > 0 {
            map.push(E820Entry {
                addr: FOUR_GIB,
                size: self.above_4g,
                kind: E820Type::Ram,
            });
        }
        map
    }
}

/// `etc/e820`'s bytes: packed `{le64 address, le64 length, le32 type}`.
pub fn e820_bytes(map: &[E820Entry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(map.len() * 20);
    for e in map {
        out.extend(e.addr.to_le_bytes());
        out.extend(e.size.to_le_bytes());
        out.extend((e.kind as u32).to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_follows_the_pci_hole() {
        assert_eq!(
            RamLayout::new(512 << 20),
            RamLayout {
                below_4g: 512 << 20,
                above_4g: 0
            }
        );
        let big = RamLayout::new(4 << 30);
        assert_eq!(big.below_4g, 0xe000_0000);
        assert_eq!(big.above_4g, (4 << 30) - 0xe000_0000);
        assert_eq!(big.firmware_e820().len(), 3);
        assert_eq!(e820_bytes(&big.firmware_e820()).len(), 60);
        let linux = RamLayout::new(512 << 20).linux_e820();
        assert_eq!(linux[2].addr, 0x10_0000);
        assert_eq!(linux[2].size, (512 << 20) - 0x10_0000);
    }
}
