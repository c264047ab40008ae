//! SMBIOS tables for the firmware, as QEMU's `pc` machine hands them over fw_cfg
//! (`etc/smbios/smbios-tables` and the 31-byte SMBIOS 2.1 entry point
//! `etc/smbios/smbios-anchor`, hw/smbios/smbios.c): types 1 (system), 3 (chassis),
//! 4 (one per CPU), 16 (memory array), 17 (one per 16 GiB device), 19 (one per RAM
//! range), 32 (boot status) and 127 (end). Type 0 (BIOS) is left to the firmware, as
//! QEMU leaves it.
//!
//! SeaBIOS copies these instead of building its own (`smbios_legacy_setup`, which
//! clears a 32 KiB buffer and searches fw_cfg for overrides field by field). On a KVM
//! that emulates firmware code instruction by instruction, that is about 0.3 s of the
//! time to the first byte on the console.

use super::layout::{FOUR_GIB, RamLayout};

/// The SMBIOS version the tables follow (QEMU's default for `pc`).
const VERSION: (u8, u8) = (2, 8);
/// What QEMU calls the machine.
const MANUFACTURER: &str = "QEMU";
/// The product name of QEMU's i440FX machine.
const PRODUCT: &str = "Standard PC (i440FX + PIIX, 1996)";
/// The version string (QEMU: the machine type name).
const MACHINE: &str = "pc-i440fx";
/// The largest memory device QEMU describes (`MAX_DIMM_SZ`).
const MAX_DIMM: u64 = 16 << 30;

/// One structure: the formatted area (the header's length byte is filled in) and its
/// strings.
struct Table {
    bytes: Vec<u8>,
    strings: Vec<&'static str>,
}

impl Table {
    fn new(kind: u8, handle: u16) -> Table {
        let mut bytes = vec![kind, 0];
        bytes.extend(handle.to_le_bytes());
        Table {
            bytes,
            strings: Vec::new(),
        }
    }
    fn u8(mut self, v: u8) -> Table {
        self.bytes.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Table {
        self.bytes.extend(v.to_le_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Table {
        self.bytes.extend(v.to_le_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Table {
        self.bytes.extend(v.to_le_bytes());
        self
    }
    /// A string field: its 1-based index, or 0 for none.
    fn str(mut self, s: &'static str) -> Table {
        if s.is_empty() {
            return self.u8(0);
        }
        self.strings.push(s);
        let index = self.strings.len() as u8;
        self.u8(index)
    }
    fn zeros(mut self, n: usize) -> Table {
        self.bytes.extend(std::iter::repeat_n(0, n));
        self
    }
    /// Appends the structure to `out`; returns its total size.
    fn emit(mut self, out: &mut Vec<u8>) -> usize {
        self.bytes[1] = self.bytes.len() as u8;
        let start = out.len();
        out.extend(&self.bytes);
        for s in &self.strings {
            out.extend(s.as_bytes());
            out.push(0);
        }
        if self.strings.is_empty() {
            out.push(0);
        }
        out.push(0);
        out.len() - start
    }
}

/// `(tables, anchor)`: the structure table and its SMBIOS 2.1 entry point (whose table
/// address the firmware fills in when it places the table).
pub fn build(layout: RamLayout, cpus: u32) -> (Vec<u8>, Vec<u8>) {
    let mut out = Vec::new();
    let mut count = 0u16;
    let mut largest = 0usize;
    let mut add = |t: Table, out: &mut Vec<u8>| {
        largest = largest.max(t.emit(out));
        count += 1;
    };

    // Type 1: system. No UUID (zeros), wake-up by power switch.
    let t = Table::new(1, 0x100)
        .str(MANUFACTURER)
        .str(PRODUCT)
        .str(MACHINE)
        .str("")
        .zeros(16)
        .u8(0x06)
        .str("")
        .str("");
    add(t, &mut out);

    // Type 3: chassis "other", states "safe", no security.
    let t = Table::new(3, 0x300)
        .str(MANUFACTURER)
        .u8(0x01)
        .str(MACHINE)
        .str("")
        .str("")
        .u8(0x03)
        .u8(0x03)
        .u8(0x03)
        .u8(0x02)
        .u32(0)
        .u8(0)
        .u8(0)
        .u8(0)
        .u8(0)
        .str("");
    add(t, &mut out);

    // Type 4: one per CPU.
    const SOCKETS: [&str; 8] = [
        "CPU 0", "CPU 1", "CPU 2", "CPU 3", "CPU 4", "CPU 5", "CPU 6", "CPU 7",
    ];
    for i in 0..cpus.min(255) {
        let t = Table::new(4, 0x400 + i as u16)
            .str(SOCKETS.get(i as usize).copied().unwrap_or("CPU"))
            .u8(0x03) // central processor
            .u8(0x01) // family: other
            .str(MANUFACTURER)
            .u64(0) // processor id
            .str(MACHINE)
            .u8(0) // voltage
            .u16(0) // external clock: unknown
            .u16(2000) // max speed, MHz (QEMU's default)
            .u16(2000) // current speed
            .u8(0x41) // socket populated, CPU enabled
            .u8(0x01) // upgrade: other
            .u16(0xffff)
            .u16(0xffff)
            .u16(0xffff) // no cache information
            .str("")
            .str("")
            .str("")
            .u8(1) // cores
            .u8(1) // cores enabled
            .u8(1) // threads
            .u16(0x02) // characteristics: unknown
            .u16(0x01); // family 2: other
        add(t, &mut out);
    }

    // Type 16: the memory array, then type 17 per device of at most 16 GiB.
    let total = layout.total();
    let devices = total.div_ceil(MAX_DIMM).max(1);
    let kib = total >> 10;
    let (max_capacity, extended) = match u32::try_from(kib) {
        Ok(k) if k < u32::MAX => (k, 0),
        _ => (0x8000_0000, total),
    };
    let t = Table::new(16, 0x1000)
        .u8(0x01) // location: other
        .u8(0x03) // use: system memory
        .u8(0x06) // error correction: multi-bit ECC
        .u32(max_capacity)
        .u16(0xfffe) // no error information
        .u16(devices as u16)
        .u64(extended);
    add(t, &mut out);
    const DIMMS: [&str; 8] = [
        "DIMM 0", "DIMM 1", "DIMM 2", "DIMM 3", "DIMM 4", "DIMM 5", "DIMM 6", "DIMM 7",
    ];
    for i in 0..devices {
        let size = (total - i * MAX_DIMM).min(MAX_DIMM);
        let mib = size >> 20;
        let (short, long) = if mib < 0x7fff {
            (mib as u16, 0)
        } else {
            (0x7fff, mib as u32)
        };
        let t = Table::new(17, 0x1100 + i as u16)
            .u16(0x1000) // the array
            .u16(0xfffe)
            .u16(0xffff) // widths unknown
            .u16(0xffff)
            .u16(short)
            .u8(0x09) // DIMM
            .u8(0)
            .str(DIMMS.get(i as usize).copied().unwrap_or("DIMM"))
            .str("")
            .u8(0x07) // RAM
            .u16(0x02) // detail: other
            .u16(0) // speed unknown
            .str(MANUFACTURER)
            .str("")
            .str("")
            .str("")
            .u8(0)
            .u32(long)
            .u16(0)
            .u16(0)
            .u16(0)
            .u16(0);
        add(t, &mut out);
    }

    // Type 19: one per RAM range.
    let mut ranges = vec![(0u64, layout.below_4g)];
    if layout.above_4g > 0 {
        ranges.push((FOUR_GIB, layout.above_4g));
    }
    for (i, (start, size)) in ranges.into_iter().enumerate() {
        let end = start + size - 1;
        let t = match (u32::try_from(start >> 10), u32::try_from(end >> 10)) {
            (Ok(s), Ok(e)) if e < u32::MAX => Table::new(19, 0x1300 + i as u16)
                .u32(s)
                .u32(e)
                .u16(0x1000)
                .u8(1)
                .u64(0)
                .u64(0),
            _ => Table::new(19, 0x1300 + i as u16)
                .u32(u32::MAX)
                .u32(u32::MAX)
                .u16(0x1000)
                .u8(1)
                .u64(start)
                .u64(end),
        };
        add(t, &mut out);
    }

    // Type 32: no errors at boot; type 127: the end.
    add(Table::new(32, 0x2000).zeros(6).u8(0), &mut out);
    add(Table::new(127, 0x7f00), &mut out);

    let anchor = entry_point(out.len() as u16, largest as u16, count);
    (out, anchor)
}

/// The 31-byte SMBIOS 2.1 entry point ("_SM_" ... "_DMI_") with both checksums.
fn entry_point(table_len: u16, largest: u16, count: u16) -> Vec<u8> {
    let mut ep = Vec::with_capacity(31);
    ep.extend(b"_SM_");
    ep.push(0); // checksum
    ep.push(31);
    ep.push(VERSION.0);
    ep.push(VERSION.1);
    ep.extend(largest.to_le_bytes());
    ep.push(0); // entry point revision
    ep.extend([0; 5]);
    ep.extend(b"_DMI_");
    ep.push(0); // intermediate checksum
    ep.extend(table_len.to_le_bytes());
    ep.extend(0u32.to_le_bytes()); // table address: the firmware's
    ep.extend(count.to_le_bytes());
    ep.push((VERSION.0 << 4) | VERSION.1);
    let sum = |b: &[u8]| b.iter().fold(0u8, |a, &x| a.wrapping_add(x));
    ep[0x15] = 0u8.wrapping_sub(sum(&ep[0x10..]));
    ep[4] = 0u8.wrapping_sub(sum(&ep[..0x10]));
    ep
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks the table as firmware and dmidecode do: (type, handle, strings).
    fn walk(table: &[u8]) -> Vec<(u8, u16, Vec<String>)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < table.len() {
            let kind = table[at];
            let len = usize::from(table[at + 1]);
            let handle = u16::from_le_bytes([table[at + 2], table[at + 3]]);
            let mut p = at + len;
            let mut strings = Vec::new();
            if table[p] == 0 {
                p += 1;
            } else {
                while table[p] != 0 {
                    let end = p + table[p..].iter().position(|&b| b == 0).unwrap();
                    strings.push(String::from_utf8(table[p..end].to_vec()).unwrap());
                    p = end + 1;
                }
            }
            assert_eq!(table[p], 0, "double NUL after type {kind}");
            at = p + 1;
            out.push((kind, handle, strings));
        }
        assert_eq!(at, table.len());
        out
    }

    #[test]
    fn tables_and_entry_point_are_well_formed() {
        let (table, anchor) = build(RamLayout::new(6 << 30), 2);
        let structs = walk(&table);
        let kinds: Vec<u8> = structs.iter().map(|s| s.0).collect();
        assert_eq!(kinds, [1, 3, 4, 4, 16, 17, 19, 19, 32, 127]);
        assert_eq!(structs[0].2, ["QEMU", PRODUCT, MACHINE]);
        assert_eq!(structs[3].1, 0x401);
        // Formatted-area lengths of SMBIOS 2.8.
        let mut at = 0;
        let mut lens = Vec::new();
        for _ in &structs {
            lens.push(table[at + 1]);
            at += usize::from(table[at + 1]);
            while table[at] != 0 || table[at + 1] != 0 {
                at += 1;
            }
            at += 2;
        }
        assert_eq!(lens, [27, 22, 42, 42, 23, 40, 31, 31, 11, 4]);

        assert_eq!(anchor.len(), 31);
        assert_eq!(&anchor[..4], b"_SM_");
        assert_eq!(&anchor[0x10..0x15], b"_DMI_");
        let sum = |b: &[u8]| b.iter().fold(0u8, |a, &x| a.wrapping_add(x));
        assert_eq!(sum(&anchor[..0x10]), 0);
        assert_eq!(sum(&anchor[0x10..]), 0);
        assert_eq!(
            u16::from_le_bytes([anchor[0x16], anchor[0x17]]),
            table.len() as u16
        );
        assert_eq!(u16::from_le_bytes([anchor[0x1c], anchor[0x1d]]), 10);
    }

    #[test]
    fn memory_devices_cover_ram() {
        let (table, _) = build(RamLayout::new(40 << 30), 1);
        let kinds: Vec<u8> = walk(&table).iter().map(|s| s.0).collect();
        assert_eq!(kinds.iter().filter(|&&k| k == 17).count(), 3);
        let (table, _) = build(RamLayout::new(128 << 20), 1);
        let kinds: Vec<u8> = walk(&table).iter().map(|s| s.0).collect();
        assert_eq!(kinds, [1, 3, 4, 16, 17, 19, 32, 127]);
    }
}
