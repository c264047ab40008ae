//! One device on a channel: its task file, its kind (disk or CD/DVD drive) and what the
//! guest set (multiple count, transfer mode, write cache, logical geometry).

use block_dma::Drive;

use crate::atapi::Atapi;
use crate::identify::{self, MAX_MULT_SECTORS, Strings};
use crate::regs::*;

/// The task file registers of one device. Writes from the guest go to both devices of
/// a channel (as on the cable); reads come from the selected one.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Regs {
    pub feature: u8,
    pub nsector: u8,
    pub sector: u8,
    pub lcyl: u8,
    pub hcyl: u8,
    pub hob_feature: u8,
    pub hob_nsector: u8,
    pub hob_sector: u8,
    pub hob_lcyl: u8,
    pub hob_hcyl: u8,
    pub select: u8,
    pub status: u8,
    pub error: u8,
}

pub(crate) enum Kind {
    Disk,
    Cdrom(Box<Atapi>),
}

/// What a device was built with ([`crate::IdeDevice`]), kept for resets.
pub(crate) struct Device {
    pub id: String,
    pub regs: Regs,
    pub kind: Kind,
    /// The medium: always there for a disk; the loaded disc for a CD drive.
    pub drive: Option<Drive>,
    pub strings: Strings,
    /// Capacity in the device's sectors (512 bytes for a disk, 2048 for a disc).
    pub sectors: u64,
    pub cylinders: u16,
    pub heads: u16,
    pub spt: u16,
    pub mult: u16,
    pub write_cache: bool,
    pub xfer_mode: u8,
    pub standby: bool,
}

/// Default CHS geometry for `sectors` (QEMU's guess for an unpartitioned disk:
/// 16 heads, 63 sectors per track, at most 16383 cylinders).
pub(crate) fn geometry(sectors: u64) -> (u16, u16, u16) {
    let cyls = (sectors / (16 * 63)).clamp(1, 16383) as u16;
    (cyls, 16, 63)
}

impl Device {
    pub(crate) fn new(id: String, kind: Kind, drive: Option<Drive>, strings: Strings) -> Device {
        let mut d = Device {
            id,
            regs: Regs::default(),
            kind,
            drive,
            strings,
            sectors: 0,
            cylinders: 0,
            heads: 0,
            spt: 0,
            mult: 0,
            write_cache: true,
            xfer_mode: 0x45,
            standby: false,
        };
        d.update_size();
        d.reset();
        d
    }

    pub(crate) fn is_cd(&self) -> bool {
        matches!(self.kind, Kind::Cdrom(_))
    }

    pub(crate) fn atapi(&mut self) -> Option<&mut Atapi> {
        match &mut self.kind {
            Kind::Cdrom(a) => Some(a),
            Kind::Disk => None,
        }
    }

    /// Recomputes the capacity from the medium.
    pub(crate) fn update_size(&mut self) {
        let bytes = self.drive.as_ref().map_or(0, |d| d.backend().info().size);
        let unit = if self.is_cd() { 2048 } else { 512 };
        self.sectors = bytes / unit;
        (self.cylinders, self.heads, self.spt) = geometry(self.sectors);
    }

    /// Power-on / hardware reset state: the signature, DRDY for a disk.
    pub(crate) fn reset(&mut self) {
        self.regs = Regs::default();
        self.mult = if self.is_cd() { 0 } else { MAX_MULT_SECTORS };
        (self.cylinders, self.heads, self.spt) = geometry(self.sectors);
        self.standby = false;
        self.set_signature();
        self.regs.error = 0x01;
        self.regs.status = if self.is_cd() { 0 } else { DRDY | DSC };
        if let Some(a) = self.atapi() {
            a.reset();
        }
    }

    /// The signature a reset or a diagnostic leaves in the task file.
    pub(crate) fn set_signature(&mut self) {
        let cd = self.is_cd();
        let r = &mut self.regs;
        r.select &= 0xf0;
        r.nsector = 1;
        r.sector = 1;
        (r.lcyl, r.hcyl) = if cd { (0x14, 0xeb) } else { (0, 0) };
    }

    /// The sector count of the current command (0 means 256, or 65536 for LBA48).
    pub(crate) fn count(&self, ext: bool) -> u32 {
        let r = &self.regs;
        if ext {
            match u32::from(r.hob_nsector) << 8 | u32::from(r.nsector) {
                0 => 65536,
                n => n,
            }
        } else {
            match r.nsector {
                0 => 256,
                n => u32::from(n),
            }
        }
    }

    /// The starting sector of the current command: LBA28, LBA48 or CHS with the current
    /// logical geometry; `None` for an impossible CHS address.
    pub(crate) fn start_sector(&self, ext: bool) -> Option<u64> {
        let r = &self.regs;
        if r.select & SELECT_LBA != 0 {
            if ext {
                Some(
                    u64::from(r.hob_hcyl) << 40
                        | u64::from(r.hob_lcyl) << 32
                        | u64::from(r.hob_sector) << 24
                        | u64::from(r.hcyl) << 16
                        | u64::from(r.lcyl) << 8
                        | u64::from(r.sector),
                )
            } else {
                Some(
                    u64::from(r.select & 0x0f) << 24
                        | u64::from(r.hcyl) << 16
                        | u64::from(r.lcyl) << 8
                        | u64::from(r.sector),
                )
            }
        } else {
            let cyl = u64::from(r.hcyl) << 8 | u64::from(r.lcyl);
            let head = u64::from(r.select & 0x0f);
            let sec = u64::from(r.sector);
            let (heads, spt) = (u64::from(self.heads), u64::from(self.spt));
            if sec == 0 || sec > spt || head >= heads {
                return None;
            }
            Some((cyl * heads + head) * spt + sec - 1)
        }
    }

    /// Writes `sector` back to the address registers (after a transfer).
    pub(crate) fn set_sector(&mut self, sector: u64, ext: bool) {
        let (heads, spt) = (u64::from(self.heads.max(1)), u64::from(self.spt.max(1)));
        let r = &mut self.regs;
        if r.select & SELECT_LBA != 0 {
            r.sector = sector as u8;
            r.lcyl = (sector >> 8) as u8;
            r.hcyl = (sector >> 16) as u8;
            if ext {
                r.hob_sector = (sector >> 24) as u8;
                r.hob_lcyl = (sector >> 32) as u8;
                r.hob_hcyl = (sector >> 40) as u8;
            } else {
                r.select = (r.select & 0xf0) | ((sector >> 24) as u8 & 0x0f);
            }
        } else {
            let cyl = sector / (heads * spt);
            let rem = sector % (heads * spt);
            r.hcyl = (cyl >> 8) as u8;
            r.lcyl = cyl as u8;
            r.select = (r.select & 0xf0) | ((rem / spt) as u8 & 0x0f);
            r.sector = (rem % spt) as u8 + 1;
        }
    }

    /// The IDENTIFY (PACKET) DEVICE block.
    pub(crate) fn identify(&self) -> [u8; 512] {
        if self.is_cd() {
            identify::packet(&self.strings, self.xfer_mode)
        } else {
            identify::disk(
                &identify::DiskParams {
                    sectors: self.sectors,
                    cylinders: self.cylinders,
                    heads: self.heads,
                    spt: self.spt,
                    mult: self.mult,
                    write_cache: self.write_cache,
                    xfer_mode: self.xfer_mode,
                },
                &self.strings,
            )
        }
    }

    /// Ends a command successfully.
    pub(crate) fn ok(&mut self) {
        self.regs.status = DRDY | DSC;
        self.regs.error = 0;
    }

    /// Aborts a command (ERR with ABRT).
    pub(crate) fn abort(&mut self) {
        self.regs.status = DRDY | ERR;
        self.regs.error = ABRT;
    }
}
