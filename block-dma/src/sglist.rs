//! [`SgList`]: the guest ranges of one DMA transfer (QEMU's `QEMUSGList`).

use smallvec::SmallVec;

/// One guest-physical range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SgEntry {
    /// Guest-physical address.
    pub addr: u64,
    /// Length in bytes.
    pub len: u64,
}

/// A scatter-gather list of guest ranges, in transfer order. Up to four entries live
/// inline (a virtio request's data descriptors, a PRD table's usual size).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SgList {
    entries: SmallVec<[SgEntry; 4]>,
    total: u64,
}

impl SgList {
    /// An empty list.
    pub fn new() -> SgList {
        SgList::default()
    }

    /// Appends `[addr, addr + len)`. Zero-length entries are skipped. Guest input is
    /// taken as is; mapping checks every range.
    pub fn push(&mut self, addr: u64, len: u64) {
        if len == 0 {
            return;
        }
        self.total = self.total.saturating_add(len);
        self.entries.push(SgEntry { addr, len });
    }

    /// The entries.
    pub fn entries(&self) -> &[SgEntry] {
        &self.entries
    }

    /// Total bytes.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether it covers no bytes.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }
}

impl FromIterator<(u64, u64)> for SgList {
    fn from_iter<I: IntoIterator<Item = (u64, u64)>>(iter: I) -> SgList {
        let mut sg = SgList::new();
        for (addr, len) in iter {
            sg.push(addr, len);
        }
        sg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_lengths_are_skipped_and_totals_saturate() {
        let sg: SgList = [(0x1000, 0), (0x2000, 512), (u64::MAX, u64::MAX)]
            .into_iter()
            .collect();
        assert_eq!(sg.entries().len(), 2);
        assert_eq!(sg.len(), u64::MAX);
        assert!(SgList::new().is_empty());
    }
}
