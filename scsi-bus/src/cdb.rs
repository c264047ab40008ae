//! Parsing a command descriptor block (CDB): untrusted bytes from the guest into a
//! [`Command`], or the sense a CHECK CONDITION reports.
//!
//! Bounds: the CDB must hold as many bytes as its operation code's group says (6, 10,
//! 12 or 16); unsupported opcodes give INVALID COMMAND OPERATION CODE (20/00), set
//! fields this device does not implement (protection information, an unknown service
//! action, a page control of "saved values" elsewhere) give INVALID FIELD IN CDB
//! (24/00). Range checks against the capacity happen at execution, where the capacity
//! is known. Nothing here allocates or panics.

use crate::sense::Sense;

/// Operation codes this crate implements (SPC-4, SBC-3).
pub mod opcode {
    /// TEST UNIT READY.
    pub const TEST_UNIT_READY: u8 = 0x00;
    /// REQUEST SENSE.
    pub const REQUEST_SENSE: u8 = 0x03;
    /// READ(6).
    pub const READ_6: u8 = 0x08;
    /// WRITE(6).
    pub const WRITE_6: u8 = 0x0a;
    /// INQUIRY.
    pub const INQUIRY: u8 = 0x12;
    /// MODE SELECT(6).
    pub const MODE_SELECT_6: u8 = 0x15;
    /// MODE SENSE(6).
    pub const MODE_SENSE_6: u8 = 0x1a;
    /// START STOP UNIT.
    pub const START_STOP_UNIT: u8 = 0x1b;
    /// READ CAPACITY(10).
    pub const READ_CAPACITY_10: u8 = 0x25;
    /// READ(10).
    pub const READ_10: u8 = 0x28;
    /// WRITE(10).
    pub const WRITE_10: u8 = 0x2a;
    /// VERIFY(10).
    pub const VERIFY_10: u8 = 0x2f;
    /// SYNCHRONIZE CACHE(10).
    pub const SYNCHRONIZE_CACHE_10: u8 = 0x35;
    /// WRITE SAME(10).
    pub const WRITE_SAME_10: u8 = 0x41;
    /// UNMAP.
    pub const UNMAP: u8 = 0x42;
    /// MODE SELECT(10).
    pub const MODE_SELECT_10: u8 = 0x55;
    /// MODE SENSE(10).
    pub const MODE_SENSE_10: u8 = 0x5a;
    /// READ(16).
    pub const READ_16: u8 = 0x88;
    /// WRITE(16).
    pub const WRITE_16: u8 = 0x8a;
    /// VERIFY(16).
    pub const VERIFY_16: u8 = 0x8f;
    /// SYNCHRONIZE CACHE(16).
    pub const SYNCHRONIZE_CACHE_16: u8 = 0x91;
    /// WRITE SAME(16).
    pub const WRITE_SAME_16: u8 = 0x93;
    /// SERVICE ACTION IN(16) (READ CAPACITY(16) is its service action 10h).
    pub const SERVICE_ACTION_IN_16: u8 = 0x9e;
    /// REPORT LUNS.
    pub const REPORT_LUNS: u8 = 0xa0;
    /// READ(12).
    pub const READ_12: u8 = 0xa8;
    /// WRITE(12).
    pub const WRITE_12: u8 = 0xaa;
    /// VERIFY(12).
    pub const VERIFY_12: u8 = 0xaf;
}

/// READ CAPACITY(16)'s service action.
const SAI_READ_CAPACITY_16: u8 = 0x10;

/// Which mode page values MODE SENSE asks for (the PC field).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PageControl {
    /// Current values.
    Current,
    /// Which bits MODE SELECT may change.
    Changeable,
    /// Default values.
    Default,
}

/// A parsed command. Lengths are in logical blocks unless named otherwise.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// TEST UNIT READY.
    TestUnitReady,
    /// REQUEST SENSE: `desc` asks for descriptor format.
    RequestSense {
        /// Descriptor format wanted.
        desc: bool,
        /// Allocation length in bytes.
        alloc: u32,
    },
    /// INQUIRY: standard data, or the VPD page `page` if `evpd`.
    Inquiry {
        /// Vital product data wanted.
        evpd: bool,
        /// The VPD page code.
        page: u8,
        /// Allocation length in bytes.
        alloc: u32,
    },
    /// REPORT LUNS.
    ReportLuns {
        /// The SELECT REPORT field (0, 1 or 2).
        select: u8,
        /// Allocation length in bytes (at least 16).
        alloc: u32,
    },
    /// READ CAPACITY(10).
    ReadCapacity10,
    /// READ CAPACITY(16).
    ReadCapacity16 {
        /// Allocation length in bytes.
        alloc: u32,
    },
    /// MODE SENSE(6) or (10).
    ModeSense {
        /// The 10-byte form (8-byte header).
        ten: bool,
        /// Disable block descriptors.
        dbd: bool,
        /// Which values.
        pc: PageControl,
        /// Page code (3Fh: all pages).
        page: u8,
        /// Allocation length in bytes.
        alloc: u32,
    },
    /// MODE SELECT(6) or (10) with page format.
    ModeSelect {
        /// The 10-byte form (8-byte header).
        ten: bool,
        /// Parameter list length in bytes.
        len: u32,
    },
    /// READ(6/10/12/16).
    Read {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
        /// Force unit access.
        fua: bool,
    },
    /// WRITE(6/10/12/16).
    Write {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
        /// Force unit access: durable before GOOD.
        fua: bool,
    },
    /// VERIFY(10/12/16) without data comparison.
    Verify {
        /// First block.
        lba: u64,
        /// Blocks.
        blocks: u32,
    },
    /// SYNCHRONIZE CACHE(10/16).
    SynchronizeCache {
        /// First block.
        lba: u64,
        /// Blocks (0: to the end).
        blocks: u32,
    },
    /// UNMAP with a parameter list of `len` bytes.
    Unmap {
        /// Parameter list length in bytes.
        len: u32,
    },
    /// WRITE SAME(10/16).
    WriteSame {
        /// First block.
        lba: u64,
        /// Blocks (never 0: WSNZ).
        blocks: u32,
        /// The UNMAP bit: the range may be deallocated.
        unmap: bool,
        /// NDOB: no data-out buffer, write zeroes.
        ndob: bool,
    },
    /// START STOP UNIT.
    StartStopUnit {
        /// The START bit.
        start: bool,
        /// The LOEJ bit.
        loej: bool,
    },
}

/// The length of a CDB whose first byte is `op` (its group code), if the group has a
/// fixed length.
pub fn cdb_len(op: u8) -> Option<usize> {
    match op >> 5 {
        0 => Some(6),
        1 | 2 => Some(10),
        4 => Some(16),
        5 => Some(12),
        _ => None,
    }
}

fn be16(b: &[u8], at: usize) -> u32 {
    u32::from(u16::from_be_bytes([b[at], b[at + 1]]))
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be64(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_be_bytes(x)
}

/// Protection information (RDPROTECT/WRPROTECT/VRPROTECT) is not offered.
fn no_protect(cdb: &[u8]) -> Result<(), Sense> {
    if cdb[1] & 0xe0 != 0 {
        Err(Sense::INVALID_FIELD)
    } else {
        Ok(())
    }
}

/// Parses `cdb` (the bytes the transport received; trailing bytes beyond the command's
/// length are ignored).
///
/// # Errors
///
/// The sense to report: 20/00 for an unsupported or truncated command, 24/00 for a
/// field this device rejects.
pub fn parse(cdb: &[u8]) -> Result<Command, Sense> {
    use opcode::*;
    let op = *cdb.first().ok_or(Sense::INVALID_OPCODE)?;
    let len = cdb_len(op).ok_or(Sense::INVALID_OPCODE)?;
    if cdb.len() < len {
        return Err(Sense::INVALID_OPCODE);
    }
    let c = &cdb[..len];
    Ok(match op {
        TEST_UNIT_READY => Command::TestUnitReady,
        REQUEST_SENSE => Command::RequestSense {
            desc: c[1] & 1 != 0,
            alloc: u32::from(c[4]),
        },
        INQUIRY => {
            let evpd = c[1] & 1 != 0;
            // CMDDT (obsolete) or a page code without EVPD: invalid field.
            if c[1] & 0x02 != 0 || (!evpd && c[2] != 0) {
                return Err(Sense::INVALID_FIELD);
            }
            Command::Inquiry {
                evpd,
                page: c[2],
                alloc: be16(c, 3),
            }
        }
        REPORT_LUNS => {
            let alloc = be32(c, 6);
            if c[2] > 2 || alloc < 16 {
                return Err(Sense::INVALID_FIELD);
            }
            Command::ReportLuns {
                select: c[2],
                alloc,
            }
        }
        READ_CAPACITY_10 => {
            // An LBA without PMI is invalid (SBC-3 5.16).
            if c[8] & 1 == 0 && be32(c, 2) != 0 {
                return Err(Sense::INVALID_FIELD);
            }
            Command::ReadCapacity10
        }
        SERVICE_ACTION_IN_16 => match c[1] & 0x1f {
            SAI_READ_CAPACITY_16 => Command::ReadCapacity16 { alloc: be32(c, 10) },
            _ => return Err(Sense::INVALID_FIELD),
        },
        MODE_SENSE_6 | MODE_SENSE_10 => {
            let ten = op == MODE_SENSE_10;
            let pc = match c[2] >> 6 {
                0 => PageControl::Current,
                1 => PageControl::Changeable,
                2 => PageControl::Default,
                _ => return Err(Sense::SAVING_PARAMS_NOT_SUPPORTED),
            };
            // Subpages other than 0 (and FFh with "all pages") are not offered.
            let page = c[2] & 0x3f;
            if c[3] != 0 && !(c[3] == 0xff && page == 0x3f) {
                return Err(Sense::INVALID_FIELD);
            }
            Command::ModeSense {
                ten,
                dbd: c[1] & 0x08 != 0,
                pc,
                page,
                alloc: if ten { be16(c, 7) } else { u32::from(c[4]) },
            }
        }
        MODE_SELECT_6 | MODE_SELECT_10 => {
            // Page format must be set, save pages must not (nothing is saved).
            if c[1] & 0x11 != 0x10 {
                return Err(Sense::INVALID_FIELD);
            }
            let ten = op == MODE_SELECT_10;
            Command::ModeSelect {
                ten,
                len: if ten { be16(c, 7) } else { u32::from(c[4]) },
            }
        }
        READ_6 | WRITE_6 => {
            let lba = u64::from(be32(c, 0) & 0x001f_ffff);
            // A transfer length of 0 means 256 blocks for the 6-byte commands.
            let blocks = if c[4] == 0 { 256 } else { u32::from(c[4]) };
            rw(op == WRITE_6, lba, blocks, false)
        }
        READ_10 | WRITE_10 => {
            no_protect(c)?;
            rw(
                op == WRITE_10,
                u64::from(be32(c, 2)),
                be16(c, 7),
                c[1] & 0x08 != 0,
            )
        }
        READ_12 | WRITE_12 => {
            no_protect(c)?;
            rw(
                op == WRITE_12,
                u64::from(be32(c, 2)),
                be32(c, 6),
                c[1] & 0x08 != 0,
            )
        }
        READ_16 | WRITE_16 => {
            no_protect(c)?;
            rw(op == WRITE_16, be64(c, 2), be32(c, 10), c[1] & 0x08 != 0)
        }
        VERIFY_10 | VERIFY_12 | VERIFY_16 => {
            no_protect(c)?;
            // BYTCHK: comparing with data-out is not implemented.
            if c[1] & 0x06 != 0 {
                return Err(Sense::INVALID_FIELD);
            }
            let (lba, blocks) = match op {
                VERIFY_10 => (u64::from(be32(c, 2)), be16(c, 7)),
                VERIFY_12 => (u64::from(be32(c, 2)), be32(c, 6)),
                _ => (be64(c, 2), be32(c, 10)),
            };
            Command::Verify { lba, blocks }
        }
        SYNCHRONIZE_CACHE_10 => Command::SynchronizeCache {
            lba: u64::from(be32(c, 2)),
            blocks: be16(c, 7),
        },
        SYNCHRONIZE_CACHE_16 => Command::SynchronizeCache {
            lba: be64(c, 2),
            blocks: be32(c, 10),
        },
        UNMAP => {
            // ANCHOR is not supported.
            if c[1] & 0x01 != 0 {
                return Err(Sense::INVALID_FIELD);
            }
            Command::Unmap { len: be16(c, 7) }
        }
        WRITE_SAME_10 | WRITE_SAME_16 => {
            no_protect(c)?;
            let (lba, blocks) = if op == WRITE_SAME_10 {
                (u64::from(be32(c, 2)), be16(c, 7))
            } else {
                (be64(c, 2), be32(c, 10))
            };
            // WSNZ: a length of 0 ("to the end") is refused; ANCHOR is not supported;
            // NDOB exists only in the 16-byte form.
            let ndob = op == WRITE_SAME_16 && c[1] & 0x01 != 0;
            if blocks == 0 || c[1] & 0x10 != 0 || (op == WRITE_SAME_10 && c[1] & 0x01 != 0) {
                return Err(Sense::INVALID_FIELD);
            }
            Command::WriteSame {
                lba,
                blocks,
                unmap: c[1] & 0x08 != 0,
                ndob,
            }
        }
        START_STOP_UNIT => Command::StartStopUnit {
            start: c[4] & 0x01 != 0,
            loej: c[4] & 0x02 != 0,
        },
        _ => return Err(Sense::INVALID_OPCODE),
    })
}

fn rw(write: bool, lba: u64, blocks: u32, fua: bool) -> Command {
    if write {
        Command::Write { lba, blocks, fua }
    } else {
        Command::Read { lba, blocks, fua }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_lengths_and_truncation() {
        assert_eq!(cdb_len(0x00), Some(6));
        assert_eq!(cdb_len(0x28), Some(10));
        assert_eq!(cdb_len(0x5a), Some(10));
        assert_eq!(cdb_len(0x88), Some(16));
        assert_eq!(cdb_len(0xa0), Some(12));
        assert_eq!(cdb_len(0x7f), None);
        assert_eq!(parse(&[]), Err(Sense::INVALID_OPCODE));
        assert_eq!(parse(&[0x28, 0, 0]), Err(Sense::INVALID_OPCODE));
        assert_eq!(parse(&[0xff; 16]), Err(Sense::INVALID_OPCODE));
    }

    #[test]
    fn reads_decode_every_form() {
        let r6 = parse(&[0x08, 0x1f, 0xff, 0xff, 0, 0]).unwrap();
        assert_eq!(
            r6,
            Command::Read {
                lba: 0x1f_ffff,
                blocks: 256,
                fua: false
            }
        );
        let mut r16 = [0u8; 16];
        r16[0] = 0x88;
        r16[1] = 0x08;
        r16[2..10].copy_from_slice(&0x0102_0304_0506_0708u64.to_be_bytes());
        r16[10..14].copy_from_slice(&9u32.to_be_bytes());
        assert_eq!(
            parse(&r16).unwrap(),
            Command::Read {
                lba: 0x0102_0304_0506_0708,
                blocks: 9,
                fua: true
            }
        );
        r16[1] = 0x20; // RDPROTECT
        assert_eq!(parse(&r16), Err(Sense::INVALID_FIELD));
    }

    #[test]
    fn field_checks() {
        // INQUIRY page without EVPD.
        assert_eq!(
            parse(&[0x12, 0, 0x80, 0, 0xff, 0]),
            Err(Sense::INVALID_FIELD)
        );
        // REPORT LUNS with a too-small allocation length.
        let mut rl = [0u8; 12];
        rl[0] = 0xa0;
        rl[9] = 8;
        assert_eq!(parse(&rl), Err(Sense::INVALID_FIELD));
        // MODE SENSE saved values.
        assert_eq!(
            parse(&[0x1a, 0, 0xc8, 0, 0xff, 0]),
            Err(Sense::SAVING_PARAMS_NOT_SUPPORTED)
        );
        // WRITE SAME with 0 blocks.
        let mut ws = [0u8; 16];
        ws[0] = 0x93;
        assert_eq!(parse(&ws), Err(Sense::INVALID_FIELD));
        // MODE SELECT without PF.
        assert_eq!(parse(&[0x15, 0, 0, 0, 12, 0]), Err(Sense::INVALID_FIELD));
    }
}
