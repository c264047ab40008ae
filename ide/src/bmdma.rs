//! The PIIX3 bus master (BAR4: per channel a command register, a status register and
//! the PRD table pointer) and the PRD table walk.
//!
//! Semantics (PIIX3 datasheet, QEMU's `hw/ide/pci.c` and `ide_dma_cb`):
//! - a PRD entry is 8 bytes: the region's address, its byte count in bits 0..16 (bit 0
//!   ignored; 0 means 64 KiB) and end-of-table in bit 31. The walk stops at the EOT
//!   entry or after one page of table (512 entries), QEMU's fail-safe.
//! - table shorter than the transfer: nothing is transferred, Active clears and no
//!   interrupt is raised (the datasheet's "PRD exhausted, no interrupt" error state).
//! - table longer than the transfer: the transfer completes, the interrupt is raised
//!   and Active stays set.
//! - a region that crosses a 64 KiB boundary is transferred as one contiguous region
//!   (QEMU does the same; the datasheet forbids such tables but real drivers do not
//!   produce them).
//! - a PRD table or a region outside guest RAM: the command aborts, the bus master's
//!   Error bit is set and the interrupt raised; the process is unaffected.

use block_dma::{DmaDirection, Errno, SgList};
use ram_block::RamList;
use vm_memory::{Bytes, GuestAddress};

use crate::channel::{Channel, DmaThen, Job, JobOp, Pending};
use crate::regs::*;

/// One channel's bus-master registers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Bm {
    pub cmd: u8,
    pub status: u8,
    pub prd: u32,
}

/// Most PRD entries walked for one transfer (one page of table).
pub(crate) const MAX_PRD_ENTRIES: u64 = 512;

/// The outcome of a PRD walk.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Prd {
    /// The table (or part of it) is not in RAM.
    Fault,
    /// The table ends before `need` bytes.
    Short,
    /// The regions for exactly `need` bytes; `stay_active` when the table goes on.
    Ok { sg: SgList, stay_active: bool },
}

/// Walks the PRD table at `table` for a transfer of `need` bytes.
pub(crate) fn walk_prd(ram: &RamList, table: u32, need: u64) -> Prd {
    let mem = ram.memory();
    let mut sg = SgList::new();
    let mut got = 0u64;
    for i in 0..MAX_PRD_ENTRIES {
        let at = u64::from(table) + 8 * i;
        let Ok(entry) = mem.read_obj::<u64>(GuestAddress(at)) else {
            return Prd::Fault;
        };
        let entry = u64::from_le(entry);
        let addr = entry as u32;
        let count = match (entry >> 32) as u32 & 0xfffe {
            0 => 0x1_0000,
            n => u64::from(n),
        };
        let eot = entry & (1 << 63) != 0;
        let take = count.min(need - got);
        sg.push(u64::from(addr), take);
        got += take;
        if got == need {
            return Prd::Ok {
                sg,
                stay_active: take < count || !eot,
            };
        }
        if eot {
            break;
        }
    }
    Prd::Short
}

impl Channel {
    /// A read of this channel's bus-master registers (`off` in 0..8).
    pub(crate) fn bm_read(&self, off: u64) -> u8 {
        match off {
            0 => self.bm.cmd,
            2 => self.bm.status,
            4..=7 => (self.bm.prd >> (8 * (off - 4))) as u8,
            _ => 0,
        }
    }

    /// A write of this channel's bus-master registers.
    pub(crate) fn bm_write(&mut self, off: u64, v: u8) {
        match off {
            0 => {
                let old = self.bm.cmd;
                self.bm.cmd = v & (BM_CMD_START | BM_CMD_WRITE);
                if old & BM_CMD_START == 0 && v & BM_CMD_START != 0 {
                    self.bm.status |= BM_ST_ACTIVE;
                    self.dma_ready();
                } else if old & BM_CMD_START != 0 && v & BM_CMD_START == 0 {
                    // Stop: a transfer already submitted completes (QEMU drains it);
                    // the bus master is no longer active.
                    self.bm.status &= !BM_ST_ACTIVE;
                }
            }
            2 => {
                let keep = self.bm.status & BM_ST_ACTIVE;
                let clear = v & (BM_ST_ERROR | BM_ST_INT);
                let rw = v & (BM_ST_DMA0 | BM_ST_DMA1);
                self.bm.status = keep | (self.bm.status & (BM_ST_ERROR | BM_ST_INT) & !clear) | rw;
            }
            4..=7 => {
                let shift = 8 * (off - 4);
                let prd = (self.bm.prd & !(0xff << shift)) | (u32::from(v) << shift);
                self.bm.prd = prd & !3;
            }
            _ => {}
        }
    }

    /// A DMA command is set up or the bus master started: run when both are true.
    pub(crate) fn dma_ready(&mut self) {
        if self.bm.cmd & BM_CMD_START == 0 || self.pending.is_some() {
            return;
        }
        let Some(setup) = self.dma.take() else {
            return;
        };
        let ram = self.guest.clone();
        match walk_prd(&ram, self.bm.prd, setup.bytes) {
            Prd::Fault => self.dma_fault(setup.then),
            Prd::Short => {
                if let Some(d) = self.dev(setup.unit) {
                    d.regs.status = DRDY | DSC;
                }
                self.bm.status &= !BM_ST_ACTIVE;
            }
            Prd::Ok { sg, stay_active } => {
                let then = with_stay(setup.then, stay_active);
                if let DmaThen::Atapi {
                    from_buffer: true, ..
                } = then
                {
                    let ok = self.copy_buffer_out(&sg);
                    self.pending = Some(Pending::Dma(then));
                    let epoch = self.epoch;
                    let res = if ok { Ok(sg.len()) } else { Err(Errno::EFAULT) };
                    return self.io_done(epoch, res);
                }
                let Some(drive) = self.dev(setup.unit).and_then(|d| d.drive.clone()) else {
                    return self.dma_fault(then);
                };
                let dir = if setup.to_disk {
                    DmaDirection::Write
                } else {
                    DmaDirection::Read
                };
                self.pending = Some(Pending::Dma(then));
                self.jobs.push(Job {
                    epoch: self.epoch,
                    drive,
                    op: JobOp::Dma {
                        dir,
                        offset: setup.offset,
                        sg,
                    },
                });
            }
        }
    }

    /// An ATAPI reply sent by DMA: copies the PIO buffer to the regions.
    fn copy_buffer_out(&self, sg: &SgList) -> bool {
        let mem = self.guest.memory();
        let mut pos = 0usize;
        for e in sg.entries() {
            let len = e.len as usize;
            let Some(src) = self.buf.get(pos..pos + len) else {
                return false;
            };
            if mem.write_slice(src, GuestAddress(e.addr)).is_err() {
                return false;
            }
            pos += len;
        }
        true
    }

    fn dma_fault(&mut self, then: DmaThen) {
        self.bm.status |= BM_ST_ERROR;
        self.pending = Some(Pending::Dma(then));
        let epoch = self.epoch;
        self.io_done(epoch, Err(Errno::EFAULT));
    }

    /// A DMA transfer finished.
    pub(crate) fn dma_done(&mut self, then: DmaThen, res: Result<u64, Errno>) {
        let stay = match then {
            DmaThen::Ata { stay_active, .. } | DmaThen::Atapi { stay_active, .. } => stay_active,
        };
        if res == Err(Errno::EFAULT) {
            self.bm.status |= BM_ST_ERROR;
        }
        if res.is_err() || !stay {
            self.bm.status &= !BM_ST_ACTIVE;
        }
        match then {
            DmaThen::Ata {
                unit, lba, n, ext, ..
            } => {
                let Some(d) = self.dev(unit) else { return };
                if res.is_ok() {
                    d.ok();
                    d.set_sector(lba + u64::from(n), ext);
                    d.regs.nsector = 0;
                } else {
                    d.abort();
                }
                self.raise_irq();
            }
            DmaThen::Atapi { unit, .. } => match res {
                Ok(_) => self.atapi_ok(unit),
                Err(_) => self.atapi_error(
                    unit,
                    crate::regs::sense::MEDIUM_ERROR,
                    crate::regs::sense::ASC_UNRECOVERED_READ,
                ),
            },
        }
    }
}

fn with_stay(then: DmaThen, stay: bool) -> DmaThen {
    match then {
        DmaThen::Ata {
            unit,
            write,
            lba,
            n,
            ext,
            ..
        } => DmaThen::Ata {
            unit,
            write,
            lba,
            n,
            ext,
            stay_active: stay,
        },
        DmaThen::Atapi {
            unit, from_buffer, ..
        } => DmaThen::Atapi {
            unit,
            from_buffer,
            stay_active: stay,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ram_block::{Backing, RamBlock};

    fn ram() -> RamList {
        let ram = RamList::new();
        let b = RamBlock::new(
            "r",
            GuestAddress(0),
            1 << 20,
            Backing::Anonymous { huge_pages: false },
        )
        .unwrap();
        ram.add(b).unwrap();
        ram
    }

    fn put(ram: &RamList, at: u64, entries: &[(u32, u16, bool)]) {
        let mem = ram.memory();
        for (i, (addr, count, eot)) in entries.iter().enumerate() {
            let v = u64::from(*addr) | u64::from(*count) << 32 | u64::from(*eot) << 63;
            mem.write_obj(v.to_le(), GuestAddress(at + 8 * i as u64))
                .unwrap();
        }
    }

    fn regions(p: &Prd) -> Vec<(u64, u64)> {
        match p {
            Prd::Ok { sg, .. } => sg.entries().iter().map(|e| (e.addr, e.len)).collect(),
            _ => vec![],
        }
    }

    #[test]
    fn zero_count_means_64k_and_odd_bit_is_ignored() {
        let r = ram();
        put(&r, 0x1000, &[(0x10000, 0, false), (0x30000, 0x201, true)]);
        let p = walk_prd(&r, 0x1000, 0x10000 + 0x200);
        assert_eq!(regions(&p), [(0x10000, 0x10000), (0x30000, 0x200)]);
        assert!(matches!(
            p,
            Prd::Ok {
                stay_active: false,
                ..
            }
        ));
    }

    #[test]
    fn a_table_longer_than_the_transfer_stays_active() {
        let r = ram();
        put(&r, 0x1000, &[(0x10000, 0x400, true)]);
        let p = walk_prd(&r, 0x1000, 0x200);
        assert_eq!(regions(&p), [(0x10000, 0x200)]);
        assert!(matches!(
            p,
            Prd::Ok {
                stay_active: true,
                ..
            }
        ));
        // Exactly used up but no EOT: the table goes on.
        put(
            &r,
            0x2000,
            &[(0x10000, 0x200, false), (0x20000, 0x200, true)],
        );
        assert!(matches!(
            walk_prd(&r, 0x2000, 0x200),
            Prd::Ok {
                stay_active: true,
                ..
            }
        ));
    }

    #[test]
    fn a_short_table_is_short_and_a_table_outside_ram_faults() {
        let r = ram();
        put(&r, 0x1000, &[(0x10000, 0x200, true)]);
        assert_eq!(walk_prd(&r, 0x1000, 0x400), Prd::Short);
        assert_eq!(walk_prd(&r, 0xfff0_0000, 0x200), Prd::Fault);
        // A table running off the end of RAM faults at the first entry outside.
        put(&r, (1 << 20) - 8, &[(0x10000, 0x200, false)]);
        assert_eq!(walk_prd(&r, (1 << 20) - 8, 0x400), Prd::Fault);
    }

    #[test]
    fn the_walk_stops_after_one_page_of_table() {
        let r = ram();
        let entries: Vec<_> = (0..600).map(|_| (0x10000u32, 2u16, false)).collect();
        put(&r, 0x2000, &entries);
        assert_eq!(walk_prd(&r, 0x2000, 2 * 513), Prd::Short);
        assert!(matches!(walk_prd(&r, 0x2000, 2 * 512), Prd::Ok { .. }));
    }

    #[test]
    fn a_region_crossing_64k_is_one_contiguous_region() {
        let r = ram();
        put(&r, 0x1000, &[(0x1ff00, 0x200, true)]);
        assert_eq!(regions(&walk_prd(&r, 0x1000, 0x200)), [(0x1ff00, 0x200)]);
    }
}
