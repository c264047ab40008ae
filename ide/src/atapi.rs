//! The ATAPI CD/DVD drive (ide-cd): the PACKET protocol and the MMC subset SeaBIOS
//! and Linux use, sense data, the tray and medium changes with the unit attentions a
//! guest expects.
//!
//! A medium change is reported the way QEMU reports it (guests that never ask GET
//! EVENT STATUS NOTIFICATION rely on it): the next command that does not allow a
//! unit attention fails once with NOT READY / MEDIUM NOT PRESENT, then once with
//! UNIT ATTENTION / MEDIUM MAY HAVE CHANGED; GET EVENT STATUS NOTIFICATION reports
//! "new media" once.

use block_dma::{DmaDirection, Errno};
use tracing::debug;

use crate::channel::{CD_PIO_CHUNK, CdRead, Channel, DmaSetup, DmaThen, Pending, Xfer};
use crate::regs::scsi::*;
use crate::regs::sense::*;
use crate::regs::*;

/// A CD holds at most this many 2048-byte sectors; a bigger medium is a DVD.
const CD_MAX_SECTORS: u64 = 0x0005_7a00; // 80 minutes of data

/// Medium-change reporting state (QEMU's `cdrom_changed`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Changed {
    #[default]
    No,
    /// Report NOT READY next.
    NotReady,
    /// Report UNIT ATTENTION next.
    Attention,
}

/// The drive's state beyond the task file.
#[derive(Debug, Default)]
pub(crate) struct Atapi {
    pub sense: (u8, u8, u8),
    pub tray_open: bool,
    pub locked: bool,
    pub changed: Changed,
    /// GET EVENT STATUS NOTIFICATION: a new medium was loaded.
    pub new_media: bool,
    /// GET EVENT STATUS NOTIFICATION: the host asked for the tray to open.
    pub eject_request: bool,
    /// The PACKET command's features bit 0: the data phase uses DMA.
    pub dma: bool,
}

impl Atapi {
    pub(crate) fn reset(&mut self) {
        self.sense = (NO_SENSE, 0, 0);
        self.locked = false;
        self.dma = false;
    }
}

/// Big-endian helpers for CDBs and replies.
fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Commands a pending unit attention does not fail (MMC: INQUIRY, REQUEST SENSE,
/// GET CONFIGURATION, GET EVENT STATUS NOTIFICATION).
fn allows_ua(op: u8) -> bool {
    matches!(
        op,
        INQUIRY | REQUEST_SENSE | GET_CONFIGURATION | GET_EVENT_STATUS
    )
}

/// Commands that need a medium.
fn needs_medium(op: u8) -> bool {
    matches!(
        op,
        TEST_UNIT_READY | READ_CAPACITY | READ_10 | READ_12 | READ_TOC | READ_DISC_INFO
    )
}

/// Logical block address to minutes/seconds/frames.
fn msf(lba: u64) -> [u8; 4] {
    let f = lba + 150;
    [
        0,
        (f / (75 * 60)) as u8,
        (f / 75 % 60) as u8,
        (f % 75) as u8,
    ]
}

/// The result of a packet: data to send, or a status.
enum Reply {
    Ok,
    Data(Vec<u8>, usize),
    Check(u8, u8),
    /// A read of `n` sectors at `lba` (already range checked; n > 0).
    Read(u64, u64),
}

impl Channel {
    /// PACKET: open the 12-byte command window.
    pub(crate) fn packet_command(&mut self, unit: usize) {
        let Some(d) = self.dev(unit) else { return };
        let dma = d.regs.feature & 1 != 0;
        if let Some(a) = d.atapi() {
            a.dma = dma;
        }
        d.regs.status = DRDY | DSC;
        d.regs.error = 0;
        d.regs.nsector = (d.regs.nsector & !7) | IREASON_COD;
        self.start_transfer(unit, 12, Xfer::Packet);
    }

    /// The guest wrote the packet.
    pub(crate) fn atapi_packet(&mut self, unit: usize, pkt: [u8; 12]) {
        let Some(d) = self.dev(unit) else { return };
        let bcl = match usize::from(d.regs.lcyl) | usize::from(d.regs.hcyl) << 8 {
            // A zero limit would never move a byte: take the largest even one.
            0 | 0xffff => 0xfffe,
            n => n & !1,
        };
        let sectors = d.sectors;
        let strings = d.strings.clone();
        let has_medium = d.drive.is_some();
        let Some(a) = d.atapi() else { return };
        let op = pkt[0];
        if a.sense.0 == UNIT_ATTENTION && !allows_ua(op) {
            let (key, asc, _) = a.sense;
            return self.atapi_error(unit, key, asc);
        }
        if !allows_ua(op) && !a.tray_open && has_medium {
            match a.changed {
                Changed::NotReady => {
                    a.changed = Changed::Attention;
                    return self.atapi_error(unit, NOT_READY, ASC_MEDIUM_NOT_PRESENT);
                }
                Changed::Attention => {
                    a.changed = Changed::No;
                    return self.atapi_error(unit, UNIT_ATTENTION, ASC_MEDIUM_MAY_HAVE_CHANGED);
                }
                Changed::No => {}
            }
        }
        let ready = has_medium && !a.tray_open;
        if needs_medium(op) && !ready {
            return self.atapi_error(unit, NOT_READY, ASC_MEDIUM_NOT_PRESENT);
        }
        let reply = match op {
            TEST_UNIT_READY => Reply::Ok,
            REQUEST_SENSE => {
                let (key, asc, ascq) = a.sense;
                let mut b = vec![0u8; 18];
                b[0] = 0xf0; // current errors, fixed format, VALID (as QEMU)
                b[2] = key;
                b[7] = 10;
                b[12] = asc;
                b[13] = ascq;
                if key == UNIT_ATTENTION {
                    a.sense = (NO_SENSE, 0, 0);
                }
                Reply::Data(b, usize::from(pkt[4]))
            }
            INQUIRY => Reply::Data(inquiry(&strings), usize::from(be16(&pkt[3..]))),
            READ_CAPACITY => {
                let mut b = vec![0u8; 8];
                b[..4].copy_from_slice(&(sectors.saturating_sub(1) as u32).to_be_bytes());
                b[4..].copy_from_slice(&2048u32.to_be_bytes());
                Reply::Data(b, 8)
            }
            READ_10 | READ_12 => {
                let lba = u64::from(be32(&pkt[2..]));
                let n = if op == READ_10 {
                    u64::from(be16(&pkt[7..]))
                } else {
                    u64::from(be32(&pkt[6..]))
                };
                if lba + n > sectors {
                    Reply::Check(ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE)
                } else if n == 0 {
                    Reply::Ok
                } else {
                    Reply::Read(lba, n)
                }
            }
            MODE_SENSE_10 => mode_sense(&pkt, a.locked),
            GET_CONFIGURATION => get_configuration(&pkt, sectors, ready),
            READ_TOC => read_toc(&pkt, sectors),
            GET_EVENT_STATUS => event_status(&pkt, a, ready),
            READ_DISC_INFO => {
                if pkt[1] & 7 != 0 {
                    Reply::Check(ILLEGAL_REQUEST, ASC_INVALID_FIELD)
                } else {
                    let mut b = vec![0u8; 34];
                    b[1] = 32;
                    b[2] = 0x0e; // complete disc, complete last session
                    b[3..7].copy_from_slice(&[1, 1, 1, 1]);
                    b[7] = 0x20; // unrestricted use
                    Reply::Data(b, usize::from(be16(&pkt[7..])))
                }
            }
            START_STOP_UNIT => {
                let (start, loej) = (pkt[4] & 1 != 0, pkt[4] & 2 != 0);
                if !loej {
                    Reply::Ok
                } else if !start && a.locked {
                    Reply::Check(NOT_READY, ASC_MEDIUM_REMOVAL_PREVENTED)
                } else {
                    a.tray_open = !start;
                    Reply::Ok
                }
            }
            PREVENT_ALLOW => {
                a.locked = pkt[4] & 1 != 0;
                Reply::Ok
            }
            _ => {
                debug!(op, "ide-cd: unsupported packet command");
                Reply::Check(ILLEGAL_REQUEST, ASC_INVALID_OPCODE)
            }
        };
        let dma = a.dma;
        match reply {
            Reply::Ok => self.atapi_ok(unit),
            Reply::Check(key, asc) => self.atapi_error(unit, key, asc),
            Reply::Data(data, alloc) => self.atapi_reply(unit, &data, alloc, bcl, dma),
            Reply::Read(lba, n) => self.cd_read(unit, lba, n, bcl, dma),
        }
    }

    /// Status phase: good status.
    pub(crate) fn atapi_ok(&mut self, unit: usize) {
        if let Some(d) = self.dev(unit) {
            d.ok();
            d.regs.nsector = (d.regs.nsector & !7) | IREASON_IO | IREASON_COD;
            if let Some(a) = d.atapi() {
                a.sense = (NO_SENSE, 0, 0);
            }
        }
        self.stop_transfer();
        self.raise_irq();
    }

    /// Status phase: CHECK CONDITION with sense `key`/`asc`.
    pub(crate) fn atapi_error(&mut self, unit: usize, key: u8, asc: u8) {
        if let Some(d) = self.dev(unit) {
            d.regs.status = DRDY | ERR;
            d.regs.error = key << 4;
            d.regs.nsector = (d.regs.nsector & !7) | IREASON_IO | IREASON_COD;
            if let Some(a) = d.atapi() {
                a.sense = (key, asc, 0);
            }
        }
        self.stop_transfer();
        self.raise_irq();
    }

    /// Data-in from `data` (at most `alloc` bytes), by PIO or DMA.
    fn atapi_reply(&mut self, unit: usize, data: &[u8], alloc: usize, bcl: usize, dma: bool) {
        let len = data.len().min(alloc).min(self.buf.len());
        if len == 0 {
            return self.atapi_ok(unit);
        }
        self.buf[..len].copy_from_slice(&data[..len]);
        if dma {
            return self.atapi_dma(unit, 0, len as u64, true);
        }
        self.xfer_unit = unit;
        self.pos = 0;
        self.atapi_next_block(len, bcl, None);
    }

    /// Opens the next DRQ block of an ATAPI data-in phase, or ends it.
    pub(crate) fn atapi_next_block(&mut self, len: usize, bcl: usize, more: Option<CdRead>) {
        let unit = self.xfer_unit;
        if self.pos >= len {
            self.stop_transfer();
            return match more {
                Some(rd) if rd.remaining > 0 => self.cd_read_chunk(unit, rd),
                _ => self.atapi_ok(unit),
            };
        }
        let size = (len - self.pos).min(bcl);
        let Some(d) = self.dev(unit) else { return };
        d.regs.status = DRDY | DSC | DRQ;
        d.regs.lcyl = size as u8;
        d.regs.hcyl = (size >> 8) as u8;
        d.regs.nsector = (d.regs.nsector & !7) | IREASON_IO;
        self.end = self.pos + size;
        self.xfer = Xfer::AtapiIn { len, bcl, more };
        self.raise_irq();
    }

    fn atapi_dma(&mut self, unit: usize, offset: u64, bytes: u64, from_buffer: bool) {
        if let Some(d) = self.dev(unit) {
            d.regs.status = DRDY | DSC | DRQ;
        }
        self.dma = Some(DmaSetup {
            unit,
            offset,
            bytes,
            to_disk: false,
            then: DmaThen::Atapi {
                unit,
                from_buffer,
                stay_active: false,
            },
        });
        self.dma_ready();
    }

    fn cd_read(&mut self, unit: usize, lba: u64, n: u64, bcl: usize, dma: bool) {
        if dma {
            return self.atapi_dma(unit, lba * 2048, n * 2048, false);
        }
        self.cd_read_chunk(
            unit,
            CdRead {
                lba,
                remaining: n,
                bcl,
            },
        );
    }

    /// Reads the next PIO chunk of an ATAPI read.
    fn cd_read_chunk(&mut self, unit: usize, rd: CdRead) {
        let n = rd.remaining.min(CD_PIO_CHUNK);
        if let Some(d) = self.dev(unit) {
            d.regs.status = DRDY | DSC | BSY;
        }
        self.pending = Some(Pending::CdRead(unit, rd, n));
        self.queue_pio(unit, DmaDirection::Read, rd.lba * 2048, n as usize * 2048);
    }

    pub(crate) fn cd_read_done(
        &mut self,
        unit: usize,
        rd: CdRead,
        n: u64,
        res: Result<u64, Errno>,
    ) {
        let len = n as usize * 2048;
        if res.is_err() || !self.fetch_after_read(len) {
            return self.atapi_error(unit, MEDIUM_ERROR, ASC_UNRECOVERED_READ);
        }
        let more = CdRead {
            lba: rd.lba + n,
            remaining: rd.remaining - n,
            bcl: rd.bcl,
        };
        self.xfer_unit = unit;
        self.pos = 0;
        self.atapi_next_block(len, rd.bcl, Some(more));
    }
}

fn ascii(out: &mut [u8], s: &str) {
    let mut b = s.bytes().filter(u8::is_ascii_graphic);
    for o in out {
        *o = b.next().unwrap_or(b' ');
    }
}

fn inquiry(s: &crate::identify::Strings) -> Vec<u8> {
    let mut b = vec![0u8; 36];
    b[0] = 0x05; // CD/DVD device
    b[1] = 0x80; // removable
    b[2] = 0x00;
    b[3] = 0x21; // ATAPI, response format 1
    b[4] = 31;
    ascii(&mut b[8..16], "QEMU");
    let model = s
        .model
        .bytes()
        .filter(|c| c.is_ascii_graphic() || *c == b' ');
    let mut model = model.chain(std::iter::repeat(b' '));
    for o in &mut b[16..32] {
        *o = model.next().unwrap_or(b' ');
    }
    ascii(&mut b[32..36], &s.firmware);
    b
}

fn mode_sense(pkt: &[u8; 12], locked: bool) -> Reply {
    let (pc, page) = (pkt[2] >> 6, pkt[2] & 0x3f);
    let alloc = usize::from(be16(&pkt[7..]));
    if pc == 3 {
        return Reply::Check(ILLEGAL_REQUEST, ASC_SAVING_NOT_SUPPORTED);
    }
    let error_recovery = [0x01, 0x06, 0x00, 0x05, 0, 0, 0, 0];
    // The capabilities page as QEMU's ide-cd reports it.
    let mut caps = [0u8; 22];
    caps[0] = 0x2a;
    caps[1] = 20;
    caps[2] = 0x3b; // reads CD-R, CD-RW, DVD-ROM, DVD-R, method 2
    caps[4] = 0x71; // audio play, multisession, mode 2 form 1/2
    caps[5] = 0x60; // ISRC, UPC
    caps[6] = 0x29 | if locked { 0x02 } else { 0 }; // tray, eject, lock (state)
    caps[8..10].copy_from_slice(&704u16.to_be_bytes()); // max speed (KB/s)
    caps[10..12].copy_from_slice(&2u16.to_be_bytes()); // volume levels
    caps[12..14].copy_from_slice(&512u16.to_be_bytes()); // buffer (KiB)
    caps[14..16].copy_from_slice(&704u16.to_be_bytes()); // current speed
    let mut pages: Vec<u8> = Vec::new();
    match page {
        0x01 => pages.extend_from_slice(&error_recovery),
        0x2a => pages.extend_from_slice(&caps),
        0x3f => {
            pages.extend_from_slice(&error_recovery);
            pages.extend_from_slice(&caps);
        }
        _ => return Reply::Check(ILLEGAL_REQUEST, ASC_INVALID_FIELD),
    }
    let mut b = vec![0u8; 8];
    b.extend_from_slice(&pages);
    let len = (b.len() - 2) as u16;
    b[..2].copy_from_slice(&len.to_be_bytes());
    b[2] = 0x70; // medium type: door closed, no disc info (as QEMU)
    Reply::Data(b, alloc)
}

fn get_configuration(pkt: &[u8; 12], sectors: u64, ready: bool) -> Reply {
    let rt = pkt[1] & 3;
    if rt == 3 {
        return Reply::Check(ILLEGAL_REQUEST, ASC_INVALID_FIELD);
    }
    let start = be16(&pkt[2..]);
    let alloc = usize::from(be16(&pkt[7..]));
    let current = match (ready, sectors > CD_MAX_SECTORS) {
        (false, _) => 0u16,
        (true, true) => 0x0010,
        (true, false) => 0x0008,
    };
    let mut b = vec![0u8; 8];
    b[6..8].copy_from_slice(&current.to_be_bytes());
    let mut feature = |code: u16, flags: u8, data: &[u8]| {
        let wanted = match rt {
            2 => code == start,
            _ => code >= start,
        };
        if wanted {
            b.extend_from_slice(&code.to_be_bytes());
            b.push(flags);
            b.push(data.len() as u8);
            b.extend_from_slice(data);
        }
    };
    // Profile list: DVD-ROM and CD-ROM, the current one flagged.
    let dvd = [0x00, 0x10, u8::from(current == 0x10), 0];
    let cd = [0x00, 0x08, u8::from(current == 0x08), 0];
    let mut profiles = dvd.to_vec();
    profiles.extend_from_slice(&cd);
    feature(0x0000, 0x03, &profiles);
    // Core: ATAPI physical interface.
    feature(0x0001, 0x07, &[0, 0, 0, 2, 0, 0, 0, 0]);
    // Removable medium: tray, eject, lock.
    feature(0x0003, 0x03, &[0x29, 0, 0, 0]);
    let len = (b.len() - 4) as u32;
    b[..4].copy_from_slice(&len.to_be_bytes());
    Reply::Data(b, alloc)
}

fn read_toc(pkt: &[u8; 12], sectors: u64) -> Reply {
    let msf_bit = pkt[1] & 2 != 0;
    let format = match pkt[2] & 0x0f {
        0 => pkt[9] >> 6,
        f => f,
    };
    let track = pkt[6];
    let alloc = usize::from(be16(&pkt[7..]));
    let addr = |lba: u64| {
        if msf_bit {
            msf(lba)
        } else {
            (lba as u32).to_be_bytes()
        }
    };
    let mut b = vec![0u8; 4];
    match format {
        0 => {
            if track > 1 && track != 0xaa {
                return Reply::Check(ILLEGAL_REQUEST, ASC_INVALID_FIELD);
            }
            b[2] = 1;
            b[3] = 1;
            if track <= 1 {
                b.extend_from_slice(&[0, 0x14, 1, 0]);
                b.extend_from_slice(&addr(0));
            }
            b.extend_from_slice(&[0, 0x16, 0xaa, 0]);
            b.extend_from_slice(&addr(sectors));
        }
        1 => {
            b[2] = 1;
            b[3] = 1;
            b.extend_from_slice(&[0, 0x14, 1, 0]);
            b.extend_from_slice(&addr(0));
        }
        _ => return Reply::Check(ILLEGAL_REQUEST, ASC_INVALID_FIELD),
    }
    let len = (b.len() - 2) as u16;
    b[..2].copy_from_slice(&len.to_be_bytes());
    Reply::Data(b, alloc)
}

fn event_status(pkt: &[u8; 12], a: &mut Atapi, ready: bool) -> Reply {
    if pkt[1] & 1 == 0 {
        // Only polled operation is supported.
        return Reply::Check(ILLEGAL_REQUEST, ASC_INVALID_FIELD);
    }
    let classes = pkt[4];
    let alloc = usize::from(be16(&pkt[7..]));
    let mut b = vec![0u8; 4];
    b[3] = 0x10; // supported: media class
    // The event data length counts the bytes after the 4-byte header (as QEMU).
    if classes & 0x10 == 0 {
        b[2] = 0x80; // no event available
        return Reply::Data(b, alloc);
    }
    b[1] = 4;
    b[2] = 0x04; // media class
    let code = if a.eject_request {
        a.eject_request = false;
        1
    } else if a.new_media {
        a.new_media = false;
        2
    } else {
        0
    };
    let status = u8::from(a.tray_open) | u8::from(ready) << 1;
    b.extend_from_slice(&[code, status, 0, 0]);
    Reply::Data(b, alloc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msf_counts_the_two_second_pregap() {
        assert_eq!(msf(0), [0, 0, 2, 0]);
        assert_eq!(msf(75 * 60 - 150), [0, 1, 0, 0]);
        assert_eq!(msf(16), [0, 0, 2, 16]);
    }

    #[test]
    fn toc_has_track_one_and_the_lead_out() {
        let mut pkt = [0u8; 12];
        pkt[0] = READ_TOC;
        pkt[8] = 0xff;
        let Reply::Data(b, _) = read_toc(&pkt, 1000) else {
            panic!("no TOC");
        };
        assert_eq!(b.len(), 20);
        assert_eq!(be16(&b), 18);
        assert_eq!(&b[4..8], &[0, 0x14, 1, 0]);
        assert_eq!(&b[12..16], &[0, 0x16, 0xaa, 0]);
        assert_eq!(be32(&b[16..]), 1000);
        pkt[6] = 2;
        assert!(matches!(
            read_toc(&pkt, 1000),
            Reply::Check(ILLEGAL_REQUEST, _)
        ));
    }

    #[test]
    fn configuration_reports_the_current_profile() {
        let mut pkt = [0u8; 12];
        pkt[8] = 0xff;
        let Reply::Data(b, _) = get_configuration(&pkt, 1000, true) else {
            panic!()
        };
        assert_eq!(be16(&b[6..]), 0x0008, "CD-ROM");
        let Reply::Data(b, _) = get_configuration(&pkt, CD_MAX_SECTORS + 1, true) else {
            panic!()
        };
        assert_eq!(be16(&b[6..]), 0x0010, "DVD-ROM");
        assert_eq!(be32(&b) as usize, b.len() - 4);
    }
}
