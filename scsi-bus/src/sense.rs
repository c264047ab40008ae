//! Sense data: the key / additional sense code / qualifier triple a CHECK CONDITION
//! carries, in fixed (SPC-4 4.5.3) or descriptor (4.5.2) format.

/// SCSI status byte values (SAM-5 5.3).
pub mod status {
    /// The command completed.
    pub const GOOD: u8 = 0x00;
    /// The command failed; sense data says why.
    pub const CHECK_CONDITION: u8 = 0x02;
    /// The logical unit is busy.
    pub const BUSY: u8 = 0x08;
    /// A task-set-full condition.
    pub const TASK_SET_FULL: u8 = 0x28;
}

/// Sense keys (SPC-4 table 48).
pub mod key {
    /// No sense.
    pub const NO_SENSE: u8 = 0x0;
    /// Not ready.
    pub const NOT_READY: u8 = 0x2;
    /// Medium error.
    pub const MEDIUM_ERROR: u8 = 0x3;
    /// Hardware error.
    pub const HARDWARE_ERROR: u8 = 0x4;
    /// Illegal request.
    pub const ILLEGAL_REQUEST: u8 = 0x5;
    /// Unit attention.
    pub const UNIT_ATTENTION: u8 = 0x6;
    /// Data protect.
    pub const DATA_PROTECT: u8 = 0x7;
    /// Aborted command.
    pub const ABORTED_COMMAND: u8 = 0xb;
}

/// One sense condition: sense key, additional sense code (ASC) and qualifier (ASCQ).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Sense {
    /// Sense key ([`key`]).
    pub key: u8,
    /// Additional sense code.
    pub asc: u8,
    /// Additional sense code qualifier.
    pub ascq: u8,
}

/// Length of fixed-format sense data as this crate produces it.
pub const FIXED_SENSE_LEN: usize = 18;
/// Length of descriptor-format sense data as this crate produces it (no descriptors).
pub const DESCRIPTOR_SENSE_LEN: usize = 8;

impl Sense {
    /// No sense data (00/00/00): what REQUEST SENSE returns when nothing is pending.
    pub const NO_SENSE: Sense = Sense::new(key::NO_SENSE, 0x00, 0x00);
    /// INVALID COMMAND OPERATION CODE (05/20/00).
    pub const INVALID_OPCODE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x20, 0x00);
    /// LOGICAL BLOCK ADDRESS OUT OF RANGE (05/21/00).
    pub const LBA_OUT_OF_RANGE: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x21, 0x00);
    /// INVALID FIELD IN CDB (05/24/00).
    pub const INVALID_FIELD: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x24, 0x00);
    /// LOGICAL UNIT NOT SUPPORTED (05/25/00).
    pub const LUN_NOT_SUPPORTED: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x25, 0x00);
    /// PARAMETER LIST LENGTH ERROR (05/1A/00).
    pub const INVALID_PARAM_LEN: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x1a, 0x00);
    /// INVALID FIELD IN PARAMETER LIST (05/26/00).
    pub const INVALID_PARAM: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x26, 0x00);
    /// SAVING PARAMETERS NOT SUPPORTED (05/39/00).
    pub const SAVING_PARAMS_NOT_SUPPORTED: Sense = Sense::new(key::ILLEGAL_REQUEST, 0x39, 0x00);
    /// POWER ON, RESET, OR BUS DEVICE RESET OCCURRED (06/29/00).
    pub const POWER_ON_RESET: Sense = Sense::new(key::UNIT_ATTENTION, 0x29, 0x00);
    /// CAPACITY DATA HAS CHANGED (06/2A/09).
    pub const CAPACITY_CHANGED: Sense = Sense::new(key::UNIT_ATTENTION, 0x2a, 0x09);
    /// REPORTED LUNS DATA HAS CHANGED (06/3F/0E).
    pub const REPORTED_LUNS_CHANGED: Sense = Sense::new(key::UNIT_ATTENTION, 0x3f, 0x0e);
    /// WRITE PROTECTED (07/27/00).
    pub const WRITE_PROTECTED: Sense = Sense::new(key::DATA_PROTECT, 0x27, 0x00);
    /// SPACE ALLOCATION FAILED WRITE PROTECT (07/27/07): the image's file system is full.
    pub const SPACE_ALLOC_FAILED: Sense = Sense::new(key::DATA_PROTECT, 0x27, 0x07);
    /// I/O PROCESS TERMINATED (0B/00/06): the backend failed the I/O (QEMU's choice for
    /// an unclassified host error).
    pub const IO_ERROR: Sense = Sense::new(key::ABORTED_COMMAND, 0x00, 0x06);
    /// INTERNAL TARGET FAILURE (04/44/00).
    pub const TARGET_FAILURE: Sense = Sense::new(key::HARDWARE_ERROR, 0x44, 0x00);
    /// MISCOMPARE DURING VERIFY OPERATION (0E/1D/00).
    pub const MISCOMPARE: Sense = Sense::new(0xe, 0x1d, 0x00);

    /// The condition `key`/`asc`/`ascq`.
    pub const fn new(key: u8, asc: u8, ascq: u8) -> Sense {
        Sense { key, asc, ascq }
    }

    /// Whether this is a unit attention condition.
    pub fn is_unit_attention(&self) -> bool {
        self.key == key::UNIT_ATTENTION
    }

    /// Fixed-format sense data (response code 70h, current error), 18 bytes.
    pub fn fixed(&self) -> [u8; FIXED_SENSE_LEN] {
        let mut b = [0u8; FIXED_SENSE_LEN];
        b[0] = 0x70;
        b[2] = self.key & 0x0f;
        b[7] = (FIXED_SENSE_LEN - 8) as u8; // additional sense length
        b[12] = self.asc;
        b[13] = self.ascq;
        b
    }

    /// Descriptor-format sense data (response code 72h, current error, no
    /// descriptors), 8 bytes.
    pub fn descriptor(&self) -> [u8; DESCRIPTOR_SENSE_LEN] {
        [0x72, self.key & 0x0f, self.asc, self.ascq, 0, 0, 0, 0]
    }

    /// The sense data in descriptor format if `descriptor`, else fixed.
    pub fn encode(&self, descriptor: bool) -> Vec<u8> {
        if descriptor {
            self.descriptor().to_vec()
        } else {
            self.fixed().to_vec()
        }
    }

    /// Decodes fixed (70h/71h) or descriptor (72h/73h) sense data; `None` if `data` is
    /// neither or too short.
    pub fn decode(data: &[u8]) -> Option<Sense> {
        match data.first()? & 0x7f {
            0x70 | 0x71 if data.len() >= 14 => Some(Sense::new(data[2] & 0xf, data[12], data[13])),
            0x72 | 0x73 if data.len() >= 4 => Some(Sense::new(data[1] & 0xf, data[2], data[3])),
            _ => None,
        }
    }
}

impl std::fmt::Display for Sense {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:X}/{:02X}/{:02X}", self.key, self.asc, self.ascq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_and_descriptor_formats_follow_spc() {
        let s = Sense::LBA_OUT_OF_RANGE;
        let f = s.fixed();
        assert_eq!(f[0], 0x70);
        assert_eq!(f[2], 0x05);
        assert_eq!(f[7], 10);
        assert_eq!((f[12], f[13]), (0x21, 0x00));
        assert_eq!(s.descriptor(), [0x72, 0x05, 0x21, 0x00, 0, 0, 0, 0]);
        assert_eq!(Sense::decode(&f), Some(s));
        assert_eq!(Sense::decode(&s.descriptor()), Some(s));
        assert_eq!(Sense::decode(&[0x70, 0, 5]), None);
        assert_eq!(s.to_string(), "5/21/00");
    }
}

/// A pending unit attention, reported once. Checking for none is one atomic load, so
/// the command fast path takes no lock.
#[derive(Debug, Default)]
pub(crate) struct UnitAttention {
    /// Mirrors `sense.is_some()`; written only under the lock.
    pending: std::sync::atomic::AtomicBool,
    sense: std::sync::Mutex<Option<Sense>>,
}

impl UnitAttention {
    /// One pending from the start.
    pub(crate) fn with(sense: Sense) -> UnitAttention {
        let ua = UnitAttention::default();
        ua.set(sense);
        ua
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Sense>> {
        self.sense
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Raises `sense` (replacing one not yet reported).
    pub(crate) fn set(&self, sense: Sense) {
        let mut s = self.lock();
        *s = Some(sense);
        // Release, under the lock: pairs with the Acquire load in `take`, so a command
        // that sees the flag finds the sense under the lock.
        self.pending
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Takes the pending unit attention, if any (reported once).
    pub(crate) fn take(&self) -> Option<Sense> {
        // Acquire: pairs with `set`'s Release. A unit attention raised just after this
        // load is reported to the next command, as if it came a moment later.
        if !self.pending.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let mut s = self.lock();
        self.pending
            .store(false, std::sync::atomic::Ordering::Release);
        s.take()
    }

    /// Clears the pending unit attention if it is `sense`.
    pub(crate) fn clear_if(&self, sense: Sense) {
        let mut s = self.lock();
        if *s == Some(sense) {
            *s = None;
            self.pending
                .store(false, std::sync::atomic::Ordering::Release);
        }
    }
}
