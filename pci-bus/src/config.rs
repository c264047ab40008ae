//! A PCI function's 256-byte configuration space: the type 0 header, write masks, BAR
//! sizing semantics (a BAR reads back its size mask after the guest writes all ones;
//! type bits are read-only) and the capabilities list.

use std::sync::Arc;

use io_bus::BusDevice;

use crate::{Error, Result};

/// Standard header offsets.
pub mod regs {
    /// Vendor id (16 bits).
    pub const VENDOR_ID: usize = 0x00;
    /// Device id (16 bits).
    pub const DEVICE_ID: usize = 0x02;
    /// Command (16 bits).
    pub const COMMAND: usize = 0x04;
    /// Status (16 bits).
    pub const STATUS: usize = 0x06;
    /// Revision id.
    pub const REVISION: usize = 0x08;
    /// Programming interface, subclass, class (3 bytes).
    pub const CLASS_PROG: usize = 0x09;
    /// Header type.
    pub const HEADER_TYPE: usize = 0x0e;
    /// BAR 0; BAR n is at `BAR0 + 4 * n`.
    pub const BAR0: usize = 0x10;
    /// Subsystem vendor id.
    pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
    /// Subsystem id.
    pub const SUBSYSTEM_ID: usize = 0x2e;
    /// Capabilities pointer.
    pub const CAPABILITIES: usize = 0x34;
    /// Status bit: the function has a capabilities list.
    pub const STATUS_CAP_LIST: u16 = 1 << 4;
    /// Interrupt line (firmware scratch).
    pub const INTERRUPT_LINE: usize = 0x3c;
    /// Interrupt pin (1 = INTA).
    pub const INTERRUPT_PIN: usize = 0x3d;
    /// Command bit: I/O space decoding.
    pub const COMMAND_IO: u16 = 1 << 0;
    /// Command bit: memory space decoding.
    pub const COMMAND_MEMORY: u16 = 1 << 1;
}

/// What a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// I/O ports (size 4..=256, a power of two).
    Io,
    /// 32-bit memory.
    Mem32,
    /// 64-bit memory (takes two BAR slots).
    Mem64,
}

/// An address space the platform maps regions into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Space {
    /// Port I/O.
    Io,
    /// Memory.
    Mem,
}

/// A region a function currently decodes.
#[derive(Clone)]
pub struct PciMapping {
    /// I/O or memory.
    pub space: Space,
    /// Guest address.
    pub base: u64,
    /// Length in bytes.
    pub len: u64,
    /// Who handles accesses (offsets relative to `base`).
    pub device: Arc<dyn BusDevice>,
}

impl std::fmt::Debug for PciMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} {:#x}+{:#x}", self.space, self.base, self.len)
    }
}

#[derive(Clone, Copy, Debug)]
struct Bar {
    size: u64,
    kind: BarKind,
}

/// One function's configuration space.
#[derive(Clone)]
pub struct PciConfig {
    bytes: [u8; 256],
    /// Bits the guest may change.
    writable: [u8; 256],
    /// Power-on contents.
    initial: [u8; 256],
    bars: [Option<Bar>; 6],
    /// The capabilities added, in list order: (offset, length).
    capabilities: Vec<(usize, usize)>,
}

/// Where capabilities may be placed: after the type 0 header, inside the 256 bytes.
const CAPABILITY_AREA: std::ops::Range<usize> = 0x40..0x100;

impl PciConfig {
    /// A type 0 header for `vendor:device` of class `class` (class << 16 | subclass << 8
    /// | prog_if), with QEMU's subsystem ids (1af4:1100, which SeaBIOS checks to
    /// recognise QEMU's host bridge).
    pub fn new(vendor: u16, device: u16, class: u32, revision: u8) -> PciConfig {
        let mut c = PciConfig {
            bytes: [0; 256],
            writable: [0; 256],
            initial: [0; 256],
            bars: [None; 6],
            capabilities: Vec::new(),
        };
        c.set_u16(regs::VENDOR_ID, vendor);
        c.set_u16(regs::DEVICE_ID, device);
        c.bytes[regs::REVISION] = revision;
        c.bytes[regs::CLASS_PROG] = class as u8;
        c.bytes[regs::CLASS_PROG + 1] = (class >> 8) as u8;
        c.bytes[regs::CLASS_PROG + 2] = (class >> 16) as u8;
        c.set_u16(regs::SUBSYSTEM_VENDOR_ID, 0x1af4);
        c.set_u16(regs::SUBSYSTEM_ID, 0x1100);
        // Command: I/O, memory, bus master, INTx disable... the usual writable bits.
        c.writable[regs::COMMAND] = 0x07;
        c.writable[regs::COMMAND + 1] = 0x04;
        c.writable[regs::INTERRUPT_LINE] = 0xff;
        // Latency timer, cache line size.
        c.writable[0x0c] = 0xff;
        c.writable[0x0d] = 0xff;
        c.initial = c.bytes;
        c
    }

    /// Marks the function as part of a multi-function device.
    pub fn set_multifunction(&mut self) {
        self.bytes[regs::HEADER_TYPE] |= 0x80;
        self.initial = self.bytes;
    }

    /// Sets a read-only byte (device-specific registers).
    pub fn set_u8(&mut self, offset: usize, value: u8) {
        if let Some(b) = self.bytes.get_mut(offset) {
            *b = value;
        }
        self.initial = self.bytes;
    }

    /// Sets a read-only 16-bit value.
    pub fn set_u16(&mut self, offset: usize, value: u16) {
        for (i, b) in value.to_le_bytes().into_iter().enumerate() {
            self.set_u8(offset + i, b);
        }
    }

    /// Sets a 32-bit value.
    pub fn set_u32(&mut self, offset: usize, value: u32) {
        for (i, b) in value.to_le_bytes().into_iter().enumerate() {
            self.set_u8(offset + i, b);
        }
    }

    /// Makes bits of `len` bytes at `offset` guest-writable (`mask` little-endian).
    pub fn set_writable(&mut self, offset: usize, len: usize, mask: u32) {
        for i in 0..len.min(4) {
            if let Some(w) = self.writable.get_mut(offset + i) {
                *w = (mask >> (8 * i)) as u8;
            }
        }
    }

    /// Sets the interrupt pin (1 = INTA .. 4 = INTD).
    pub fn set_interrupt_pin(&mut self, pin: u8) {
        self.set_u8(regs::INTERRUPT_PIN, pin);
    }

    /// Declares BAR `index` of `size` bytes.
    ///
    /// # Errors
    ///
    /// [`Error::BadBar`] for a size that is not a power of two (at least 4 for I/O, 16
    /// for memory; at most 256 for I/O, 2 GiB for 32-bit memory), a slot already used,
    /// or a 64-bit BAR in slot 5.
    pub fn add_bar(
        &mut self,
        index: usize,
        size: u64,
        kind: BarKind,
        prefetchable: bool,
    ) -> Result<()> {
        let bad = Error::BadBar { index, size, kind };
        let (min, max) = match kind {
            BarKind::Io => (4, 256),
            BarKind::Mem32 => (16, 1 << 31),
            BarKind::Mem64 => (16, 1 << 62),
        };
        let slots = if kind == BarKind::Mem64 { 2 } else { 1 };
        if !size.is_power_of_two()
            || size < min
            || size > max
            || index + slots > 6
            || self.bars[index..index + slots].iter().any(Option::is_some)
            || (index > 0 && matches!(self.bars[index - 1], Some(b) if b.kind == BarKind::Mem64))
        {
            return Err(bad);
        }
        self.bars[index] = Some(Bar { size, kind });
        let offset = regs::BAR0 + 4 * index;
        let (type_bits, mask) = match kind {
            BarKind::Io => (0x1u32, !(size as u32 - 1) & 0xffff_fffc),
            BarKind::Mem32 => (u32::from(prefetchable) << 3, !(size as u32 - 1) & !0xf),
            BarKind::Mem64 => (
                0x4 | u32::from(prefetchable) << 3,
                !((size - 1) as u32) & !0xf,
            ),
        };
        self.bytes[offset..offset + 4].copy_from_slice(&type_bits.to_le_bytes());
        self.set_writable(offset, 4, mask);
        if kind == BarKind::Mem64 {
            let high_mask = !((size - 1) >> 32) as u32;
            self.set_writable(offset + 4, 4, high_mask);
        }
        if kind == BarKind::Io {
            self.writable[regs::COMMAND] |= 0x01;
        }
        self.initial = self.bytes;
        Ok(())
    }

    /// Adds a capability with id `id` of `len` bytes (its two header bytes included) at
    /// `at`, linked at the end of the list, and sets the status register's
    /// capabilities bit. Only the header is written: the caller fills the body with
    /// the `set_*` methods and makes its registers writable.
    ///
    /// # Errors
    ///
    /// [`Error::BadCapability`] for an offset that is not dword-aligned or inside the
    /// header, a length under 2 or past the end of the space, or an overlap with a
    /// capability already added.
    pub fn add_capability(&mut self, at: usize, id: u8, len: usize) -> Result<()> {
        let end = at.checked_add(len);
        let fits = at % 4 == 0
            && len >= 2
            && CAPABILITY_AREA.contains(&at)
            && end.is_some_and(|end| end <= CAPABILITY_AREA.end);
        // `at + len` cannot overflow once `fits` holds.
        if !fits
            || self
                .capabilities
                .iter()
                .any(|&(o, l)| o < at + len && at < o + l)
        {
            return Err(Error::BadCapability { at, id, len });
        }
        let link = match self.capabilities.last() {
            Some(&(tail, _)) => tail + 1,
            None => regs::CAPABILITIES,
        };
        self.set_u8(link, at as u8);
        self.set_u8(at, id);
        self.set_u8(at + 1, 0);
        let status = self.value(regs::STATUS, 2) as u16;
        self.set_u16(regs::STATUS, status | regs::STATUS_CAP_LIST);
        self.capabilities.push((at, len));
        Ok(())
    }

    /// The capabilities list as the guest walks it: `(offset, id)` from the
    /// capabilities pointer on (at most 48 entries, as Linux bounds its walk).
    pub fn capabilities(&self) -> Vec<(usize, u8)> {
        let mut out = Vec::new();
        if self.value(regs::STATUS, 2) as u16 & regs::STATUS_CAP_LIST == 0 {
            return out;
        }
        let mut at = self.value(regs::CAPABILITIES, 1) as usize & !3;
        while at >= CAPABILITY_AREA.start && out.len() < 48 {
            out.push((at, self.value(at, 1) as u8));
            at = self.value(at + 1, 1) as usize & !3;
        }
        out
    }

    /// Reads `data.len()` bytes at `offset`; bytes past the 256-byte space read 0xff.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            *d = self.bytes.get(offset + i).copied().unwrap_or(0xff);
        }
    }

    /// Writes through the write masks.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &d) in data.iter().enumerate() {
            let at = offset + i;
            if let (Some(b), Some(&w)) = (self.bytes.get_mut(at), self.writable.get(at)) {
                *b = (*b & !w) | (d & w);
            }
        }
    }

    /// A little-endian value of `len` bytes at `offset`.
    pub fn value(&self, offset: usize, len: usize) -> u64 {
        let mut buf = [0u8; 8];
        let len = len.min(8);
        self.read(offset, &mut buf[..len]);
        u64::from_le_bytes(buf)
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.value(regs::COMMAND, 2) as u16
    }

    /// BAR `index`'s programmed address, size and kind, if declared.
    pub fn bar(&self, index: usize) -> Option<(u64, u64, BarKind)> {
        let bar = (*self.bars.get(index)?)?;
        let offset = regs::BAR0 + 4 * index;
        let low = self.value(offset, 4);
        let address = match bar.kind {
            BarKind::Io => low & !0x3,
            BarKind::Mem32 => low & !0xf,
            BarKind::Mem64 => (low & !0xf) | self.value(offset + 4, 4) << 32,
        };
        Some((address, bar.size, bar.kind))
    }

    /// Where the BARs decode now, given the command register: `(index, space, base,
    /// len)` for each enabled BAR whose address is programmed (non-zero) and does not
    /// run past the top of its space. (QEMU's `pci_bar_address`.)
    pub fn decoded_bars(&self) -> Vec<(usize, Space, u64, u64)> {
        let command = self.command();
        let mut out = Vec::new();
        for index in 0..6 {
            let Some((base, size, kind)) = self.bar(index) else {
                continue;
            };
            let (space, enabled, limit) = match kind {
                BarKind::Io => (Space::Io, command & regs::COMMAND_IO != 0, 0x1_0000),
                BarKind::Mem32 => (Space::Mem, command & regs::COMMAND_MEMORY != 0, 1 << 32),
                BarKind::Mem64 => (Space::Mem, command & regs::COMMAND_MEMORY != 0, 1 << 52),
            };
            if enabled && base != 0 && base.checked_add(size).is_some_and(|end| end <= limit) {
                out.push((index, space, base, size));
            }
        }
        out
    }

    /// Back to power-on contents.
    pub fn reset(&mut self) {
        self.bytes = self.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_sizing_reads_back_the_size_mask() {
        let mut c = PciConfig::new(0x1af4, 0x1001, 0x01_00_00, 0);
        c.add_bar(0, 0x40, BarKind::Io, false).unwrap();
        c.add_bar(1, 0x1000, BarKind::Mem32, false).unwrap();
        c.add_bar(2, 0x4000, BarKind::Mem64, true).unwrap();
        assert!(c.add_bar(3, 0x1000, BarKind::Mem32, false).is_err()); // high half of BAR 2
        assert!(c.add_bar(4, 3, BarKind::Io, false).is_err());
        assert!(c.add_bar(5, 0x1000, BarKind::Mem64, false).is_err());
        for i in 0..6 {
            c.write(regs::BAR0 + 4 * i, &[0xff; 4]);
        }
        assert_eq!(c.value(0x10, 4), 0xffff_ffc1);
        assert_eq!(c.value(0x14, 4), 0xffff_f000);
        assert_eq!(c.value(0x18, 4), 0xffff_c00c);
        assert_eq!(c.value(0x1c, 4), 0xffff_ffff);
        assert_eq!(c.value(0x20, 4), 0); // no BAR 4
        // Program and enable.
        c.write(0x10, &0xc040u32.to_le_bytes());
        c.write(0x14, &0xfebf_f000u32.to_le_bytes());
        c.write(0x18, &0u32.to_le_bytes());
        c.write(0x1c, &0u32.to_le_bytes());
        assert!(c.decoded_bars().is_empty(), "command register off");
        c.write(regs::COMMAND, &[0x03, 0]);
        let bars = c.decoded_bars();
        assert_eq!(bars.len(), 2, "{bars:?}"); // BAR 2 unprogrammed
        assert_eq!(bars[0], (0, Space::Io, 0xc040, 0x40));
        assert_eq!(bars[1], (1, Space::Mem, 0xfebf_f000, 0x1000));
        c.write(0x18, &0x8000u32.to_le_bytes());
        c.write(0x1c, &1u32.to_le_bytes());
        assert_eq!(c.decoded_bars()[2], (2, Space::Mem, 0x1_0000_8000, 0x4000));
        // Read-only ids.
        c.write(0, &[0; 4]);
        assert_eq!(c.value(0, 2), 0x1af4);
        c.reset();
        assert_eq!(c.value(0x10, 4), 1);
    }

    #[test]
    fn capabilities_are_linked_in_order_and_checked() {
        let mut c = PciConfig::new(0x1af4, 0x1041, 0xff_00_00, 1);
        assert!(c.capabilities().is_empty());
        assert_eq!(c.value(regs::STATUS, 2), 0);
        c.add_capability(0x40, 0x11, 12).unwrap();
        c.add_capability(0x4c, 0x09, 16).unwrap();
        c.add_capability(0x60, 0x05, 8).unwrap();
        assert_eq!(c.capabilities(), [(0x40, 0x11), (0x4c, 0x09), (0x60, 0x05)]);
        assert_eq!(c.value(regs::CAPABILITIES, 1), 0x40);
        assert_eq!(c.value(0x41, 1), 0x4c);
        assert_eq!(c.value(0x4d, 1), 0x60);
        assert_eq!(c.value(0x61, 1), 0);
        assert_eq!(
            c.value(regs::STATUS, 2) as u16 & regs::STATUS_CAP_LIST,
            regs::STATUS_CAP_LIST
        );
        let bad = |c: &mut PciConfig, at, len| {
            assert_eq!(
                c.add_capability(at, 1, len),
                Err(Error::BadCapability { at, id: 1, len })
            );
        };
        bad(&mut c, 0x30, 4); // inside the header
        bad(&mut c, 0x42, 4); // not aligned
        bad(&mut c, 0x58, 8); // overlaps 0x4c+16
        bad(&mut c, 0xfc, 8); // past the end
        bad(&mut c, 0x80, 1); // no room for the header
        bad(&mut c, 0x80, usize::MAX); // wraps
        // The guest cannot rewire the list.
        c.write(regs::CAPABILITIES, &[0x80]);
        c.write(0x41, &[0x80]);
        c.write(regs::STATUS, &[0, 0]);
        assert_eq!(c.capabilities().len(), 3);
        c.reset();
        assert_eq!(c.capabilities().len(), 3);
    }
}
