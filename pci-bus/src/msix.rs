//! MSI-X (PCI Local Bus 3.0, 6.8.2): the capability in config space, and the vector
//! table and pending bit array (PBA) a function exposes in a memory BAR.
//!
//! [`MsixTable`] is the state machine, transport-free: the function keeps it behind its
//! own lock, serves the BAR region through [`read`](MsixTable::read) and
//! [`write`](MsixTable::write), feeds it the capability's message control register
//! ([`set_control`](MsixTable::set_control)), and asks it what to send
//! ([`signal`](MsixTable::signal), [`take_deliverable`](MsixTable::take_deliverable)).
//! Sending the message (an irqfd, `KVM_SIGNAL_MSI`) is the caller's business.
//!
//! | guest input | bounds checked |
//! | --- | --- |
//! | table offset | entries past the table read 0, writes to them are dropped |
//! | access width | the table takes aligned dword writes only (as the spec requires); reads of any width |
//! | PBA | read-only; bits past the vector count read 0 |
//! | vector number (from the transport) | past the table: no interrupt |

use crate::{PciConfig, Result};

/// The MSI-X capability id.
pub const CAP_ID_MSIX: u8 = 0x11;
/// Length of the MSI-X capability.
pub const CAP_LEN: usize = 12;
/// Message control: MSI-X enable.
pub const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Bytes per table entry.
pub const ENTRY_SIZE: u64 = 16;

/// One table entry: the message and its vector control's mask bit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsixEntry {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
    /// The entry's mask bit.
    pub masked: bool,
}

impl MsixEntry {
    /// An entry as it is at power-on: masked, no message.
    pub const fn masked() -> MsixEntry {
        MsixEntry {
            address: 0,
            data: 0,
            masked: true,
        }
    }
}

/// A function's MSI-X state: enable and function mask, the vector table and the
/// pending bits. The table starts at offset 0 of the region it is served from, the PBA
/// at `pba_offset`.
#[derive(Clone, Debug)]
pub struct MsixTable {
    enabled: bool,
    function_masked: bool,
    entries: Vec<MsixEntry>,
    pending: Vec<bool>,
    pba_offset: u64,
}

impl MsixTable {
    /// A table of `vectors` masked entries, disabled, with the PBA at `pba_offset` in
    /// the same region.
    pub fn new(vectors: usize, pba_offset: u64) -> MsixTable {
        MsixTable {
            enabled: false,
            function_masked: false,
            entries: vec![MsixEntry::masked(); vectors],
            pending: vec![false; vectors],
            pba_offset,
        }
    }

    /// The number of vectors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table has no vectors.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether MSI-X is enabled (interrupts go out as messages, not INTx).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Entry `vector`, if the table has it.
    pub fn entry(&self, vector: u16) -> Option<&MsixEntry> {
        self.entries.get(usize::from(vector))
    }

    /// Whether `vector`'s pending bit is set.
    pub fn is_pending(&self, vector: u16) -> bool {
        self.pending
            .get(usize::from(vector))
            .copied()
            .unwrap_or(false)
    }

    /// Takes the enable and function mask bits from the capability's message control
    /// register (after every config write to it). The caller then delivers what
    /// [`take_deliverable`](Self::take_deliverable) returns.
    pub fn set_control(&mut self, control: u16) {
        self.enabled = control & CONTROL_ENABLE != 0;
        self.function_masked = control & CONTROL_FUNCTION_MASK != 0;
    }

    /// An interrupt on `vector` (MSI-X enabled): the message to send, or `None` if the
    /// table has no such vector (no interrupt) or the vector or the function is masked
    /// (the pending bit is set instead).
    pub fn signal(&mut self, vector: u16) -> Option<MsixEntry> {
        let v = usize::from(vector);
        let entry = *self.entries.get(v)?;
        if entry.masked || self.function_masked {
            self.pending[v] = true;
            return None;
        }
        Some(entry)
    }

    /// The pending vectors that may be delivered now (MSI-X enabled, function and entry
    /// unmasked), their pending bits cleared, in vector order.
    pub fn take_deliverable(&mut self) -> Vec<(u16, MsixEntry)> {
        if !self.enabled || self.function_masked {
            return Vec::new();
        }
        let mut out = Vec::new();
        for (i, entry) in self.entries.iter().enumerate() {
            if self.pending[i] && !entry.masked {
                self.pending[i] = false;
                out.push((i as u16, *entry));
            }
        }
        out
    }

    /// Clears every pending bit (a device reset: interrupts of the old life are gone).
    pub fn clear_pending(&mut self) {
        self.pending.fill(false);
    }

    /// Back to power-on: disabled, function unmasked, every entry masked and empty, no
    /// pending bits.
    pub fn reset(&mut self) {
        self.enabled = false;
        self.function_masked = false;
        self.entries.fill(MsixEntry::masked());
        self.clear_pending();
    }

    /// A guest read of `data.len()` bytes at `offset` in the table/PBA region.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if offset >= self.pba_offset {
            let bit0 = (offset - self.pba_offset) * 8;
            for (i, d) in data.iter_mut().enumerate() {
                for b in 0..8 {
                    let v = bit0 + i as u64 * 8 + b;
                    if self.pending.get(v as usize).copied().unwrap_or(false) {
                        *d |= 1 << b;
                    }
                }
            }
            return;
        }
        let Some(e) = self.entries.get((offset / ENTRY_SIZE) as usize) else {
            return;
        };
        let word = match (offset % ENTRY_SIZE) & !3 {
            0 => e.address as u32,
            4 => (e.address >> 32) as u32,
            8 => e.data,
            _ => u32::from(e.masked),
        };
        let bytes = word.to_le_bytes();
        let start = (offset % 4) as usize;
        for (i, d) in data.iter_mut().enumerate() {
            *d = bytes.get(start + i).copied().unwrap_or(0);
        }
    }

    /// A guest write at `offset` in the table/PBA region. Returns whether an entry
    /// changed (the caller then delivers what
    /// [`take_deliverable`](Self::take_deliverable) returns: an unmask releases its
    /// pending message). The PBA is read-only; the table takes aligned dword writes.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        if offset >= self.pba_offset || data.len() != 4 || offset % 4 != 0 {
            return false;
        }
        let value = u32::from_le_bytes(data.try_into().unwrap_or([0; 4]));
        let Some(e) = self.entries.get_mut((offset / ENTRY_SIZE) as usize) else {
            return false;
        };
        match offset % ENTRY_SIZE {
            0 => e.address = (e.address & !0xffff_ffff) | u64::from(value),
            4 => e.address = (e.address & 0xffff_ffff) | (u64::from(value) << 32),
            8 => e.data = value,
            _ => e.masked = value & 1 != 0,
        }
        true
    }
}

/// Adds the MSI-X capability at `at` to `config`: `vectors` entries, the table at
/// `table_offset` and the PBA at `pba_offset` of BAR `bar` (offsets 8-byte aligned).
/// The enable and function mask bits of message control are guest-writable.
///
/// # Errors
///
/// [`Error::BadCapability`](crate::Error::BadCapability) where the capability does not
/// fit (see [`PciConfig::add_capability`]).
pub fn add_capability(
    config: &mut PciConfig,
    at: usize,
    vectors: u16,
    bar: u8,
    table_offset: u32,
    pba_offset: u32,
) -> Result<()> {
    config.add_capability(at, CAP_ID_MSIX, CAP_LEN)?;
    config.set_u16(at + 2, vectors.saturating_sub(1));
    config.set_writable(at + 2, 2, u32::from(CONTROL_ENABLE | CONTROL_FUNCTION_MASK));
    config.set_u32(at + 4, table_offset | u32::from(bar));
    config.set_u32(at + 8, pba_offset | u32::from(bar));
    Ok(())
}

/// The message control register of the MSI-X capability at `at`.
pub fn control(config: &PciConfig, at: usize) -> u16 {
    config.value(at + 2, 2) as u16
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs;

    const PBA: u64 = 0x800;

    fn w32(t: &mut MsixTable, offset: u64, v: u32) -> bool {
        t.write(offset, &v.to_le_bytes())
    }

    fn r32(t: &MsixTable, offset: u64) -> u32 {
        let mut b = [0u8; 4];
        t.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn entries_are_programmed_by_dwords_and_read_back() {
        let mut t = MsixTable::new(3, PBA);
        assert_eq!((t.len(), t.is_empty(), t.enabled()), (3, false, false));
        assert_eq!(r32(&t, 12), 1, "masked at power-on");
        assert!(w32(&mut t, 16, 0xfee0_1000));
        assert!(w32(&mut t, 20, 0x1));
        assert!(w32(&mut t, 24, 0x4041));
        assert!(w32(&mut t, 28, 0));
        assert_eq!(
            t.entry(1),
            Some(&MsixEntry {
                address: 0x1_fee0_1000,
                data: 0x4041,
                masked: false
            })
        );
        let mut w = [0u8; 2];
        t.read(17, &mut w);
        assert_eq!(
            u16::from_le_bytes(w),
            0xe010,
            "unaligned reads of the dword"
        );
        // Not dword-sized or not aligned, past the table, or into the PBA: dropped.
        assert!(!t.write(16, &[0; 2]));
        assert!(!w32(&mut t, 18, 0));
        assert!(!w32(&mut t, 48, 0));
        assert_eq!(r32(&t, 48), 0);
        assert!(!w32(&mut t, PBA, 0xffff_ffff));
        assert_eq!(t.entry(3), None);
    }

    #[test]
    fn masked_vectors_pend_and_are_delivered_on_unmask() {
        let mut t = MsixTable::new(3, PBA);
        w32(&mut t, 0x20, 0xfee0_0000);
        w32(&mut t, 0x28, 0x31);
        t.set_control(CONTROL_ENABLE);
        assert!(t.enabled());
        assert_eq!(t.signal(2), None, "masked: pending");
        assert!(t.is_pending(2));
        assert_eq!(r32(&t, PBA), 0b100);
        assert_eq!(t.signal(7), None, "no such vector");
        assert!(!t.is_pending(7));
        assert!(t.take_deliverable().is_empty(), "still masked");
        w32(&mut t, 0x2c, 0);
        let sent = t.take_deliverable();
        assert_eq!(sent.len(), 1);
        assert_eq!(
            (sent[0].0, sent[0].1.address, sent[0].1.data),
            (2, 0xfee0_0000, 0x31)
        );
        assert_eq!(r32(&t, PBA), 0);
        assert_eq!(
            t.signal(2).map(|e| e.data),
            Some(0x31),
            "unmasked: sent at once"
        );
        // The function mask holds every vector back.
        t.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK);
        assert_eq!(t.signal(2), None);
        assert!(t.take_deliverable().is_empty());
        t.set_control(CONTROL_ENABLE);
        assert_eq!(t.take_deliverable().len(), 1);
        // Reset: disabled, masked, nothing pending.
        t.signal(0);
        t.reset();
        assert!(!t.enabled());
        assert!(!t.is_pending(0));
        assert_eq!(t.entry(2), Some(&MsixEntry::masked()));
    }

    #[test]
    fn the_capability_points_at_the_table_and_pba() {
        let mut c = PciConfig::new(0x1af4, 0x1042, 0x01_00_00, 1);
        add_capability(&mut c, 0x40, 3, 1, 0, PBA as u32).unwrap();
        assert_eq!(c.capabilities(), [(0x40, CAP_ID_MSIX)]);
        assert_eq!(c.value(0x42, 2), 2, "table size - 1");
        assert_eq!(c.value(0x44, 4), 1);
        assert_eq!(c.value(0x48, 4), 0x801);
        c.write(0x42, &[0xff, 0xff]);
        assert_eq!(
            control(&c, 0x40),
            0xc002,
            "only enable and mask are writable"
        );
        assert_eq!(
            c.value(regs::STATUS, 2) as u16 & regs::STATUS_CAP_LIST,
            regs::STATUS_CAP_LIST
        );
        assert!(add_capability(&mut c, 0x44, 3, 1, 0, 0).is_err(), "overlap");
    }
}
