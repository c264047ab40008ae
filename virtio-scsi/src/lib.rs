//! The virtio-scsi device model (virtio 1.2, section 5.6), transport-free: the
//! virtio-pci transport and the vhost-user export drive it through [`VirtioDevice`].
//!
//! Queues: 0 control (task management: ABORT TASK, ABORT TASK SET, CLEAR TASK SET,
//! LOGICAL UNIT RESET, I_T NEXUS RESET, QUERY TASK (SET); asynchronous notification
//! query/subscribe, answered with no events), 1 event (TRANSPORT_RESET RESCAN/REMOVED
//! on hotplug, PARAM_CHANGE on a resize ([`ChangeNotifier`]), EVENTS_MISSED when the
//! driver posted no buffer), 2.. `num_queues`
//! request queues. All run on virtio-core's generic runner ([`QueueSet`]); commands go
//! to a [`scsi::ScsiBus`] owned by the device, whose LUNs (scsi-hd) are hot-plugged on
//! the main thread.
//!
//! Hot-unplug: the bus's controller ([`VirtioScsi::new`]'s `on_drained` hook) answers
//! an unplug request with `Pending`, tells the driver (REMOVED event, REPORTED LUNS
//! DATA HAS CHANGED), refuses new commands to the LUN, and calls `on_drained(id)` once
//! its commands in flight have completed; the VMM then finishes the unplug
//! (`HotplugHandler::unplug`) and qdev-bus emits DEVICE_DELETED after the grace period.
//!
//! Task management sees the commands of the queues served by the same iothread as the
//! control queue (one iothread per device, as QEMU's `iothread=`).
#![deny(missing_docs)]

mod chain;
mod change;
mod events;
mod queues;
pub mod wire;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use qdev_bus::{HotplugController, ScsiAddress, UnplugStatus};
use scsi::{ScsiBus, Sense};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_ids::VIRTIO_ID_SCSI;
use virtio_bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_bindings::virtio_scsi::*;
use virtio_core::{QueueError, QueueSet, QueueSetup, VirtioDevice};
use virtio_queue::Queue;

pub use self::change::ChangeNotifier;
use self::events::Events;
use self::queues::{CmdQueue, CtrlQueue, EventQueue, Shared};
use self::wire::{EVENT_SIZE, Event};

/// Queues before the request queues.
const FIXED_QUEUES: u16 = 2;
static NEXT_DEVICE: AtomicU64 = AtomicU64::new(1);

/// Options of a virtio-scsi device (QEMU's property names).
#[derive(Clone, Debug)]
pub struct ScsiOptions {
    /// `num_queues`: request queues.
    pub num_queues: u16,
    /// `virtqueue_size`: a power of two up to 1024.
    pub queue_size: u16,
    /// `max_sectors`.
    pub max_sectors: u32,
    /// `cmd_per_lun`.
    pub cmd_per_lun: u32,
    /// `hotplug`: offer VIRTIO_SCSI_F_HOTPLUG.
    pub hotplug: bool,
}

impl Default for ScsiOptions {
    fn default() -> Self {
        ScsiOptions {
            num_queues: 1,
            queue_size: 256,
            max_sectors: 0xffff,
            cmd_per_lun: 128,
            hotplug: true,
        }
    }
}

/// An option value the device cannot have.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum OptionError {
    /// `num_queues` out of 1..=64.
    #[error("num_queues {0} out of range 1..=64")]
    NumQueues(u16),
    /// `virtqueue_size` not a power of two in 4..=1024.
    #[error("virtqueue_size {0} must be a power of two in 4..=1024")]
    QueueSize(u16),
}

/// The device-specific config space (virtio 1.2, 5.6.4), little-endian.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ScsiConfig {
    /// Request queues.
    pub num_queues: u32,
    /// Most segments per request.
    pub seg_max: u32,
    /// Most sectors per request.
    pub max_sectors: u32,
    /// Most commands per LUN.
    pub cmd_per_lun: u32,
    /// Bytes of an event.
    pub event_info_size: u32,
    /// Bytes of sense data in a response (writable by the driver).
    pub sense_size: u32,
    /// Bytes of CDB in a request (writable by the driver).
    pub cdb_size: u32,
    /// Always 0.
    pub max_channel: u16,
    /// Highest target.
    pub max_target: u16,
    /// Highest LUN.
    pub max_lun: u32,
}

impl ScsiConfig {
    /// The 36 bytes of the config space.
    pub fn to_bytes(&self) -> [u8; 36] {
        let mut b = [0u8; 36];
        for (i, v) in [
            self.num_queues,
            self.seg_max,
            self.max_sectors,
            self.cmd_per_lun,
            self.event_info_size,
            self.sense_size,
            self.cdb_size,
        ]
        .into_iter()
        .enumerate()
        {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        b[28..30].copy_from_slice(&self.max_channel.to_le_bytes());
        b[30..32].copy_from_slice(&self.max_target.to_le_bytes());
        b[32..36].copy_from_slice(&self.max_lun.to_le_bytes());
        b
    }
}

/// The bus's hotplug controller: tells the driver, and drains a LUN before its unplug
/// finishes.
struct Controller {
    bus: OnceLock<Weak<ScsiBus>>,
    events: Arc<Events>,
    hotplug: Arc<AtomicBool>,
    on_drained: Arc<dyn Fn(String) + Send + Sync>,
}

impl Controller {
    fn notify(&self, address: ScsiAddress, reason: u32) {
        if !self.hotplug.load(Ordering::Acquire) {
            return;
        }
        self.events
            .post(Event::transport_reset(address.target, address.lun, reason));
        if let Some(bus) = self.bus.get().and_then(Weak::upgrade) {
            bus.set_unit_attention(Sense::REPORTED_LUNS_CHANGED);
        }
    }
}

impl HotplugController<ScsiAddress> for Controller {
    fn plugged(&self, address: ScsiAddress) {
        self.notify(address, VIRTIO_SCSI_EVT_RESET_RESCAN);
    }

    fn unplug_requested(&self, address: ScsiAddress, id: &str) -> UnplugStatus {
        let Some(bus) = self.bus.get().and_then(Weak::upgrade) else {
            return UnplugStatus::Unplugged;
        };
        self.notify(address, VIRTIO_SCSI_EVT_RESET_REMOVED);
        let guard = rcu::read();
        let Some(dev) = bus.bus().get(&guard, address) else {
            return UnplugStatus::Unplugged;
        };
        let (hook, id) = (self.on_drained.clone(), id.to_owned());
        dev.in_flight().begin_removal(Box::new(move || hook(id)));
        UnplugStatus::Pending
    }
}

/// A virtio-scsi controller with its SCSI bus.
pub struct VirtioScsi {
    /// The running queues (first: dropping them schedules their drains).
    queues: QueueSet,
    shared: Arc<Shared>,
    hotplug: Arc<AtomicBool>,
    /// Set while VIRTIO_SCSI_F_CHANGE is acked ([`ChangeNotifier`]).
    change: Arc<AtomicBool>,
    options: ScsiOptions,
    features: u64,
    acked: u64,
    config: ScsiConfig,
}

impl VirtioScsi {
    /// A controller whose bus is named `bus_name` (`scsi0.0`). `on_drained(id)` runs
    /// when a LUN whose unplug was requested has no command left in flight, on whichever
    /// thread finished the last one (or inside the unplug request, with the bus's writer
    /// lock held): it must not unplug inline, but have the main loop call
    /// `bus().bus().unplug(id)`.
    ///
    /// # Errors
    ///
    /// [`OptionError`].
    pub fn new(
        bus_name: &str,
        options: ScsiOptions,
        on_drained: impl Fn(String) + Send + Sync + 'static,
    ) -> Result<VirtioScsi, OptionError> {
        if options.num_queues == 0 || options.num_queues > 64 {
            return Err(OptionError::NumQueues(options.num_queues));
        }
        if !options.queue_size.is_power_of_two() || !(4..=1024).contains(&options.queue_size) {
            return Err(OptionError::QueueSize(options.queue_size));
        }
        let device = NEXT_DEVICE.fetch_add(1, Ordering::Relaxed);
        let events = Arc::new(Events::new(device));
        let hotplug = Arc::new(AtomicBool::new(false));
        let controller = Controller {
            bus: OnceLock::new(),
            events: events.clone(),
            hotplug: hotplug.clone(),
            on_drained: Arc::new(on_drained),
        };
        let bus = Arc::new_cyclic(|weak: &Weak<ScsiBus>| {
            let _ = controller.bus.set(weak.clone());
            ScsiBus::new(bus_name).with_controller(controller)
        });
        // VIRTIO_SCSI_F_CHANGE: offered, as QEMU's `param_change` property does.
        let mut features = 1u64 << VIRTIO_F_VERSION_1
            | 1 << VIRTIO_RING_F_EVENT_IDX
            | 1 << VIRTIO_RING_F_INDIRECT_DESC
            | 1 << VIRTIO_SCSI_F_CHANGE;
        if options.hotplug {
            features |= 1 << VIRTIO_SCSI_F_HOTPLUG;
        }
        let config = ScsiConfig {
            num_queues: u32::from(options.num_queues),
            seg_max: u32::from(options.queue_size) - 2,
            max_sectors: options.max_sectors,
            cmd_per_lun: options.cmd_per_lun,
            event_info_size: EVENT_SIZE as u32,
            sense_size: VIRTIO_SCSI_SENSE_DEFAULT_SIZE,
            cdb_size: VIRTIO_SCSI_CDB_DEFAULT_SIZE,
            max_channel: 0,
            max_target: scsi::MAX_TARGET,
            max_lun: u32::from(scsi::MAX_LUN),
        };
        Ok(VirtioScsi {
            queues: QueueSet::new("virtio-scsi", FIXED_QUEUES + options.num_queues),
            shared: Arc::new(Shared {
                device,
                bus,
                events,
                cdb_size: VIRTIO_SCSI_CDB_DEFAULT_SIZE as usize,
                sense_size: VIRTIO_SCSI_SENSE_DEFAULT_SIZE as usize,
            }),
            hotplug,
            change: Arc::default(),
            options,
            features,
            acked: 0,
            config,
        })
    }

    /// The SCSI bus (plug scsi-hd LUNs here; `bus().bus()` is the qdev bus).
    pub fn bus(&self) -> &Arc<ScsiBus> {
        &self.shared.bus
    }

    /// The features the driver accepted.
    pub fn acked_features(&self) -> u64 {
        self.acked
    }

    /// The notifier that tells the driver of a LUN's parameter change (a resize).
    pub fn change_notifier(&self) -> ChangeNotifier {
        ChangeNotifier {
            events: self.shared.events.clone(),
            acked: self.change.clone(),
        }
    }

    /// The config space.
    pub fn config(&self) -> &ScsiConfig {
        &self.config
    }

    fn event_idx(&self) -> bool {
        self.acked & (1 << VIRTIO_RING_F_EVENT_IDX) != 0
    }

    fn start(&mut self, index: u16, setup: QueueSetup, wait: bool) -> Result<(), QueueError> {
        let event_idx = self.event_idx();
        let shared = self.shared.clone();
        macro_rules! go {
            ($h:expr) => {
                if wait {
                    self.queues.start(index, setup, event_idx, $h)
                } else {
                    self.queues.start_async(index, setup, event_idx, $h)
                }
            };
        }
        match index {
            0 => go!(CtrlQueue { shared }),
            1 => {
                let events = shared.events.clone();
                events.set_handle(Some(setup.iothread.handle().clone()));
                let started = go!(EventQueue { shared });
                // An event that finds no buffer pops the ring (in the queue's thread).
                events.set_poller(self.queues.poller(index));
                started
            }
            _ => {
                let handler = CmdQueue::new(shared, &setup.memory);
                go!(handler)
            }
        }
    }
}

impl VirtioDevice for VirtioScsi {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_SCSI
    }

    fn num_queues(&self) -> u16 {
        FIXED_QUEUES + self.options.num_queues
    }

    fn queue_max_size(&self) -> u16 {
        self.options.queue_size
    }

    fn features(&self) -> u64 {
        self.features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked = features & self.features;
        self.hotplug.store(
            self.acked & (1 << VIRTIO_SCSI_F_HOTPLUG) != 0,
            Ordering::Release,
        );
        // Release: pairs with the Acquire load in `ChangeNotifier::param_change`.
        self.change.store(
            self.acked & (1 << VIRTIO_SCSI_F_CHANGE) != 0,
            Ordering::Release,
        );
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        virtio_core::read_config_bytes(&self.config.to_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // sense_size and cdb_size are writable in the spec; like QEMU, other values
        // than the defaults are not supported, so writes are ignored.
    }

    fn start_queue(&mut self, index: u16, setup: QueueSetup) -> Result<(), QueueError> {
        self.start(index, setup, true)
    }

    fn start_queue_async(&mut self, index: u16, setup: QueueSetup) -> Result<(), QueueError> {
        self.start(index, setup, false)
    }

    fn stop_queue(&mut self, index: u16) -> Option<Queue> {
        if index == 1 {
            self.shared.events.set_handle(None);
        }
        self.queues.stop(index)
    }

    fn reset_async(&mut self, done: Box<dyn FnOnce() + Send>) {
        self.shared.events.set_handle(None);
        self.queues.reset_async(done);
    }
}

/// The README's example, run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
