//! The Intel MultiProcessor Specification 1.4 tables a directly booted Linux reads to
//! find its CPUs and interrupt wiring (without firmware there is no ACPI MADT; Linux
//! falls back to these, as under Firecracker).
//!
//! Layout, in the BIOS area that [`RamLayout::linux_e820`](super::RamLayout::linux_e820)
//! reserves: the 16-byte floating pointer at [`MP_FLOATING`] (Linux scans
//! 0xF0000–0xFFFFF for `_MP_`), the configuration table right after it. The table
//! describes what this machine wires:
//!
//! - one processor entry per vCPU, APIC ID = vCPU index (as CPUID reports it), CPU 0
//!   the BSP;
//! - bus 0 PCI, bus 1 ISA;
//! - the IOAPIC at 0xFEC00000 with 24 pins;
//! - ISA IRQ *n* → IOAPIC pin *n*, except IRQ 0 → pin 2 and no IRQ 2 (the IRQ0 override
//!   our routing table and fw_cfg's `IRQ0_OVERRIDE` declare, as QEMU's PC);
//! - PCI slot *s* pin *p* → IOAPIC pin 16 + PIRQ(*s*, *p*) (the PIIX swizzle
//!   [`IntxRouter`] drives);
//! - LINT0 as ExtINT, LINT1 as NMI on every local APIC.

use vm_memory::{Bytes, GuestAddress};

use pc_platform::IntxRouter;

/// Where the floating pointer goes.
pub const MP_FLOATING: u64 = 0xf_0000;
/// The in-kernel IOAPIC's address.
const IOAPIC_ADDRESS: u32 = 0xfec0_0000;
/// The local APICs' address.
const LAPIC_ADDRESS: u32 = 0xfee0_0000;
/// A local APIC version with the xAPIC's 0x14.
const LAPIC_VERSION: u8 = 0x14;
/// The 82093AA-style IOAPIC version KVM's reports.
const IOAPIC_VERSION: u8 = 0x11;
const PCI_BUS: u8 = 0;
const ISA_BUS: u8 = 1;
/// The end of the area the tables may use (the end of the reserved BIOS area).
const AREA_END: u64 = 0x10_0000;

/// Entry type codes.
const PROCESSOR: u8 = 0;
const BUS: u8 = 1;
const IOAPIC: u8 = 2;
const IO_INTERRUPT: u8 = 3;
const LOCAL_INTERRUPT: u8 = 4;
/// Interrupt types.
const INT: u8 = 0;
const NMI: u8 = 1;
const EXTINT: u8 = 3;

/// The tables for `cpus` vCPUs, as `(floating pointer, configuration table)`; the
/// table's pointer assumes it sits right after the floating pointer.
pub fn build(cpus: u32) -> (Vec<u8>, Vec<u8>) {
    let cpus = cpus.clamp(1, 255);
    // An APIC ID no CPU uses (with 255 CPUs none is left below the broadcast ID 0xFF;
    // the IOAPIC then shares 254, which x86-64 Linux tolerates).
    let ioapic_id = cpus.min(0xfe) as u8;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    let mut push = |bytes: &[u8]| {
        entries.extend_from_slice(bytes);
        count += 1;
    };
    for id in 0..cpus {
        let flags = if id == 0 { 0x3 } else { 0x1 }; // enabled, BSP
        let mut e = [0u8; 20];
        e[0] = PROCESSOR;
        e[1] = id as u8;
        e[2] = LAPIC_VERSION;
        e[3] = flags;
        e[4..8].copy_from_slice(&0x600u32.to_le_bytes()); // family 6
        e[8..12].copy_from_slice(&0x201u32.to_le_bytes()); // FPU, APIC
        push(&e);
    }
    for (id, name) in [(PCI_BUS, b"PCI   "), (ISA_BUS, b"ISA   ")] {
        let mut e = [0u8; 8];
        e[0] = BUS;
        e[1] = id;
        e[2..8].copy_from_slice(name);
        push(&e);
    }
    let mut e = [0u8; 8];
    e[0] = IOAPIC;
    e[1] = ioapic_id;
    e[2] = IOAPIC_VERSION;
    e[3] = 1; // enabled
    e[4..8].copy_from_slice(&IOAPIC_ADDRESS.to_le_bytes());
    push(&e);
    let io = |bus: u8, source: u8, pin: u8| [IO_INTERRUPT, INT, 0, 0, bus, source, ioapic_id, pin];
    for irq in 0..16u8 {
        match irq {
            0 => push(&io(ISA_BUS, 0, 2)),
            2 => {}
            _ => push(&io(ISA_BUS, irq, irq)),
        }
    }
    for slot in 1..32u8 {
        for pin in 1..=4u8 {
            let pirq = IntxRouter::pirq(slot, pin) as u8;
            // Source IRQ of a PCI bus: device number in bits 2..7, pin (0 = INTA) in 0..1.
            push(&io(PCI_BUS, (slot << 2) | (pin - 1), 16 + pirq));
        }
    }
    for (kind, lint) in [(EXTINT, 0u8), (NMI, 1u8)] {
        push(&[LOCAL_INTERRUPT, kind, 0, 0, ISA_BUS, 0, 0xff, lint]);
    }

    let table_address = (MP_FLOATING + 16) as u32;
    let mut table = Vec::with_capacity(44 + entries.len());
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&((44 + entries.len()) as u16).to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, below
    table.extend_from_slice(b"VMMCORE ");
    table.extend_from_slice(b"vmm-bin     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&LAPIC_ADDRESS.to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    table.push(0); // extended table checksum
    table.push(0);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(16);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&table_address.to_le_bytes());
    floating.push(1); // length in 16-byte units
    floating.push(4); // spec revision 1.4
    floating.push(0); // checksum, below
    floating.extend_from_slice(&[0; 5]); // feature bytes: the configuration table is present
    floating[10] = checksum(&floating);
    (floating, table)
}

/// The byte that makes `bytes` sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Writes the tables for `cpus` vCPUs into `mem`.
///
/// # Errors
///
/// [`WriteError::TooLarge`] if they do not fit below 1 MiB (too many vCPUs),
/// [`WriteError::Memory`] if RAM does not cover the area.
pub fn write(mem: &ram_block::RamMemory, cpus: u32) -> Result<(), WriteError> {
    let (floating, table) = build(cpus);
    let end = MP_FLOATING + (floating.len() + table.len()) as u64;
    if end > AREA_END {
        return Err(WriteError::TooLarge(end - MP_FLOATING));
    }
    mem.write_slice(&floating, GuestAddress(MP_FLOATING))?;
    mem.write_slice(&table, GuestAddress(MP_FLOATING + 16))?;
    Ok(())
}

/// Why [`write()`] failed.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The tables (this many bytes) do not fit below 1 MiB.
    #[error("{0} bytes do not fit below 1 MiB")]
    TooLarge(u64),
    /// RAM does not cover the area.
    #[error(transparent)]
    Memory(#[from] vm_memory::GuestMemoryError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    /// A processor entry: (APIC ID, flags).
    type Cpu = (u8, u8);
    /// An IO interrupt entry: (bus, source IRQ, IOAPIC pin).
    type Irq = (u8, u8, u8);

    /// Walks the table like Linux's `smp_read_mpc`.
    fn parse(table: &[u8]) -> (Vec<Cpu>, Vec<Irq>) {
        assert_eq!(&table[0..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        let count = u16::from_le_bytes([table[34], table[35]]);
        let mut at = 44;
        let (mut cpus, mut irqs) = (Vec::new(), Vec::new());
        for _ in 0..count {
            match table[at] {
                PROCESSOR => {
                    cpus.push((table[at + 1], table[at + 3]));
                    at += 20;
                }
                IO_INTERRUPT => {
                    irqs.push((table[at + 4], table[at + 5], table[at + 7]));
                    at += 8;
                }
                BUS | IOAPIC | LOCAL_INTERRUPT => at += 8,
                t => panic!("unknown entry type {t}"),
            }
        }
        assert_eq!(at, len, "entry count and length agree");
        (cpus, irqs)
    }

    #[test]
    fn checksums_and_pointer_are_valid() {
        for cpus in [1, 2, 8, 255] {
            let (floating, table) = build(cpus);
            assert_eq!(&floating[0..4], b"_MP_");
            assert_eq!(floating.len(), 16);
            assert_eq!(sum(&floating), 0);
            assert_eq!(sum(&table), 0);
            let ptr = u32::from_le_bytes(floating[4..8].try_into().unwrap());
            assert_eq!(u64::from(ptr), MP_FLOATING + 16);
            assert!(MP_FLOATING + 16 + table.len() as u64 <= AREA_END);
        }
    }

    #[test]
    fn one_enabled_processor_per_vcpu_and_cpu0_boots() {
        let (_, table) = build(4);
        let (cpus, _) = parse(&table);
        assert_eq!(cpus, vec![(0, 3), (1, 1), (2, 1), (3, 1)]);
    }

    #[test]
    fn interrupts_follow_the_irq0_override_and_pirq_swizzle() {
        let (_, table) = build(1);
        let (_, irqs) = parse(&table);
        assert!(irqs.contains(&(ISA_BUS, 0, 2)), "IRQ0 on pin 2");
        assert!(!irqs.iter().any(|&(b, s, _)| b == ISA_BUS && s == 2));
        assert!(irqs.contains(&(ISA_BUS, 4, 4)), "COM1");
        // Slot 3 INTA: PIRQ (0 + 3 - 1) & 3 = 2 → pin 18.
        assert!(irqs.contains(&(PCI_BUS, 3 << 2, 18)));
        // Slot 1 INTD: PIRQ (3 + 0) & 3 = 3 → pin 19.
        assert!(irqs.contains(&(PCI_BUS, (1 << 2) | 3, 19)));
    }
}
