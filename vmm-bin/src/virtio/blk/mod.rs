//! The virtio-blk device model (virtio 1.2, section 5.2), shared by the virtio-pci
//! transport and the vhost-user export.
//!
//! Requests: IN, OUT, FLUSH, GET_ID, DISCARD, WRITE_ZEROES. Features: VERSION_1,
//! SEG_MAX, BLK_SIZE, FLUSH, DISCARD, WRITE_ZEROES, MQ, RO, EVENT_IDX, INDIRECT_DESC.
//! I/O goes through a [`Drive`] (block-dma), so werror/rerror apply.
//!
//! Queue starts and stops run in the queue's iothread, one at a time in submission
//! order (`ops.rs`); the transport-facing calls either wait for them
//! ([`VirtioDevice::start_queue`], [`VirtioDevice::stop_queue`], for vhost-user's
//! `GET_VRING_BASE`) or do not ([`VirtioDevice::start_queue_async`],
//! [`VirtioDevice::reset_async`], `Drop`): a vCPU's reset or the reclaim thread never
//! waits for a drain.

pub mod config;
mod ops;
pub mod request;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use aio_context::IoThread;
use block_dma::Drive;
use virtio_queue::{Queue, QueueT};

use self::config::*;
use self::request::DiskLimits;
use self::worker::DeviceInfo;
use super::{
    QueueError, QueueSetup, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
    VIRTIO_RING_F_INDIRECT_DESC, VirtioDevice,
};

/// The virtio device ID of a block device.
pub const VIRTIO_ID_BLOCK: u32 = 2;

static NEXT_WORKER: AtomicU64 = AtomicU64::new(1);

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

struct Running {
    id: u64,
    iothread: Arc<IoThread>,
}

/// A virtio-blk device over a [`Drive`].
pub struct VirtioBlk {
    info: DeviceInfo,
    options: BlkOptions,
    features: u64,
    acked: u64,
    config: BlkConfig,
    queues: Vec<Option<Running>>,
    /// Starts and stops, in order, in the queues' iothreads.
    ops: Arc<ops::OpChain>,
}

impl VirtioBlk {
    /// A device serving `drive`.
    ///
    /// # Errors
    ///
    /// An invalid option (queue count 0 or above 64, queue size not a power of two
    /// within 2..=1024, a serial longer than 20 bytes, a block size other than 512 or
    /// 4096).
    pub fn new(drive: Drive, options: BlkOptions) -> Result<VirtioBlk, String> {
        if options.num_queues == 0 || options.num_queues > 64 {
            return Err(format!(
                "num-queues {} out of range 1..=64",
                options.num_queues
            ));
        }
        if !options.queue_size.is_power_of_two() || !(2..=1024).contains(&options.queue_size) {
            return Err(format!(
                "queue-size {} must be a power of two in 2..=1024",
                options.queue_size
            ));
        }
        if options.serial.len() > ID_BYTES {
            return Err(format!(
                "serial '{}' is longer than 20 bytes",
                options.serial
            ));
        }
        if ![512, 4096].contains(&options.logical_block_size) {
            return Err("logical block size must be 512 or 4096".into());
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
            queues: (0..options.num_queues).map(|_| None).collect(),
            options,
            features,
            acked: 0,
            config,
            ops: Arc::default(),
        })
    }

    /// The drive.
    pub fn drive(&self) -> &Drive {
        &self.info.drive
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
        let bytes = self.config.to_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| bytes.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // writeback (WCE) is not offered; every field is read-only.
    }

    fn start_queue(&mut self, index: u16, setup: QueueSetup) -> Result<(), QueueError> {
        rcu::assert_may_block("virtio-blk start_queue (waits for its iothread)");
        assert_not_on(&setup.iothread);
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit_start(index, setup, move |result| {
            let _ = tx.send(result);
        })?;
        // The iothread gone (the operation dropped unrun) reads as an I/O error.
        let result = rx
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the iothread has stopped")));
        result.map_err(|source| QueueError::Io { index, source })
    }

    fn start_queue_async(&mut self, index: u16, setup: QueueSetup) -> Result<(), QueueError> {
        let interrupt = setup.interrupt.clone();
        self.submit_start(index, setup, move |result| {
            if let Err(e) = result {
                eprintln!("virtio-blk: cannot start queue {index}: {e}");
                interrupt.device_error();
            }
        })
    }

    fn stop_queue(&mut self, index: u16) -> Option<Queue> {
        rcu::assert_may_block("virtio-blk stop_queue (drains its I/O)");
        let running = self.queues.get_mut(usize::from(index))?.take()?;
        assert_not_on(&running.iothread);
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit_stop(running, move |queue| {
            let _ = tx.send(queue);
        });
        rx.recv().ok().flatten()
    }

    fn reset_async(&mut self, done: Box<dyn FnOnce() + Send>) {
        self.stop_all_async();
        // Runs after every stop submitted above has drained.
        self.ops.submit(None, done);
    }
}

/// Panics on `iothread` itself: a call that waits for an operation there would wait
/// for itself (as `IoThread::run` refuses to).
fn assert_not_on(iothread: &IoThread) {
    assert!(
        std::thread::current().name() != Some(iothread.name()),
        "virtio-blk: a waiting queue operation called on iothread {} itself",
        iothread.name()
    );
}

impl VirtioBlk {
    /// Checks `setup` and submits the start of queue `index` (after a stop of what ran
    /// there before); `report` gets the worker's start result, on the iothread.
    ///
    /// # Errors
    ///
    /// A queue that does not exist, or rings that are not valid in guest memory.
    fn submit_start(
        &mut self,
        index: u16,
        setup: QueueSetup,
        report: impl FnOnce(std::io::Result<()>) + Send + 'static,
    ) -> Result<(), QueueError> {
        let old = self
            .queues
            .get_mut(usize::from(index))
            .ok_or(QueueError::NoSuchQueue(index))?
            .take();
        if let Some(old) = old {
            self.submit_stop(old, drop);
        }
        let mut queue = setup.queue;
        queue.set_event_idx(self.acked & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
        if !queue.is_valid(&*setup.memory.memory()) {
            return Err(QueueError::Invalid(index));
        }
        let id = NEXT_WORKER.fetch_add(1, Ordering::Relaxed);
        let info = self.info.clone();
        let (kick, memory, interrupt) = (setup.kick, setup.memory, setup.interrupt);
        self.ops.submit(Some(setup.iothread.handle()), move || {
            report(worker::start(
                id, index, queue, kick, memory, interrupt, info,
            ))
        });
        self.queues[usize::from(index)] = Some(Running {
            id,
            iothread: setup.iothread,
        });
        Ok(())
    }

    /// Submits the stop (drain) of `running` in its iothread; `report` gets its queue
    /// there. The iothread reference travels with the operation, so a last reference
    /// is dropped on the iothread itself, never joined by the submitter.
    fn submit_stop(&self, running: Running, report: impl FnOnce(Option<Queue>) + Send + 'static) {
        let handle = running.iothread.handle().clone();
        self.ops.submit(Some(&handle), move || {
            let queue = worker::stop(running.id);
            report(queue);
            drop(running);
        });
    }

    /// Submits the stop of every running queue, without waiting.
    fn stop_all_async(&mut self) {
        for slot in &mut self.queues {
            if let Some(running) = slot.take() {
                self.ops
                    .submit(Some(&running.iothread.handle().clone()), move || {
                        worker::stop(running.id);
                        drop(running);
                    });
            }
        }
    }
}

impl Drop for VirtioBlk {
    /// Schedules the drain of every running queue in its iothread and returns: a
    /// device dropped after a grace period (`device_del`) is dropped on the `call_rcu`
    /// thread, which must never wait for I/O.
    fn drop(&mut self) {
        self.stop_all_async();
    }
}
