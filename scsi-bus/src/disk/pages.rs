//! The data scsi-hd returns for its emulated commands (INQUIRY and its VPD pages, READ
//! CAPACITY, MODE SENSE) and the MODE SELECT parameter list it accepts. Pure functions
//! of a [`DiskView`]; field offsets follow SPC-4 and SBC-3.

use crate::cdb::PageControl;
use crate::sense::Sense;

/// The most blocks one READ/WRITE may move (VPD B0h MAXIMUM TRANSFER LENGTH).
pub const MAX_TRANSFER_BLOCKS: u32 = 65535;
/// The most blocks one UNMAP may name (MAXIMUM UNMAP LBA COUNT): 1 GiB of 512-byte blocks,
/// QEMU's default `max_unmap_size`.
pub const MAX_UNMAP_BLOCKS: u32 = 1 << 21;
/// The most descriptors one UNMAP may carry.
pub const MAX_UNMAP_DESCRIPTORS: u32 = 255;
/// The most blocks one WRITE SAME may cover.
pub const MAX_WRITE_SAME_BLOCKS: u32 = 1 << 21;

/// What the pages describe: the disk's state when the command runs.
#[derive(Clone, Debug)]
pub(crate) struct DiskView<'a> {
    pub(crate) blocks: u64,
    pub(crate) block_size: u32,
    pub(crate) read_only: bool,
    pub(crate) discard: bool,
    pub(crate) wce: bool,
    pub(crate) d_sense: bool,
    pub(crate) vendor: &'a str,
    pub(crate) product: &'a str,
    pub(crate) revision: &'a str,
    pub(crate) serial: &'a str,
    /// VPD 83h's designator.
    pub(crate) device_id: &'a str,
}

/// `s` in a space-padded field of `n` bytes.
fn padded(s: &str, n: usize) -> Vec<u8> {
    let mut v: Vec<u8> = s.bytes().take(n).collect();
    v.resize(n, b' ');
    v
}

/// A VPD page: header (peripheral type 0, page code, page length) and `body`.
fn vpd(page: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0, page];
    v.extend_from_slice(&(body.len() as u16).to_be_bytes());
    v.extend_from_slice(body);
    v
}

/// INQUIRY data: standard (36 bytes) or the VPD page `page`.
pub(crate) fn inquiry(d: &DiskView<'_>, evpd: bool, page: u8) -> Result<Vec<u8>, Sense> {
    if !evpd {
        let mut v = vec![
            0x00, // peripheral qualifier 0, direct-access block device
            0x00, // not removable
            0x05, // SPC-3
            0x12, // HISUP, response data format 2
            31,   // additional length: 36 - 5
            0x00, 0x00, 0x02, // CMDQUE
        ];
        v.extend(padded(d.vendor, 8));
        v.extend(padded(d.product, 16));
        v.extend(padded(d.revision, 4));
        return Ok(v);
    }
    match page {
        0x00 => {
            let mut pages = vec![0x00];
            if !d.serial.is_empty() {
                pages.push(0x80);
            }
            pages.extend_from_slice(&[0x83, 0xb0, 0xb1, 0xb2]);
            Ok(vpd(0x00, &pages))
        }
        0x80 if !d.serial.is_empty() => Ok(vpd(0x80, d.serial.as_bytes())),
        0x83 => {
            let id: Vec<u8> = d.device_id.bytes().take(255 - 8).collect();
            // One designator: code set ASCII, association logical unit, type vendor
            // specific.
            let mut body = vec![0x02, 0x00, 0x00, id.len() as u8];
            body.extend(id);
            Ok(vpd(0x83, &body))
        }
        0xb0 => {
            let mut b = [0u8; 0x3c];
            b[0] = 0x01; // WSNZ: WRITE SAME of 0 blocks is refused
            b[4..8].copy_from_slice(&MAX_TRANSFER_BLOCKS.to_be_bytes());
            if d.discard {
                b[16..20].copy_from_slice(&MAX_UNMAP_BLOCKS.to_be_bytes());
                b[20..24].copy_from_slice(&MAX_UNMAP_DESCRIPTORS.to_be_bytes());
                b[24..28].copy_from_slice(&1u32.to_be_bytes()); // optimal unmap granularity
            }
            b[32..40].copy_from_slice(&u64::from(MAX_WRITE_SAME_BLOCKS).to_be_bytes());
            Ok(vpd(0xb0, &b))
        }
        0xb1 => Ok(vpd(0xb1, &[0u8; 0x3c])), // rotation rate and form factor not reported
        0xb2 => {
            let (flags, provisioning) = if d.discard {
                // LBPU, LBPWS, LBPWS10, LBPRZ; thin provisioned.
                (0xe4, 0x02)
            } else {
                (0x00, 0x00)
            };
            Ok(vpd(0xb2, &[0x00, flags, provisioning, 0x00]))
        }
        _ => Err(Sense::INVALID_FIELD),
    }
}

/// READ CAPACITY(10) data: last LBA (FFFFFFFFh if it does not fit) and block length.
pub(crate) fn read_capacity_10(d: &DiskView<'_>) -> Vec<u8> {
    let last = d.blocks.saturating_sub(1).min(u64::from(u32::MAX)) as u32;
    let mut v = last.to_be_bytes().to_vec();
    v.extend_from_slice(&d.block_size.to_be_bytes());
    v
}

/// READ CAPACITY(16) data (32 bytes).
pub(crate) fn read_capacity_16(d: &DiskView<'_>) -> Vec<u8> {
    let mut v = vec![0u8; 32];
    v[0..8].copy_from_slice(&d.blocks.saturating_sub(1).to_be_bytes());
    v[8..12].copy_from_slice(&d.block_size.to_be_bytes());
    if d.discard {
        v[14] = 0xc0; // LBPME, LBPRZ
    }
    v
}

/// Mode pages offered, in the order "all pages" lists them.
const PAGES: [u8; 3] = [0x04, 0x08, 0x0a];

/// Mode page `page` with the values `pc` asks for.
fn mode_page(d: &DiskView<'_>, page: u8, pc: PageControl) -> Option<Vec<u8>> {
    let changeable = pc == PageControl::Changeable;
    match page {
        0x04 => {
            // Rigid disk geometry (SBC-3 obsolete page, still asked for by firmware):
            // 16 heads of 63 sectors, as QEMU reports.
            let mut p = vec![0u8; 24];
            p[0] = 0x04;
            p[1] = 0x16;
            if !changeable {
                let sectors = d.blocks.saturating_mul(u64::from(d.block_size)) / 512;
                let cyl = (sectors / (16 * 63)).min(0xff_ffff) as u32;
                let cyl = &cyl.to_be_bytes()[1..];
                p[2..5].copy_from_slice(cyl);
                p[5] = 16;
                p[6..9].copy_from_slice(cyl); // write precompensation
                p[9..12].copy_from_slice(cyl); // reduced write current
                p[12..14].copy_from_slice(&200u16.to_be_bytes()); // step rate
                p[14..17].copy_from_slice(cyl); // landing zone
                p[20..22].copy_from_slice(&5400u16.to_be_bytes()); // rotation rate
            }
            Some(p)
        }
        0x08 => {
            let mut p = vec![0u8; 20];
            p[0] = 0x08;
            p[1] = 0x12;
            if changeable || d.wce {
                p[2] = 0x04; // WCE
            }
            Some(p)
        }
        0x0a => {
            let mut p = vec![0u8; 12];
            p[0] = 0x0a;
            p[1] = 0x0a;
            if changeable || d.d_sense {
                p[2] = 0x04; // D_SENSE
            }
            Some(p)
        }
        _ => None,
    }
}

/// MODE SENSE(6) or (10) data.
pub(crate) fn mode_sense(
    d: &DiskView<'_>,
    ten: bool,
    dbd: bool,
    pc: PageControl,
    page: u8,
) -> Result<Vec<u8>, Sense> {
    let mut pages = Vec::new();
    if page == 0x3f {
        for p in PAGES {
            pages.extend(mode_page(d, p, pc).unwrap_or_default());
        }
    } else {
        pages = mode_page(d, page, pc).ok_or(Sense::INVALID_FIELD)?;
    }
    // Device-specific parameter: WP for a read-only disk, DPOFUA (FUA is honoured).
    let dsp = if d.read_only { 0x80 } else { 0x00 } | 0x10;
    let mut bd = Vec::new();
    if !dbd {
        // SBC-3 short LBA block descriptor: number of blocks (capped), block length.
        bd.extend_from_slice(&(d.blocks.min(u64::from(u32::MAX)) as u32).to_be_bytes());
        bd.push(0);
        bd.extend_from_slice(&d.block_size.to_be_bytes()[1..]);
    }
    let mut v = if ten {
        let mut h = vec![0u8; 8];
        h[3] = dsp;
        h[6..8].copy_from_slice(&(bd.len() as u16).to_be_bytes());
        h
    } else {
        vec![0, 0, dsp, bd.len() as u8]
    };
    v.extend(bd);
    v.extend(pages);
    if ten {
        let n = (v.len() - 2) as u16;
        v[0..2].copy_from_slice(&n.to_be_bytes());
    } else {
        v[0] = (v.len() - 1).min(255) as u8;
    }
    Ok(v)
}

/// What a MODE SELECT changes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub(crate) struct Selected {
    pub(crate) wce: bool,
    pub(crate) d_sense: bool,
}

/// Checks a MODE SELECT parameter list against the current values and returns the new
/// changeable settings. Only the changeable bits (WCE, D_SENSE) may differ.
pub(crate) fn mode_select(d: &DiskView<'_>, ten: bool, data: &[u8]) -> Result<Selected, Sense> {
    let hdr = if ten { 8 } else { 4 };
    if data.len() < hdr {
        return Err(Sense::INVALID_PARAM_LEN);
    }
    let bd_len = if ten {
        usize::from(u16::from_be_bytes([data[6], data[7]]))
    } else {
        usize::from(data[3])
    };
    let rest = data.get(hdr..).ok_or(Sense::INVALID_PARAM_LEN)?;
    if bd_len != 0 && bd_len != 8 {
        return Err(Sense::INVALID_PARAM);
    }
    let mut pages = rest.get(bd_len..).ok_or(Sense::INVALID_PARAM_LEN)?;
    if bd_len == 8 {
        let bs = u32::from_be_bytes([0, rest[5], rest[6], rest[7]]);
        if bs != d.block_size {
            return Err(Sense::INVALID_PARAM);
        }
    }
    let mut out = Selected {
        wce: d.wce,
        d_sense: d.d_sense,
    };
    while !pages.is_empty() {
        if pages.len() < 2 {
            return Err(Sense::INVALID_PARAM_LEN);
        }
        // SPF (subpage format) is not offered.
        if pages[0] & 0x40 != 0 {
            return Err(Sense::INVALID_PARAM);
        }
        let code = pages[0] & 0x3f;
        let len = usize::from(pages[1]) + 2;
        let page = pages.get(..len).ok_or(Sense::INVALID_PARAM_LEN)?;
        let current = mode_page(d, code, PageControl::Current).ok_or(Sense::INVALID_PARAM)?;
        let mask = mode_page(d, code, PageControl::Changeable).ok_or(Sense::INVALID_PARAM)?;
        if current.len() != len {
            return Err(Sense::INVALID_PARAM);
        }
        // Byte 0's PS bit is reserved in MODE SELECT; compare from byte 2.
        for i in 2..len {
            if (page[i] ^ current[i]) & !mask[i] != 0 {
                return Err(Sense::INVALID_PARAM);
            }
        }
        match code {
            0x08 => out.wce = page[2] & 0x04 != 0,
            0x0a => out.d_sense = page[2] & 0x04 != 0,
            _ => {}
        }
        pages = &pages[len..];
    }
    Ok(out)
}

/// A LUN in the SAM-5 single level format REPORT LUNS returns: peripheral device
/// addressing below 256, flat space addressing above.
pub fn lun_bytes(lun: u16) -> [u8; 8] {
    let mut b = [0u8; 8];
    if lun < 256 {
        b[1] = lun as u8;
    } else {
        b[0] = 0x40 | ((lun >> 8) as u8 & 0x3f);
        b[1] = lun as u8;
    }
    b
}

/// REPORT LUNS data for `luns` (already sorted, unique).
pub(crate) fn report_luns(luns: impl Iterator<Item = u16>) -> Vec<u8> {
    let mut v = vec![0u8; 8];
    for lun in luns {
        v.extend_from_slice(&lun_bytes(lun));
    }
    let n = (v.len() - 8) as u32;
    v[0..4].copy_from_slice(&n.to_be_bytes());
    v
}
