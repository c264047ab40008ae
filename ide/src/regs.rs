//! Register bits and command opcodes (ATA/ATAPI-8, MMC-6, the PIIX3 datasheet).

/// Status register: busy.
pub const BSY: u8 = 0x80;
/// Status register: device ready.
pub const DRDY: u8 = 0x40;
/// Status register: device fault.
pub const DF: u8 = 0x20;
/// Status register: seek complete (DSC).
pub const DSC: u8 = 0x10;
/// Status register: data request.
pub const DRQ: u8 = 0x08;
/// Status register: error.
pub const ERR: u8 = 0x01;

/// Error register: command aborted.
pub const ABRT: u8 = 0x04;

/// Device control: interrupts disabled (nIEN).
pub const NIEN: u8 = 0x02;
/// Device control: software reset.
pub const SRST: u8 = 0x04;
/// Device control: read the high-order bytes of the LBA48 registers.
pub const HOB: u8 = 0x80;

/// Device/head register: LBA addressing.
pub const SELECT_LBA: u8 = 0x40;
/// Device/head register: device 1.
pub const SELECT_DEV1: u8 = 0x10;

/// ATAPI interrupt reason (the sector count register): command/data.
pub const IREASON_COD: u8 = 0x01;
/// ATAPI interrupt reason: input to the host.
pub const IREASON_IO: u8 = 0x02;

/// Bus-master command register: start/stop.
pub const BM_CMD_START: u8 = 0x01;
/// Bus-master command register: the transfer writes to memory (a device read).
pub const BM_CMD_WRITE: u8 = 0x08;
/// Bus-master status: active.
pub const BM_ST_ACTIVE: u8 = 0x01;
/// Bus-master status: error (write 1 to clear).
pub const BM_ST_ERROR: u8 = 0x02;
/// Bus-master status: interrupt (write 1 to clear).
pub const BM_ST_INT: u8 = 0x04;
/// Bus-master status: drive 0 DMA capable.
pub const BM_ST_DMA0: u8 = 0x20;
/// Bus-master status: drive 1 DMA capable.
pub const BM_ST_DMA1: u8 = 0x40;

/// ATA command opcodes this crate implements.
#[allow(missing_docs)]
pub mod cmd {
    pub const DEVICE_RESET: u8 = 0x08;
    pub const RECALIBRATE: u8 = 0x10;
    pub const READ_SECTORS: u8 = 0x20;
    pub const READ_SECTORS_NORETRY: u8 = 0x21;
    pub const READ_SECTORS_EXT: u8 = 0x24;
    pub const READ_DMA_EXT: u8 = 0x25;
    pub const READ_MULTIPLE_EXT: u8 = 0x29;
    pub const WRITE_SECTORS: u8 = 0x30;
    pub const WRITE_SECTORS_NORETRY: u8 = 0x31;
    pub const WRITE_SECTORS_EXT: u8 = 0x34;
    pub const WRITE_DMA_EXT: u8 = 0x35;
    pub const WRITE_MULTIPLE_EXT: u8 = 0x39;
    pub const READ_VERIFY: u8 = 0x40;
    pub const READ_VERIFY_NORETRY: u8 = 0x41;
    pub const READ_VERIFY_EXT: u8 = 0x42;
    pub const SEEK: u8 = 0x70;
    pub const EXECUTE_DIAGNOSTIC: u8 = 0x90;
    pub const INITIALIZE_PARAMS: u8 = 0x91;
    pub const PACKET: u8 = 0xa0;
    pub const IDENTIFY_PACKET: u8 = 0xa1;
    pub const READ_MULTIPLE: u8 = 0xc4;
    pub const WRITE_MULTIPLE: u8 = 0xc5;
    pub const SET_MULTIPLE: u8 = 0xc6;
    pub const READ_DMA: u8 = 0xc8;
    pub const READ_DMA_NORETRY: u8 = 0xc9;
    pub const WRITE_DMA: u8 = 0xca;
    pub const WRITE_DMA_NORETRY: u8 = 0xcb;
    pub const STANDBY_IMMEDIATE: u8 = 0xe0;
    pub const IDLE_IMMEDIATE: u8 = 0xe1;
    pub const STANDBY: u8 = 0xe2;
    pub const IDLE: u8 = 0xe3;
    pub const CHECK_POWER_MODE: u8 = 0xe5;
    pub const FLUSH_CACHE: u8 = 0xe7;
    pub const FLUSH_CACHE_EXT: u8 = 0xea;
    pub const IDENTIFY: u8 = 0xec;
    pub const SET_FEATURES: u8 = 0xef;
}

/// MMC (ATAPI packet) opcodes this crate implements.
#[allow(missing_docs)]
pub mod scsi {
    pub const TEST_UNIT_READY: u8 = 0x00;
    pub const REQUEST_SENSE: u8 = 0x03;
    pub const INQUIRY: u8 = 0x12;
    pub const START_STOP_UNIT: u8 = 0x1b;
    pub const PREVENT_ALLOW: u8 = 0x1e;
    pub const READ_CAPACITY: u8 = 0x25;
    pub const READ_10: u8 = 0x28;
    pub const READ_TOC: u8 = 0x43;
    pub const GET_CONFIGURATION: u8 = 0x46;
    pub const GET_EVENT_STATUS: u8 = 0x4a;
    pub const READ_DISC_INFO: u8 = 0x51;
    pub const MODE_SENSE_10: u8 = 0x5a;
    pub const READ_12: u8 = 0xa8;
}

/// SCSI sense keys and additional sense codes used by the ATAPI model.
#[allow(missing_docs)]
pub mod sense {
    pub const NO_SENSE: u8 = 0x00;
    pub const NOT_READY: u8 = 0x02;
    pub const MEDIUM_ERROR: u8 = 0x03;
    pub const ILLEGAL_REQUEST: u8 = 0x05;
    pub const UNIT_ATTENTION: u8 = 0x06;

    pub const ASC_UNRECOVERED_READ: u8 = 0x11;
    pub const ASC_INVALID_OPCODE: u8 = 0x20;
    pub const ASC_LBA_OUT_OF_RANGE: u8 = 0x21;
    pub const ASC_INVALID_FIELD: u8 = 0x24;
    pub const ASC_MEDIUM_MAY_HAVE_CHANGED: u8 = 0x28;
    pub const ASC_SAVING_NOT_SUPPORTED: u8 = 0x39;
    pub const ASC_MEDIUM_NOT_PRESENT: u8 = 0x3a;
    pub const ASC_MEDIUM_REMOVAL_PREVENTED: u8 = 0x53;
}
