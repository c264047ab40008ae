//! The virtio-blk config space and feature bits (virtio 1.2, section 5.2). The values
//! come from `virtio-bindings` (Linux's `virtio_blk.h`); the short names are ours.

use virtio_bindings::virtio_blk as b;

/// `VIRTIO_BLK_F_SIZE_MAX`.
pub const F_SIZE_MAX: u32 = b::VIRTIO_BLK_F_SIZE_MAX;
/// `VIRTIO_BLK_F_SEG_MAX`.
pub const F_SEG_MAX: u32 = b::VIRTIO_BLK_F_SEG_MAX;
/// `VIRTIO_BLK_F_RO`.
pub const F_RO: u32 = b::VIRTIO_BLK_F_RO;
/// `VIRTIO_BLK_F_BLK_SIZE`.
pub const F_BLK_SIZE: u32 = b::VIRTIO_BLK_F_BLK_SIZE;
/// `VIRTIO_BLK_F_FLUSH`.
pub const F_FLUSH: u32 = b::VIRTIO_BLK_F_FLUSH;
/// `VIRTIO_BLK_F_TOPOLOGY`.
pub const F_TOPOLOGY: u32 = b::VIRTIO_BLK_F_TOPOLOGY;
/// `VIRTIO_BLK_F_MQ`.
pub const F_MQ: u32 = b::VIRTIO_BLK_F_MQ;
/// `VIRTIO_BLK_F_DISCARD`.
pub const F_DISCARD: u32 = b::VIRTIO_BLK_F_DISCARD;
/// `VIRTIO_BLK_F_WRITE_ZEROES`.
pub const F_WRITE_ZEROES: u32 = b::VIRTIO_BLK_F_WRITE_ZEROES;

/// Request types.
pub const T_IN: u32 = b::VIRTIO_BLK_T_IN;
/// Write.
pub const T_OUT: u32 = b::VIRTIO_BLK_T_OUT;
/// Flush.
pub const T_FLUSH: u32 = b::VIRTIO_BLK_T_FLUSH;
/// Device ID string.
pub const T_GET_ID: u32 = b::VIRTIO_BLK_T_GET_ID;
/// Discard.
pub const T_DISCARD: u32 = b::VIRTIO_BLK_T_DISCARD;
/// Write zeroes.
pub const T_WRITE_ZEROES: u32 = b::VIRTIO_BLK_T_WRITE_ZEROES;

/// Status: success.
pub const S_OK: u8 = b::VIRTIO_BLK_S_OK as u8;
/// Status: I/O error.
pub const S_IOERR: u8 = b::VIRTIO_BLK_S_IOERR as u8;
/// Status: unsupported request.
pub const S_UNSUPP: u8 = b::VIRTIO_BLK_S_UNSUPP as u8;

/// Length of the device ID (GET_ID).
pub const ID_BYTES: usize = b::VIRTIO_BLK_ID_BYTES as usize;
/// The `flags` bit of a write-zeroes segment that allows deallocation.
pub const WRITE_ZEROES_FLAG_UNMAP: u32 = b::VIRTIO_BLK_WRITE_ZEROES_FLAG_UNMAP;

/// The most sectors one discard or write-zeroes request may cover (QEMU's default
/// for raw files is `INT32_MAX / 512`-ish; we keep it at 32 MiB per request).
pub const MAX_DISCARD_SECTORS: u32 = 65536;
/// The most data segments per request we advertise (`seg_max`): queue size - 2.
pub fn seg_max(queue_size: u16) -> u32 {
    u32::from(queue_size).saturating_sub(2)
}

/// The config space, as the driver reads it (little-endian, packed, 60 bytes up to
/// `write_zeroes_may_unmap` plus padding).
#[derive(Clone, Debug, Default)]
pub struct BlkConfig {
    /// Capacity in 512-byte sectors.
    pub capacity: u64,
    /// Max segment size (SIZE_MAX; unused).
    pub size_max: u32,
    /// Max segments per request.
    pub seg_max: u32,
    /// Logical block size.
    pub blk_size: u32,
    /// Physical block exponent (TOPOLOGY).
    pub physical_block_exp: u8,
    /// Number of queues (MQ).
    pub num_queues: u16,
    /// Max discard sectors.
    pub max_discard_sectors: u32,
    /// Max discard segments.
    pub max_discard_seg: u32,
    /// Discard sector alignment.
    pub discard_sector_alignment: u32,
    /// Max write-zeroes sectors.
    pub max_write_zeroes_sectors: u32,
    /// Max write-zeroes segments.
    pub max_write_zeroes_seg: u32,
    /// Whether write-zeroes may unmap.
    pub write_zeroes_may_unmap: u8,
}

impl BlkConfig {
    /// The little-endian bytes (struct virtio_blk_config, 64 bytes).
    pub fn to_bytes(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..8].copy_from_slice(&self.capacity.to_le_bytes());
        b[8..12].copy_from_slice(&self.size_max.to_le_bytes());
        b[12..16].copy_from_slice(&self.seg_max.to_le_bytes());
        // geometry: cylinders u16, heads u8, sectors u8 at 16..20 (unused)
        b[20..24].copy_from_slice(&self.blk_size.to_le_bytes());
        b[24] = self.physical_block_exp;
        // alignment_offset u8 (25), min_io_size u16 (26), opt_io_size u32 (28)
        // writeback u8 (32), unused0 u8 (33)
        b[34..36].copy_from_slice(&self.num_queues.to_le_bytes());
        b[36..40].copy_from_slice(&self.max_discard_sectors.to_le_bytes());
        b[40..44].copy_from_slice(&self.max_discard_seg.to_le_bytes());
        b[44..48].copy_from_slice(&self.discard_sector_alignment.to_le_bytes());
        b[48..52].copy_from_slice(&self.max_write_zeroes_sectors.to_le_bytes());
        b[52..56].copy_from_slice(&self.max_write_zeroes_seg.to_le_bytes());
        b[56] = self.write_zeroes_may_unmap;
        b
    }
}
