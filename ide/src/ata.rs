//! ATA commands (ACS): what each opcode does to the task file, the PIO window and the
//! I/O queue. A command the device does not know, or one with impossible parameters,
//! aborts (ERR with ABRT in the error register) and raises the interrupt.

use block_dma::{DmaDirection, Errno};
use tracing::debug;

use crate::channel::{Channel, DmaSetup, DmaThen, Pending, Rw, Xfer};
use crate::identify::MAX_MULT_SECTORS;
use crate::regs::cmd::*;
use crate::regs::*;

/// How a read/write command moves its data.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Pio,
    Multiple,
    Dma,
}

impl Channel {
    /// A write of the command register.
    pub(crate) fn command(&mut self, cmd: u8) {
        let unit = self.unit;
        if self.dev(unit).is_none() {
            // Commands to an absent device are ignored.
            return;
        }
        // A new command acknowledges the interrupt of the last one.
        self.irq_pending = false;
        let Some(d) = self.dev(unit) else { return };
        let is_cd = d.is_cd();
        if d.regs.status & (BSY | DRQ) != 0 && !(cmd == DEVICE_RESET && is_cd) {
            // Only DEVICE RESET (to a packet device) is accepted while busy.
            debug!(cmd, "ide: command while BSY/DRQ ignored");
            return;
        }
        if is_cd {
            return self.cd_ata_command(unit, cmd);
        }
        match cmd {
            IDENTIFY => self.identify(unit),
            READ_SECTORS | READ_SECTORS_NORETRY => self.rw(unit, false, false, Mode::Pio),
            READ_SECTORS_EXT => self.rw(unit, false, true, Mode::Pio),
            READ_MULTIPLE => self.rw(unit, false, false, Mode::Multiple),
            READ_MULTIPLE_EXT => self.rw(unit, false, true, Mode::Multiple),
            WRITE_SECTORS | WRITE_SECTORS_NORETRY => self.rw(unit, true, false, Mode::Pio),
            WRITE_SECTORS_EXT => self.rw(unit, true, true, Mode::Pio),
            WRITE_MULTIPLE => self.rw(unit, true, false, Mode::Multiple),
            WRITE_MULTIPLE_EXT => self.rw(unit, true, true, Mode::Multiple),
            READ_DMA | READ_DMA_NORETRY => self.rw(unit, false, false, Mode::Dma),
            READ_DMA_EXT => self.rw(unit, false, true, Mode::Dma),
            WRITE_DMA | WRITE_DMA_NORETRY => self.rw(unit, true, false, Mode::Dma),
            WRITE_DMA_EXT => self.rw(unit, true, true, Mode::Dma),
            READ_VERIFY | READ_VERIFY_NORETRY => self.verify(unit, false),
            READ_VERIFY_EXT => self.verify(unit, true),
            SET_MULTIPLE => {
                let n = u16::from(d.regs.nsector);
                if n > MAX_MULT_SECTORS || !(n == 0 || n.is_power_of_two()) {
                    d.abort();
                } else {
                    d.mult = n;
                    d.ok();
                }
                self.raise_irq();
            }
            FLUSH_CACHE | FLUSH_CACHE_EXT => {
                d.regs.status = DRDY | BSY;
                if !self.queue_flush(unit) {
                    self.finish_abort(unit);
                }
            }
            SET_FEATURES => {
                self.set_features(unit);
                self.raise_irq();
            }
            INITIALIZE_PARAMS => {
                let (spt, heads) = (d.regs.nsector, (d.regs.select & 0x0f) + 1);
                if spt == 0 {
                    d.abort();
                } else {
                    d.spt = u16::from(spt);
                    d.heads = u16::from(heads);
                    let total = u64::from(d.spt) * u64::from(d.heads);
                    d.cylinders = (d.sectors / total).clamp(1, 65535) as u16;
                    d.ok();
                }
                self.raise_irq();
            }
            SEEK | RECALIBRATE..=0x1f => {
                d.ok();
                self.raise_irq();
            }
            CHECK_POWER_MODE => {
                d.regs.nsector = if d.standby { 0x00 } else { 0xff };
                d.ok();
                self.raise_irq();
            }
            STANDBY | STANDBY_IMMEDIATE | IDLE | IDLE_IMMEDIATE => {
                d.standby = matches!(cmd, STANDBY | STANDBY_IMMEDIATE);
                d.ok();
                self.raise_irq();
            }
            EXECUTE_DIAGNOSTIC => self.diagnostic(),
            _ => {
                debug!(cmd, "ide-hd: unknown command aborted");
                self.finish_abort(unit);
            }
        }
    }

    /// ATA commands to a packet device: the few it accepts; anything else aborts with
    /// the packet signature in the task file (how drivers tell ATAPI from ATA).
    fn cd_ata_command(&mut self, unit: usize, cmd: u8) {
        let Some(d) = self.dev(unit) else { return };
        match cmd {
            IDENTIFY_PACKET => self.identify(unit),
            PACKET => self.packet_command(unit),
            DEVICE_RESET => {
                self.cancel_io();
                if let Some(d) = self.dev(unit) {
                    d.set_signature();
                    d.regs.status = 0;
                    d.regs.error = 0x01;
                }
            }
            EXECUTE_DIAGNOSTIC => self.diagnostic(),
            SET_FEATURES => {
                self.set_features(unit);
                self.raise_irq();
            }
            CHECK_POWER_MODE => {
                d.regs.nsector = 0xff;
                d.ok();
                self.raise_irq();
            }
            STANDBY | STANDBY_IMMEDIATE | IDLE | IDLE_IMMEDIATE | SEEK => {
                d.ok();
                self.raise_irq();
            }
            _ => {
                d.set_signature();
                self.finish_abort(unit);
            }
        }
    }

    pub(crate) fn finish_abort(&mut self, unit: usize) {
        if let Some(d) = self.dev(unit) {
            d.abort();
        }
        self.raise_irq();
    }

    fn identify(&mut self, unit: usize) {
        let Some(d) = self.dev(unit) else { return };
        let block = d.identify();
        d.ok();
        self.buf[..512].copy_from_slice(&block);
        self.start_transfer(unit, 512, Xfer::Stop);
        self.raise_irq();
    }

    fn diagnostic(&mut self) {
        for d in self.devs.iter_mut().flatten() {
            d.set_signature();
            d.regs.error = 0x01;
            d.regs.status = if d.is_cd() { 0 } else { DRDY | DSC };
        }
        self.raise_irq();
    }

    fn set_features(&mut self, unit: usize) {
        let Some(d) = self.dev(unit) else { return };
        let accepted = match d.regs.feature {
            0x02 => {
                d.write_cache = true;
                true
            }
            0x82 => {
                d.write_cache = false;
                true
            }
            0x03 => {
                let mode = d.regs.nsector;
                let valid = matches!(mode, 0x00 | 0x01 | 0x08..=0x0c | 0x20..=0x22 | 0x40..=0x45);
                if valid && mode >= 0x20 {
                    d.xfer_mode = mode;
                }
                valid
            }
            // Read look-ahead and power-on defaults: nothing to do.
            0x55 | 0xaa | 0x66 | 0xcc => true,
            _ => false,
        };
        if accepted { d.ok() } else { d.abort() }
    }

    /// Validates a read/write command: the range is on the medium. Returns the start.
    fn range(&mut self, unit: usize, ext: bool) -> Option<(u64, u32)> {
        let d = self.dev(unit)?;
        let n = d.count(ext);
        let lba = d.start_sector(ext)?;
        let end = lba.checked_add(u64::from(n))?;
        (end <= d.sectors && d.drive.is_some()).then_some((lba, n))
    }

    fn verify(&mut self, unit: usize, ext: bool) {
        match self.range(unit, ext) {
            Some((lba, n)) => {
                if let Some(d) = self.dev(unit) {
                    d.set_sector(lba + u64::from(n) - 1, ext);
                    d.ok();
                }
                self.raise_irq();
            }
            None => self.finish_abort(unit),
        }
    }

    fn rw(&mut self, unit: usize, write: bool, ext: bool, mode: Mode) {
        let Some((lba, n)) = self.range(unit, ext) else {
            return self.finish_abort(unit);
        };
        let Some(d) = self.dev(unit) else { return };
        let block = match mode {
            Mode::Multiple if d.mult == 0 => return self.finish_abort(unit),
            Mode::Multiple => u32::from(d.mult),
            _ => 1,
        };
        let rw = Rw {
            unit,
            lba,
            remaining: n,
            block,
            ext,
        };
        match (mode, write) {
            (Mode::Dma, _) => {
                d.regs.status = DRDY | DSC | DRQ;
                d.regs.error = 0;
                let setup = DmaSetup {
                    unit,
                    offset: lba * 512,
                    bytes: u64::from(n) * 512,
                    to_disk: write,
                    then: DmaThen::Ata {
                        unit,
                        write,
                        lba,
                        n,
                        ext,
                        stay_active: false,
                    },
                };
                self.dma = Some(setup);
                self.dma_ready();
            }
            (_, false) => self.ata_pio_read_chunk(rw),
            (_, true) => {
                d.regs.status = DRDY | DSC;
                d.regs.error = 0;
                let len = block.min(n);
                self.start_transfer(unit, len as usize * 512, Xfer::AtaWrite(rw, len));
            }
        }
    }

    /// Starts reading the next DRQ block of a PIO read.
    pub(crate) fn ata_pio_read_chunk(&mut self, rw: Rw) {
        let n = rw.block.min(rw.remaining);
        if let Some(d) = self.dev(rw.unit) {
            d.regs.status = DRDY | DSC | BSY;
            d.regs.error = 0;
        }
        self.pending = Some(Pending::AtaRead(rw, n));
        self.queue_pio(rw.unit, DmaDirection::Read, rw.lba * 512, n as usize * 512);
    }

    pub(crate) fn ata_read_done(&mut self, rw: Rw, n: u32, res: Result<u64, Errno>) {
        if res.is_err() || !self.fetch_after_read(n as usize * 512) {
            return self.finish_abort(rw.unit);
        }
        let next = self.advance(rw, n);
        self.start_transfer(rw.unit, n as usize * 512, Xfer::AtaRead(next));
        self.raise_irq();
    }

    /// `n` sectors of `rw` are done: the device's address registers move on.
    fn advance(&mut self, rw: Rw, n: u32) -> Rw {
        let next = Rw {
            lba: rw.lba + u64::from(n),
            remaining: rw.remaining - n,
            ..rw
        };
        if let Some(d) = self.dev(rw.unit) {
            d.ok();
            d.set_sector(next.lba, rw.ext);
            d.regs.nsector = next.remaining as u8;
        }
        next
    }

    /// The guest filled a PIO write block: write it.
    pub(crate) fn submit_pio_write(&mut self, rw: Rw, n: u32) {
        if let Some(d) = self.dev(rw.unit) {
            d.regs.status = DRDY | DSC | BSY;
        }
        self.pending = Some(Pending::AtaWrite(rw, n));
        self.queue_pio(rw.unit, DmaDirection::Write, rw.lba * 512, n as usize * 512);
    }

    pub(crate) fn ata_write_done(&mut self, rw: Rw, n: u32, res: Result<u64, Errno>) {
        if res.is_err() {
            return self.finish_abort(rw.unit);
        }
        let next = self.advance(rw, n);
        if next.remaining > 0 {
            let len = next.block.min(next.remaining);
            self.start_transfer(rw.unit, len as usize * 512, Xfer::AtaWrite(next, len));
        }
        self.raise_irq();
    }
}
