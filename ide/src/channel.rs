//! One IDE channel (a cable with up to two devices): register access, the PIO data
//! window, the I/O the channel waits for, and its bus-master registers.
//!
//! Everything here runs under the channel's lock and never blocks; work that needs the
//! image is queued in [`Channel::jobs`] and submitted by the controller after the lock
//! is dropped ([`crate::controller`]). A completion comes back through
//! [`Channel::io_done`] with the generation it was started under: a reset in between
//! bumps the generation and the stale completion is dropped.

use block_dma::{DmaDirection, DmaMemory, Drive, Errno, SgList};
use ram_block::{Backing, RamBlock, RamList};
use tracing::warn;
use vm_memory::{Bytes, GuestAddress};

use crate::bmdma::Bm;
use crate::device::Device;
use crate::regs::*;

/// Size of the channel's PIO buffer (the most a PIO chunk reads or writes at once).
pub(crate) const PIO_BUF: usize = 64 * 1024;

/// Sectors of a CD read fetched per PIO chunk.
pub(crate) const CD_PIO_CHUNK: u64 = (PIO_BUF / 2048) as u64;

/// What ends when the guest has moved the last byte of the PIO window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Xfer {
    /// Nothing (no DRQ).
    None,
    /// A data-in block with nothing after it (IDENTIFY).
    Stop,
    /// ATA PIO read: `remaining` sectors still to read after this block.
    AtaRead(Rw),
    /// ATA PIO write: the guest filled `n` sectors at `rw.lba`.
    AtaWrite(Rw, u32),
    /// The 12-byte ATAPI packet.
    Packet,
    /// ATAPI data-in from the buffer, `len` bytes, blocks of `bcl`; then `more`.
    AtapiIn {
        len: usize,
        bcl: usize,
        more: Option<CdRead>,
    },
}

/// Progress of an ATA PIO command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rw {
    pub unit: usize,
    pub lba: u64,
    pub remaining: u32,
    /// Sectors per DRQ block (1, or the multiple count).
    pub block: u32,
    pub ext: bool,
}

/// What is left of an ATAPI read (2048-byte sectors).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CdRead {
    pub lba: u64,
    pub remaining: u64,
    pub bcl: usize,
}

/// The I/O a channel waits for, and what its completion means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pending {
    AtaRead(Rw, u32),
    AtaWrite(Rw, u32),
    Flush(usize),
    CdRead(usize, CdRead, u64),
    Dma(DmaThen),
    /// A write is done; with the write cache off, its flush runs before the command
    /// completes.
    WriteFlush(Written),
}

/// A write waiting for its flush (write cache disabled).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Written {
    Pio(Rw, u32),
    Dma(DmaThen),
}

/// A DMA command waiting for (or running through) the bus master.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DmaSetup {
    pub unit: usize,
    /// Byte offset on the medium (unused for `Buffer`).
    pub offset: u64,
    pub bytes: u64,
    pub to_disk: bool,
    pub then: DmaThen,
}

/// What a DMA transfer is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum DmaThen {
    /// ATA READ/WRITE DMA of `n` sectors at `lba`.
    Ata {
        unit: usize,
        write: bool,
        lba: u64,
        n: u32,
        ext: bool,
        stay_active: bool,
    },
    /// ATAPI read, or an ATAPI reply from the PIO buffer (`from_buffer`).
    Atapi {
        unit: usize,
        from_buffer: bool,
        stay_active: bool,
    },
}

/// Work for the controller's event loop.
pub(crate) struct Job {
    pub epoch: u64,
    pub drive: Drive,
    pub op: JobOp,
}

/// The backend side of a [`Job`].
pub(crate) enum JobOp {
    /// Between the medium and the PIO buffer (`mem`: the buffer the job was queued
    /// with; a reset replaces the channel's).
    Pio {
        mem: DmaMemory,
        dir: DmaDirection,
        offset: u64,
        len: usize,
    },
    /// Between the medium and guest memory.
    Dma {
        dir: DmaDirection,
        offset: u64,
        sg: SgList,
    },
    Flush,
}

/// A fresh PIO buffer: one RAM block of [`PIO_BUF`] bytes at address 0 of its own
/// address space, which only the channel and its backend requests see.
pub(crate) fn pio_ram() -> crate::Result<RamList> {
    let ram = RamList::new();
    let block = RamBlock::new(
        "ide-pio",
        GuestAddress(0),
        PIO_BUF as u64,
        Backing::Anonymous { huge_pages: false },
    )
    .map_err(|e| crate::Error::Ram(e.to_string()))?;
    ram.add(block)
        .map_err(|e| crate::Error::Ram(e.to_string()))?;
    Ok(ram)
}

/// One channel's state.
pub(crate) struct Channel {
    pub devs: [Option<Device>; 2],
    /// The selected device (DEV bit of the last device/head write).
    pub unit: usize,
    /// Device control register.
    pub ctrl: u8,
    /// INTRQ as the devices drive it (before nIEN).
    pub irq_pending: bool,
    /// The level last driven onto the interrupt line.
    pub line: bool,
    pub buf: Vec<u8>,
    pub pos: usize,
    pub end: usize,
    pub xfer: Xfer,
    /// The unit whose data the window holds.
    pub xfer_unit: usize,
    pub pending: Option<Pending>,
    pub dma: Option<DmaSetup>,
    pub bm: Bm,
    /// Bumped by resets: completions of older jobs are dropped.
    pub epoch: u64,
    pub jobs: Vec<Job>,
    /// Generations whose in-flight request is to be cancelled.
    pub cancelled: Vec<u64>,
    /// The PIO buffer as the backend sees it (a private RAM block at address 0).
    pub pio_ram: RamList,
    /// Guest RAM (PRD tables, ATAPI replies sent by DMA).
    pub guest: RamList,
}

impl Channel {
    pub(crate) fn new(devs: [Option<Device>; 2], pio_ram: RamList, guest: RamList) -> Channel {
        Channel {
            devs,
            unit: 0,
            ctrl: 0,
            irq_pending: false,
            line: false,
            buf: vec![0; PIO_BUF],
            pos: 0,
            end: 0,
            xfer: Xfer::None,
            xfer_unit: 0,
            pending: None,
            dma: None,
            bm: Bm::default(),
            epoch: 0,
            jobs: Vec::new(),
            cancelled: Vec::new(),
            pio_ram,
            guest,
        }
    }

    pub(crate) fn dev(&mut self, unit: usize) -> Option<&mut Device> {
        self.devs.get_mut(unit)?.as_mut()
    }

    /// The selected device, if present.
    pub(crate) fn cur(&mut self) -> Option<&mut Device> {
        let unit = self.unit;
        self.dev(unit)
    }

    /// A device raises INTRQ; the bus master sees it in its status.
    ///
    /// With nIEN set the device does not drive INTRQ, so the bus master does not see
    /// it either (QEMU sets the bit from the raised line).
    pub(crate) fn raise_irq(&mut self) {
        self.irq_pending = true;
        if self.ctrl & NIEN == 0 {
            self.bm.status |= BM_ST_INT;
        }
    }

    /// The level the interrupt line should have.
    pub(crate) fn irq_level(&self) -> bool {
        self.irq_pending && self.ctrl & NIEN == 0
    }

    /// A read of the command block at `reg` (1..=7; the data port is [`Self::data_read`]).
    pub(crate) fn read_reg(&mut self, reg: u64) -> u8 {
        let hob = self.ctrl & HOB != 0;
        let both_absent = self.devs.iter().all(Option::is_none);
        let unit = self.unit;
        let Some(d) = self.devs[unit].as_ref().filter(|_| !both_absent) else {
            // Nothing there: the register reads as zero (QEMU), so firmware sees no
            // device (BSY and DRQ clear, no signature).
            if reg == 7 {
                self.irq_pending = false;
            }
            return 0;
        };
        let r = &d.regs;
        let v = match (reg, hob) {
            (1, false) => r.error,
            (1, true) => r.hob_feature,
            (2, false) => r.nsector,
            (2, true) => r.hob_nsector,
            (3, false) => r.sector,
            (3, true) => r.hob_sector,
            (4, false) => r.lcyl,
            (4, true) => r.hob_lcyl,
            (5, false) => r.hcyl,
            (5, true) => r.hob_hcyl,
            (6, _) => r.select,
            _ => r.status,
        };
        if reg == 7 {
            // Reading the status register acknowledges the interrupt.
            self.irq_pending = false;
        }
        v
    }

    /// Alternate status (no interrupt acknowledge).
    pub(crate) fn alt_status(&mut self) -> u8 {
        let both_absent = self.devs.iter().all(Option::is_none);
        match self.cur() {
            Some(d) if !both_absent => d.regs.status,
            _ => 0,
        }
    }

    /// A write of the command block at `reg` (1..=7).
    pub(crate) fn write_reg(&mut self, reg: u64, v: u8) {
        if reg != 7 {
            self.ctrl &= !HOB;
        }
        match reg {
            1..=5 => {
                for d in self.devs.iter_mut().flatten() {
                    let r = &mut d.regs;
                    let (cur, hob) = match reg {
                        1 => (&mut r.feature, &mut r.hob_feature),
                        2 => (&mut r.nsector, &mut r.hob_nsector),
                        3 => (&mut r.sector, &mut r.hob_sector),
                        4 => (&mut r.lcyl, &mut r.hob_lcyl),
                        _ => (&mut r.hcyl, &mut r.hob_hcyl),
                    };
                    *hob = *cur;
                    *cur = v;
                }
            }
            6 => {
                // Bits 7 and 5 are obsolete and read as one; the DEV bit reads back
                // as written (SeaBIOS detects a device 1 by reading it back).
                for d in self.devs.iter_mut().flatten() {
                    d.regs.select = v | 0xa0;
                }
                self.unit = usize::from(v & SELECT_DEV1 != 0);
            }
            7 => self.command(v),
            _ => {}
        }
    }

    /// A write of the device control register.
    pub(crate) fn write_ctrl(&mut self, v: u8) {
        let old = self.ctrl;
        if old & SRST == 0 && v & SRST != 0 {
            self.cancel_io();
            for d in self.devs.iter_mut().flatten() {
                d.regs.status = BSY | DSC;
                d.regs.error = 0x01;
            }
        } else if old & SRST != 0 && v & SRST == 0 {
            for d in self.devs.iter_mut().flatten() {
                d.reset();
            }
            self.irq_pending = false;
        }
        self.ctrl = v;
    }

    /// Drops the transfer and any I/O in progress (a reset): later completions of
    /// what was started are ignored.
    pub(crate) fn cancel_io(&mut self) {
        if self.pending.is_some() {
            self.cancelled.push(self.epoch);
            // The cancelled request may still write into its PIO buffer until its
            // completion: later commands get a buffer of their own.
            match pio_ram() {
                Ok(ram) => self.pio_ram = ram,
                Err(e) => warn!("ide: keeping the PIO buffer after a reset: {e}"),
            }
        }
        self.epoch += 1;
        self.pending = None;
        self.dma = None;
        self.jobs.clear();
        self.stop_transfer();
        self.bm.status &= !BM_ST_ACTIVE;
    }

    /// A full reset of the channel (power on, PCI reset).
    pub(crate) fn reset(&mut self) {
        self.cancel_io();
        for d in self.devs.iter_mut().flatten() {
            d.reset();
        }
        self.unit = 0;
        self.ctrl = 0;
        self.irq_pending = false;
        self.bm = Bm::default();
    }

    /// Opens a PIO window of `len` bytes of `buf` for `unit`; sets DRQ.
    pub(crate) fn start_transfer(&mut self, unit: usize, len: usize, xfer: Xfer) {
        self.pos = 0;
        self.end = len.min(self.buf.len());
        self.xfer = xfer;
        self.xfer_unit = unit;
        if let Some(d) = self.dev(unit) {
            if d.regs.status & ERR == 0 {
                d.regs.status |= DRQ;
            }
        }
    }

    /// Closes the PIO window; clears DRQ.
    pub(crate) fn stop_transfer(&mut self) {
        self.pos = 0;
        self.end = 0;
        self.xfer = Xfer::None;
        let unit = self.xfer_unit;
        if let Some(d) = self.dev(unit) {
            d.regs.status &= !DRQ;
        }
    }

    fn window_open(&mut self) -> bool {
        let unit = self.unit;
        self.xfer != Xfer::None
            && self.xfer_unit == unit
            && self.pos < self.end
            && self.dev(unit).is_some_and(|d| d.regs.status & DRQ != 0)
    }

    /// A read of the data port (any width).
    pub(crate) fn data_read(&mut self, out: &mut [u8]) {
        out.fill(0);
        if !self.window_open() {
            return;
        }
        let n = out.len().min(self.end - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        if self.pos >= self.end {
            self.end_of_window();
        }
    }

    /// A write of the data port (any width).
    pub(crate) fn data_write(&mut self, data: &[u8]) {
        if !self.window_open() {
            return;
        }
        let n = data.len().min(self.end - self.pos);
        self.buf[self.pos..self.pos + n].copy_from_slice(&data[..n]);
        self.pos += n;
        if self.pos >= self.end {
            self.end_of_window();
        }
    }

    /// The guest moved the last byte of the window.
    fn end_of_window(&mut self) {
        let xfer = self.xfer;
        match xfer {
            Xfer::None => {}
            Xfer::Stop => self.stop_transfer(),
            Xfer::AtaRead(rw) => {
                self.stop_transfer();
                if rw.remaining > 0 {
                    self.ata_pio_read_chunk(rw);
                }
            }
            Xfer::AtaWrite(rw, n) => {
                self.stop_transfer();
                self.submit_pio_write(rw, n);
            }
            Xfer::Packet => {
                self.stop_transfer();
                let mut pkt = [0u8; 12];
                pkt.copy_from_slice(&self.buf[..12]);
                let unit = self.xfer_unit;
                self.atapi_packet(unit, pkt);
            }
            Xfer::AtapiIn { len, bcl, more } => self.atapi_next_block(len, bcl, more),
        }
    }

    /// Queues a read of `len` bytes at `offset` into the PIO buffer.
    pub(crate) fn queue_pio(&mut self, unit: usize, dir: DmaDirection, offset: u64, len: usize) {
        let epoch = self.epoch;
        let Some(drive) = self.dev(unit).and_then(|d| d.drive.clone()) else {
            return;
        };
        if dir == DmaDirection::Write {
            let mem = self.pio_ram.memory();
            if mem.write_slice(&self.buf[..len], GuestAddress(0)).is_err() {
                return;
            }
        }
        self.jobs.push(Job {
            epoch,
            drive,
            op: JobOp::Pio {
                mem: DmaMemory::new(self.pio_ram.clone()),
                dir,
                offset,
                len,
            },
        });
    }

    /// Queues a flush of `unit`'s medium.
    pub(crate) fn queue_flush(&mut self, unit: usize) -> bool {
        let epoch = self.epoch;
        let Some(drive) = self.dev(unit).and_then(|d| d.drive.clone()) else {
            return false;
        };
        self.pending = Some(Pending::Flush(unit));
        self.jobs.push(Job {
            epoch,
            drive,
            op: JobOp::Flush,
        });
        true
    }

    /// Copies `len` bytes from the PIO buffer's RAM into `buf` (after a read).
    fn fetch_pio(&mut self, len: usize) -> bool {
        let mem = self.pio_ram.memory();
        mem.read_slice(&mut self.buf[..len], GuestAddress(0))
            .is_ok()
    }

    /// A job started under `epoch` finished with `res`.
    pub(crate) fn io_done(&mut self, epoch: u64, res: Result<u64, Errno>) {
        if epoch != self.epoch {
            return;
        }
        let Some(pending) = self.pending.take() else {
            return;
        };
        match pending {
            Pending::AtaWrite(rw, n) if res.is_ok() && self.write_through(rw.unit) => {
                self.flush_then(rw.unit, Written::Pio(rw, n))
            }
            Pending::Dma(
                then @ DmaThen::Ata {
                    unit, write: true, ..
                },
            ) if res.is_ok() && self.write_through(unit) => {
                self.flush_then(unit, Written::Dma(then))
            }
            Pending::WriteFlush(Written::Pio(rw, n)) => self.ata_write_done(rw, n, res),
            Pending::WriteFlush(Written::Dma(then)) => self.dma_done(then, res),
            Pending::AtaRead(rw, n) => self.ata_read_done(rw, n, res),
            Pending::AtaWrite(rw, n) => self.ata_write_done(rw, n, res),
            Pending::Flush(unit) => {
                if let Some(d) = self.dev(unit) {
                    if res.is_ok() { d.ok() } else { d.abort() }
                }
                self.raise_irq();
            }
            Pending::CdRead(unit, rd, n) => self.cd_read_done(unit, rd, n, res),
            Pending::Dma(then) => self.dma_done(then, res),
        }
    }

    /// Whether `unit`'s writes must reach the medium before they complete (SET
    /// FEATURES disabled its write cache).
    fn write_through(&mut self, unit: usize) -> bool {
        self.dev(unit).is_some_and(|d| !d.write_cache)
    }

    /// Flushes `unit`'s medium, then completes `written`.
    fn flush_then(&mut self, unit: usize, written: Written) {
        if self.queue_flush(unit) {
            self.pending = Some(Pending::WriteFlush(written));
        }
    }

    /// Completes a PIO read chunk: copies the data in and opens the window.
    pub(crate) fn fetch_after_read(&mut self, len: usize) -> bool {
        self.fetch_pio(len)
    }
}
