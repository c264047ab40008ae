//! Splitting an untrusted descriptor chain into its driver-written and device-written
//! parts, and copying small structures in and out of guest memory.

use block_dma::SgList;
use ram_block::RamBlocks;
use virtio_core::Desc;

/// A chain's two halves.
pub(crate) struct Chain {
    /// Driver-written (device-readable) buffers, in order.
    pub(crate) out: SgList,
    /// Device-writable buffers, in order.
    pub(crate) inn: SgList,
    /// Every readable descriptor came before every writable one (the spec's rule).
    pub(crate) ordered: bool,
}

pub(crate) fn split(descs: &[Desc]) -> Chain {
    let (mut out, mut inn, mut ordered) = (SgList::new(), SgList::new(), true);
    for d in descs {
        if d.write {
            inn.push(d.addr, u64::from(d.len));
        } else {
            ordered &= inn.is_empty();
            out.push(d.addr, u64::from(d.len));
        }
    }
    Chain { out, inn, ordered }
}

/// `sg` cut after `n` bytes.
pub(crate) fn split_at(sg: &SgList, n: u64) -> (SgList, SgList) {
    let (mut head, mut tail, mut left) = (SgList::new(), SgList::new(), n);
    for e in sg.entries() {
        if left >= e.len {
            head.push(e.addr, e.len);
            left -= e.len;
        } else if left > 0 {
            head.push(e.addr, left);
            tail.push(e.addr + left, e.len - left);
            left = 0;
        } else {
            tail.push(e.addr, e.len);
        }
    }
    (head, tail)
}

/// The first `n` bytes of `sg`, or `None` if it is shorter or not guest RAM.
pub(crate) fn read(mem: &RamBlocks, sg: &SgList, n: usize) -> Option<Vec<u8>> {
    scsi::read_sg(mem, sg, n)
}

/// Fills `out` from the start of `sg` (no allocation); false if it is shorter or not
/// guest RAM.
pub(crate) fn read_into(mem: &RamBlocks, sg: &SgList, out: &mut [u8]) -> bool {
    scsi::read_sg_into(mem, sg, out).is_some()
}

/// Writes `data` to the start of `sg`; false if it does not fit or is not guest RAM.
pub(crate) fn write(mem: &RamBlocks, sg: &SgList, data: &[u8]) -> bool {
    sg.len() >= data.len() as u64 && scsi::write_sg(mem, sg, data).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_order_and_cuts_inside_a_descriptor() {
        let d = |addr, len, write| Desc { addr, len, write };
        let c = split(&[d(0, 10, false), d(100, 20, true), d(200, 5, true)]);
        assert!(c.ordered);
        let (h, t) = split_at(&c.inn, 12);
        assert_eq!(h.len(), 12);
        assert_eq!(t.entries()[0].addr, 112);
        assert_eq!(t.len(), 13);
        assert!(!split(&[d(0, 1, true), d(1, 1, false)]).ordered);
    }
}
