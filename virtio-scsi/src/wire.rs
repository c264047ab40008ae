//! virtio-scsi's request layouts (virtio 1.2, 5.6.6): parsing what the driver wrote and
//! encoding what the device writes back. Pure functions over bytes: every field is
//! untrusted and every length is checked.

use smallvec::SmallVec;
use virtio_bindings::virtio_scsi::*;

/// Bytes of a command request header before the CDB: lun, tag, task_attr, prio, crn.
pub const CMD_HDR: usize = 8 + 8 + 3;
/// Bytes of a command response before the sense data.
pub const CMD_RESP_FIXED: usize = 4 + 4 + 2 + 1 + 1;
/// Bytes of a TMF request.
pub const TMF_REQ: usize = 4 + 4 + 8 + 8;
/// Bytes of a TMF response.
pub const TMF_RESP: usize = 1;
/// Bytes of an AN request.
pub const AN_REQ: usize = 4 + 8 + 4;
/// Bytes of an AN response.
pub const AN_RESP: usize = 4 + 1;
/// Bytes of an event (`event_info_size`).
pub const EVENT_SIZE: usize = 4 + 8 + 4;

/// Why a request could not be parsed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum WireError {
    /// Fewer bytes than the layout needs.
    #[error("{what}: {got} bytes, at least {need} needed")]
    Short {
        /// Which structure.
        what: &'static str,
        /// Bytes present.
        got: usize,
        /// Bytes needed.
        need: usize,
    },
    /// A control request type that does not exist.
    #[error("unknown control request type {0:#x}")]
    UnknownType(u32),
}

/// A virtio-scsi LUN field decoded: `None` for addresses the device does not serve
/// (first byte not 1, or a LUN format other than single level / flat space).
pub fn decode_lun(lun: &[u8; 8]) -> Option<(u16, u16)> {
    if lun[0] != 1 {
        return None;
    }
    if lun[2] != 0 && !(0x40..0x80).contains(&lun[2]) {
        return None;
    }
    Some((
        u16::from(lun[1]),
        u16::from_be_bytes([lun[2], lun[3]]) & 0x3fff,
    ))
}

/// The LUN field for `target`/`lun` (what the driver sends; for tests and events).
pub fn encode_lun(target: u16, lun: u16) -> [u8; 8] {
    let l = 0x4000 | (lun & 0x3fff);
    [1, target as u8, (l >> 8) as u8, l as u8, 0, 0, 0, 0]
}

fn arr8(b: &[u8]) -> [u8; 8] {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    a
}

fn u32le(b: &[u8]) -> u32 {
    u32::from_le_bytes([b[0], b[1], b[2], b[3]])
}

/// A command request header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmdHeader {
    /// The raw LUN field.
    pub lun: [u8; 8],
    /// The driver's tag (ABORT TASK names it).
    pub tag: u64,
    /// Task attribute.
    pub task_attr: u8,
    /// The CDB (`cdb_size` bytes).
    pub cdb: SmallVec<[u8; 32]>,
}

/// Parses a command request header with a CDB of `cdb_size` bytes.
///
/// # Errors
///
/// [`WireError::Short`].
pub fn parse_cmd(bytes: &[u8], cdb_size: usize) -> Result<CmdHeader, WireError> {
    let need = CMD_HDR + cdb_size;
    if bytes.len() < need {
        return Err(WireError::Short {
            what: "command request",
            got: bytes.len(),
            need,
        });
    }
    Ok(CmdHeader {
        lun: arr8(bytes),
        tag: u64::from_le_bytes(arr8(&bytes[8..])),
        task_attr: bytes[16],
        cdb: SmallVec::from_slice(&bytes[CMD_HDR..need]),
    })
}

/// A command response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CmdResponse {
    /// Bytes of valid sense data.
    pub sense_len: u32,
    /// Bytes of the data buffer not transferred.
    pub resid: u32,
    /// SCSI status.
    pub status: u8,
    /// `VIRTIO_SCSI_S_*`.
    pub response: u8,
    /// Sense data.
    pub sense: SmallVec<[u8; 18]>,
}

impl CmdResponse {
    /// The response's bytes with room for `sense_size` sense bytes (truncated to it).
    /// Inline (no allocation) for a `sense_size` up to the default 96.
    pub fn encode(&self, sense_size: usize) -> EncodedResponse {
        let mut v = EncodedResponse::from_elem(0, CMD_RESP_FIXED + sense_size);
        let n = self.sense.len().min(sense_size);
        v[0..4].copy_from_slice(&(n as u32).to_le_bytes());
        v[4..8].copy_from_slice(&self.resid.to_le_bytes());
        v[10] = self.status;
        v[11] = self.response;
        v[CMD_RESP_FIXED..CMD_RESP_FIXED + n].copy_from_slice(&self.sense[..n]);
        v
    }
}

/// An encoded command response: inline up to the default sense size.
pub type EncodedResponse = SmallVec<[u8; CMD_RESP_FIXED + SENSE_INLINE]>;

/// Sense bytes an [`EncodedResponse`] holds inline (the spec's default `sense_size`).
const SENSE_INLINE: usize = 96;

/// A control queue request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CtrlRequest {
    /// A task management function.
    Tmf {
        /// `VIRTIO_SCSI_T_TMF_*`.
        subtype: u32,
        /// The raw LUN field.
        lun: [u8; 8],
        /// The task's tag (ABORT TASK, QUERY TASK).
        tag: u64,
    },
    /// Asynchronous notification query or subscribe.
    An {
        /// Subscribe (else query).
        subscribe: bool,
        /// The raw LUN field.
        lun: [u8; 8],
        /// Events requested.
        event_requested: u32,
    },
}

impl CtrlRequest {
    /// How many bytes the device writes back for this request.
    pub fn response_len(&self) -> usize {
        match self {
            CtrlRequest::Tmf { .. } => TMF_RESP,
            CtrlRequest::An { .. } => AN_RESP,
        }
    }
}

/// Parses a control queue request.
///
/// # Errors
///
/// [`WireError::Short`] or [`WireError::UnknownType`].
pub fn parse_ctrl(bytes: &[u8]) -> Result<CtrlRequest, WireError> {
    let short = |what, need| WireError::Short {
        what,
        got: bytes.len(),
        need,
    };
    if bytes.len() < 4 {
        return Err(short("control request", 4));
    }
    match u32le(bytes) {
        VIRTIO_SCSI_T_TMF => {
            if bytes.len() < TMF_REQ {
                return Err(short("TMF request", TMF_REQ));
            }
            Ok(CtrlRequest::Tmf {
                subtype: u32le(&bytes[4..]),
                lun: arr8(&bytes[8..]),
                tag: u64::from_le_bytes(arr8(&bytes[16..])),
            })
        }
        t @ (VIRTIO_SCSI_T_AN_QUERY | VIRTIO_SCSI_T_AN_SUBSCRIBE) => {
            if bytes.len() < AN_REQ {
                return Err(short("AN request", AN_REQ));
            }
            Ok(CtrlRequest::An {
                subscribe: t == VIRTIO_SCSI_T_AN_SUBSCRIBE,
                lun: arr8(&bytes[4..]),
                event_requested: u32le(&bytes[12..]),
            })
        }
        t => Err(WireError::UnknownType(t)),
    }
}

/// The LUN field of an event: REPORT LUNS' encoding (flat space only from 256 on).
fn event_lun(target: u16, lun: u16) -> [u8; 8] {
    let l = if lun < 256 {
        lun
    } else {
        0x4000 | (lun & 0x3fff)
    };
    [1, target as u8, (l >> 8) as u8, l as u8, 0, 0, 0, 0]
}

/// An event for the event queue.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// `VIRTIO_SCSI_T_*`, with `VIRTIO_SCSI_T_EVENTS_MISSED` or-ed in when events were
    /// dropped for lack of buffers.
    pub event: u32,
    /// The LUN field.
    pub lun: [u8; 8],
    /// `VIRTIO_SCSI_EVT_RESET_*` for transport resets.
    pub reason: u32,
}

impl Event {
    /// A transport reset event: `reason` RESCAN (a LUN appeared) or REMOVED. The LUN
    /// is in REPORT LUNS' encoding (flat space only from 256 on), as QEMU sends it:
    /// Linux takes bytes 2-3 as the LUN number, so a flat-space flag on a small LUN
    /// would name LUN 1 as 16385, a second device beside the one REPORT LUNS lists.
    pub fn transport_reset(target: u16, lun: u16, reason: u32) -> Event {
        Event {
            event: VIRTIO_SCSI_T_TRANSPORT_RESET,
            lun: event_lun(target, lun),
            reason,
        }
    }

    /// A parameter change of a LUN (`VIRTIO_SCSI_T_PARAM_CHANGE`, with
    /// `VIRTIO_SCSI_F_CHANGE`): `reason` carries the unit attention's ASC in its low
    /// byte and ASCQ in the next (QEMU's `virtio_scsi_change`); Linux's virtio_scsi
    /// rescans the LUN on 2A/09 CAPACITY DATA HAS CHANGED.
    pub fn param_change(target: u16, lun: u16, asc: u8, ascq: u8) -> Event {
        Event {
            event: VIRTIO_SCSI_T_PARAM_CHANGE,
            lun: event_lun(target, lun),
            reason: u32::from(asc) | u32::from(ascq) << 8,
        }
    }

    /// The "events were missed" event the driver rescans on.
    pub fn missed() -> Event {
        Event {
            event: VIRTIO_SCSI_T_NO_EVENT | VIRTIO_SCSI_T_EVENTS_MISSED,
            lun: [0; 8],
            reason: 0,
        }
    }

    /// Its bytes.
    pub fn encode(&self) -> [u8; EVENT_SIZE] {
        let mut b = [0u8; EVENT_SIZE];
        b[0..4].copy_from_slice(&self.event.to_le_bytes());
        b[4..12].copy_from_slice(&self.lun);
        b[12..16].copy_from_slice(&self.reason.to_le_bytes());
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_name_luns_as_report_luns_does() {
        let e = Event::transport_reset(0, 1, VIRTIO_SCSI_EVT_RESET_RESCAN);
        assert_eq!(e.lun, [1, 0, 0, 1, 0, 0, 0, 0]);
        let e = Event::transport_reset(2, 300, VIRTIO_SCSI_EVT_RESET_REMOVED);
        assert_eq!(e.lun, [1, 2, 0x41, 0x2c, 0, 0, 0, 0]);
        assert_eq!(decode_lun(&e.lun), Some((2, 300)));
    }

    #[test]
    fn luns_decode_like_qemu() {
        assert_eq!(decode_lun(&encode_lun(3, 7)), Some((3, 7)));
        assert_eq!(decode_lun(&encode_lun(0, 16383)), Some((0, 16383)));
        assert_eq!(decode_lun(&[1, 2, 0, 5, 0, 0, 0, 0]), Some((2, 5)));
        assert_eq!(decode_lun(&[0, 0, 0x40, 0, 0, 0, 0, 0]), None);
        assert_eq!(decode_lun(&[1, 0, 0xc0, 0, 0, 0, 0, 0]), None);
    }

    #[test]
    fn layouts() {
        let mut req = vec![0u8; CMD_HDR + 32];
        req[..8].copy_from_slice(&encode_lun(0, 1));
        req[8..16].copy_from_slice(&77u64.to_le_bytes());
        req[CMD_HDR] = 0x12;
        let h = parse_cmd(&req, 32).unwrap();
        assert_eq!((h.tag, h.cdb[0], h.cdb.len()), (77, 0x12, 32));
        assert!(parse_cmd(&req[..40], 32).is_err());
        let resp = CmdResponse {
            sense_len: 18,
            resid: 5,
            status: 2,
            response: 0,
            sense: SmallVec::from_slice(&[0x70; 18]),
        };
        let b = resp.encode(96);
        assert_eq!(b.len(), 108);
        assert!(!b.spilled(), "the default response size is encoded inline");
        assert_eq!(&b[0..12], &[18, 0, 0, 0, 5, 0, 0, 0, 0, 0, 2, 0]);
        let mut tmf = vec![0u8; TMF_REQ];
        tmf[4] = VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET as u8;
        assert!(matches!(
            parse_ctrl(&tmf),
            Ok(CtrlRequest::Tmf { subtype: 5, .. })
        ));
        assert_eq!(parse_ctrl(&[9, 0, 0, 0]), Err(WireError::UnknownType(9)));
        assert_eq!(Event::missed().encode()[0..4], [0, 0, 0, 0x80]);
    }
}
