//! The core of virtio device models, independent of their transport: the device trait
//! a transport drives, interrupts, and the generic queue runner devices build on.
//!
//! A device model ([`VirtioDevice`]) knows its features, its config space and how to
//! serve a queue; a transport (virtio-pci on KVM, vhost-user in the storage daemon)
//! negotiates features, sets the queues up in guest memory and hands each one over with
//! its kick notifier, the guest memory ([`RamList`]), an interrupt ([`VirtioInterrupt`])
//! and the iothread that serves it. Requests then never leave that iothread: kick →
//! descriptor chain → the device's handling (block-dma on io_uring for virtio-blk) →
//! used ring → interrupt.
//!
//! The part every device shares lives here: [`QueueSet`] runs a device's queues, each
//! on its iothread (starts and stops in submission order without the submitter
//! waiting, a stop drains the queue's in-flight requests), and the runner behind it
//! pops chains on a kick, tracks what is in flight and coalesces used-buffer
//! notifications; the device supplies a [`QueueHandler`] that turns one chain into a
//! request and completes it.
#![deny(missing_docs)]

mod ops;
mod queues;
mod runner;

pub use queues::{QueuePoller, QueueSet};
pub use runner::{Completion, Desc, InFlight, QueueHandler};

use std::sync::Arc;

use aio_context::{EventNotifier, IoThread};
use ram_block::RamList;
use virtio_queue::Queue;

/// How a device tells the driver that a queue has used buffers (or the config
/// changed): a write to an irqfd or a vhost-user call eventfd, an MSI-X message, an
/// INTx line with the ISR bit. Called on the queue's iothread.
pub trait VirtioInterrupt: Send + Sync {
    /// Signals that queue `index` has new used buffers.
    fn notify_queue(&self, index: u16);
    /// Signals a configuration change.
    fn notify_config(&self) {}
    /// The driver broke the device's rules (QEMU's `virtio_error`): the transport sets
    /// `DEVICE_NEEDS_RESET` and signals a configuration change.
    fn device_error(&self) {}
}

/// An interrupt that writes an eventfd (irqfd, vhost-user call fd).
pub struct EventInterrupt {
    /// One notifier per queue.
    pub queues: Vec<Option<EventNotifier>>,
}

impl VirtioInterrupt for EventInterrupt {
    fn notify_queue(&self, index: u16) {
        if let Some(Some(n)) = self.queues.get(usize::from(index)) {
            // A failed write means the other side is gone; nothing to do.
            let _ = n.set();
        }
    }
}

/// What a transport hands a device to serve one queue.
pub struct QueueSetup {
    /// The queue, with addresses, size and `next_avail`/`next_used` set, ready.
    pub queue: Queue,
    /// Set by the driver's notification (ioeventfd, vhost-user kick fd).
    pub kick: EventNotifier,
    /// The guest memory the queue and the buffers live in.
    pub memory: RamList,
    /// How used buffers are signalled.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// The iothread that serves the queue.
    pub iothread: Arc<IoThread>,
}

/// Why a queue could not be started.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QueueError {
    /// The index is not one of the device's queues.
    #[error("queue {0} does not exist")]
    NoSuchQueue(u16),
    /// The queue's rings are not valid in guest memory.
    #[error("queue {0} is not valid (rings outside guest memory or bad size)")]
    Invalid(u16),
    /// Registering the kick notifier failed.
    #[error("queue {index}: {source}")]
    Io {
        /// The queue.
        index: u16,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// Copies `config[offset..]` into `data` for [`VirtioDevice::read_config`]; bytes
/// beyond the config space (or an offset that does not fit) read as 0.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    for (i, b) in data.iter_mut().enumerate() {
        *b = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(i))
            .and_then(|o| config.get(o))
            .copied()
            .unwrap_or(0);
    }
}

/// A virtio device model.
pub trait VirtioDevice: Send {
    /// The virtio device ID (2: block).
    fn device_type(&self) -> u32;
    /// How many queues the device offers.
    fn num_queues(&self) -> u16;
    /// The largest size of each queue.
    fn queue_max_size(&self) -> u16;
    /// The feature bits offered.
    fn features(&self) -> u64;
    /// Records the features the driver accepted (a subset of [`features`](Self::features)).
    fn ack_features(&mut self, features: u64);
    /// Reads the device-specific config space (out-of-range bytes read as 0).
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific config space (read-only fields are ignored).
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts serving queue `index`.
    ///
    /// # Errors
    ///
    /// [`QueueError`].
    fn start_queue(&mut self, index: u16, setup: QueueSetup) -> Result<(), QueueError>;
    /// Stops serving queue `index` after its in-flight requests completed (their
    /// status and used entries are written), and returns the queue (its
    /// `next_avail`/`next_used` are the vhost-user vring base). `None` if not started.
    /// Waits for the drain: never call it inside an RCU read section or a `call_rcu`
    /// callback (use [`reset_async`](Self::reset_async)).
    fn stop_queue(&mut self, index: u16) -> Option<Queue>;
    /// Stops every queue (a device reset), waiting for the drains.
    fn reset(&mut self) {
        for i in 0..self.num_queues() {
            self.stop_queue(i);
        }
    }
    /// Starts serving queue `index` without waiting for the queue's context: the start
    /// runs there after any stop submitted before it has drained. A failure found
    /// there is reported through `setup.interrupt`'s
    /// [`device_error`](VirtioInterrupt::device_error). The default waits
    /// ([`start_queue`](Self::start_queue)).
    ///
    /// # Errors
    ///
    /// What can be checked at once: [`QueueError::NoSuchQueue`], [`QueueError::Invalid`].
    fn start_queue_async(&mut self, index: u16, setup: QueueSetup) -> Result<(), QueueError> {
        self.start_queue(index, setup)
    }
    /// Stops every queue without waiting: each drains in its own context, then `done`
    /// runs (on whichever thread finished last; `done` must not block). What a device
    /// reset from a vCPU's port dispatch, or a `Drop` on the reclaim thread, uses. The
    /// default waits ([`reset`](Self::reset)), then calls `done`.
    fn reset_async(&mut self, done: Box<dyn FnOnce() + Send>) {
        self.reset();
        done();
    }
}

/// The README's example, run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
