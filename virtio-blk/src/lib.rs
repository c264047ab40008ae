//! The virtio-blk device model (virtio 1.2, section 5.2), transport-free: the
//! virtio-pci transport and the vhost-user export drive it through
//! [`VirtioDevice`].
//!
//! Requests: IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES. Features: VERSION_1,
//! SEG_MAX, BLK_SIZE, FLUSH, DISCARD, WRITE_ZEROES, MQ, RO, EVENT_IDX, INDIRECT_DESC.
//! I/O goes through a [`Drive`] (block-dma), so werror/rerror apply.
//!
//! The queues run on virtio-core's generic runner ([`QueueSet`]): starts and stops in
//! the queue's iothread, one at a time in submission order; the transport-facing calls
//! either wait for them ([`VirtioDevice::start_queue`], [`VirtioDevice::stop_queue`],
//! for vhost-user's `GET_VRING_BASE`) or do not ([`VirtioDevice::start_queue_async`],
//! [`VirtioDevice::reset_async`], `Drop`): a vCPU's reset or the reclaim thread never
//! waits for a drain. This crate adds the block device: config, request parsing (with
//! the whole-chain check) and the requests' I/O on the drive (`queue.rs`).
#![deny(missing_docs)]

pub mod config;
mod queue;
pub mod request;

use block_dma::Drive;
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_core::{QueueError, QueueSet, QueueSetup, VirtioDevice};
use virtio_queue::Queue;

use self::config::*;
use self::queue::{BlkQueue, DeviceInfo};
use self::request::DiskLimits;

/// Options of a virtio-blk device.
#[derive(Clone, Debug)]
pub struct BlkOptions {
    /// Number of request queues (`num-queues`).
    pub num_queues: u16,
    /// Queue size (`queue-size`, a power of two up to 1024).
    pub queue_size: u16,
    /// The device ID string returned by GET_ID (`serial`), at most 20 bytes.
    pub serial: String,
    /// Logical block size in bytes (512 or 4096).
    pub logical_block_size: u32,
}

impl Default for BlkOptions {
    fn default() -> Self {
        BlkOptions {
            num_queues: 1,
            queue_size: 256,
            serial: String::new(),
            logical_block_size: 512,
        }
    }
}

/// A [`BlkOptions`] value the device cannot have.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum OptionError {
    /// `num-queues` out of 1..=64.
    #[error("num-queues {0} out of range 1..=64")]
    NumQueues(u16),
    /// `queue-size` not a power of two in 2..=1024.
    #[error("queue-size {0} must be a power of two in 2..=1024")]
    QueueSize(u16),
    /// A serial longer than the 20-byte device ID.
    #[error("serial '{0}' is longer than 20 bytes")]
    Serial(String),
    /// A logical block size other than 512 or 4096.
    #[error("logical block size must be 512 or 4096")]
    BlockSize(u32),
}

/// A virtio-blk device over a [`Drive`].
pub struct VirtioBlk {
    /// The running queues (first: dropping them schedules their drains).
    queues: QueueSet,
    info: DeviceInfo,
    options: BlkOptions,
    features: u64,
    acked: u64,
    config: BlkConfig,
}

impl VirtioBlk {
    /// A device serving `drive`.
    ///
    /// # Errors
    ///
    /// An invalid option (queue count 0 or above 64, queue size not a power of two
    /// within 2..=1024, a serial longer than 20 bytes, a block size other than 512 or
    /// 4096).
    pub fn new(drive: Drive, options: BlkOptions) -> Result<VirtioBlk, OptionError> {
        if options.num_queues == 0 || options.num_queues > 64 {
            return Err(OptionError::NumQueues(options.num_queues));
        }
        if !options.queue_size.is_power_of_two() || !(2..=1024).contains(&options.queue_size) {
            return Err(OptionError::QueueSize(options.queue_size));
        }
        if options.serial.len() > ID_BYTES {
            return Err(OptionError::Serial(options.serial));
        }
        if ![512, 4096].contains(&options.logical_block_size) {
            return Err(OptionError::BlockSize(options.logical_block_size));
        }
        let backend = drive.backend().info().clone();
        let size = backend.size & !511;
        let mut serial = [0u8; ID_BYTES];
        serial[..options.serial.len()].copy_from_slice(options.serial.as_bytes());
        let mut features = 1u64 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << F_SEG_MAX
            | 1 << F_BLK_SIZE
            | 1 << F_FLUSH
            | 1 << F_MQ
            | 1 << F_WRITE_ZEROES;
        if backend.discard {
            features |= 1 << F_DISCARD;
        }
        if backend.read_only {
            features |= 1 << F_RO;
        }
        let config = BlkConfig {
            capacity: size / 512,
            seg_max: seg_max(options.queue_size),
            blk_size: options.logical_block_size,
            num_queues: options.num_queues,
            max_discard_sectors: MAX_DISCARD_SECTORS,
            max_discard_seg: 1,
            discard_sector_alignment: options.logical_block_size / 512,
            max_write_zeroes_sectors: MAX_DISCARD_SECTORS,
            max_write_zeroes_seg: 1,
            write_zeroes_may_unmap: 1,
            ..BlkConfig::default()
        };
        let limits = DiskLimits {
            size,
            read_only: backend.read_only,
            discard: backend.discard,
            write_zeroes: backend.write_zeroes,
        };
        Ok(VirtioBlk {
            info: DeviceInfo {
                drive,
                limits,
                serial,
            },
            queues: QueueSet::new("virtio-blk", options.num_queues),
            options,
            features,
            acked: 0,
            config,
        })
    }

    /// The drive.
    pub fn drive(&self) -> &Drive {
        &self.info.drive
    }

    /// The capacity in 512-byte sectors the config space shows now: the drive's size
    /// (whole sectors), which `block_resize` changes. The owner that resizes the drive
    /// tells the driver through its transport (a config-change interrupt: virtio-pci's
    /// `notify_config`, vhost-user's `CONFIG_CHANGE_MSG`); the driver then reads this.
    pub fn capacity(&self) -> u64 {
        self.info.drive.backend().size() / 512
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked
    }
}

impl VirtioDevice for VirtioBlk {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn num_queues(&self) -> u16 {
        self.options.num_queues
    }

    fn queue_max_size(&self) -> u16 {
        self.options.queue_size
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let config = BlkConfig {
            capacity: self.capacity(),
            ..self.config.clone()
        };
        virtio_core::read_config_bytes(&config.to_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // writeback (WCE) is not offered; every field is read-only.
    }

    fn start_queue(&mut self, index: u16, setup: QueueSetup) -> Result<(), QueueError> {
        let handler = BlkQueue::new(self.info.clone(), &setup.memory);
        let event_idx = self.event_idx();
        self.queues.start(index, setup, event_idx, handler)
    }

    fn start_queue_async(&mut self, index: u16, setup: QueueSetup) -> Result<(), QueueError> {
        let handler = BlkQueue::new(self.info.clone(), &setup.memory);
        let event_idx = self.event_idx();
        self.queues.start_async(index, setup, event_idx, handler)
    }

    fn stop_queue(&mut self, index: u16) -> Option<Queue> {
        self.queues.stop(index)
    }

    fn reset_async(&mut self, done: Box<dyn FnOnce() + Send>) {
        self.queues.reset_async(done);
    }
}

impl VirtioBlk {
    /// Whether the driver accepted `VIRTIO_RING_F_EVENT_IDX`.
    fn event_idx(&self) -> bool {
        self.acked & (1 << VIRTIO_RING_F_EVENT_IDX) != 0
    }
}

/// The README's example, run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
