//! The virtio-pci transport (modern, virtio 1.x): a PCI function whose capabilities
//! point into one 64-bit memory BAR (common config, ISR, device config, notify), with
//! MSI-X (its table and PBA in BAR 1) and an INTx fallback.
//!
//! Layout (QEMU's, so guests and firmware see what they expect):
//!
//! | BAR 4 offset | region |
//! |---|---|
//! | 0x0000 | common config (`struct virtio_pci_common_cfg`) |
//! | 0x1000 | ISR status (read clears, lowers INTx) |
//! | 0x2000 | device config |
//! | 0x3000 | notify: queue `n` at `0x3000 + 4 n` |
//!
//! A notify write sets the queue's kick eventfd, which the device's iothread watches
//! (the machine may also register that eventfd as a KVM ioeventfd on the notify
//! address, so notifications skip the exit to user space). Used-buffer interrupts go
//! to the guest as MSI messages ([`MsiSender`]), or set the ISR and raise INTx when
//! MSI-X is off. Every guest-written value is checked: queue sizes, indexes, feature
//! words, access widths; a driver that breaks the rules gets `DEVICE_NEEDS_RESET`,
//! never a panic.
#![deny(missing_docs)]

mod config_notify;

pub use config_notify::ConfigNotifier;

use std::sync::{Arc, Mutex, MutexGuard};

use aio_context::{EventNotifier, IoThread};
use io_bus::BusDevice;
use pci::msix::{self, MsixTable};
use pci::{BarKind, PciConfig, PciFunction, PciMapping, PendingReset, bar_mappings};
use ram_block::RamList;
use virtio_queue::{Queue, QueueT};

use virtio_bindings::virtio_config as cfg;
use virtio_core::{QueueSetup, VirtioDevice, VirtioInterrupt};

/// Device status bits (`virtio_config.h`; the status register is a byte).
const ACKNOWLEDGE: u8 = cfg::VIRTIO_CONFIG_S_ACKNOWLEDGE as u8;
const DRIVER_OK: u8 = cfg::VIRTIO_CONFIG_S_DRIVER_OK as u8;
const FEATURES_OK: u8 = cfg::VIRTIO_CONFIG_S_FEATURES_OK as u8;
const NEEDS_RESET: u8 = cfg::VIRTIO_CONFIG_S_NEEDS_RESET as u8;
const FAILED: u8 = cfg::VIRTIO_CONFIG_S_FAILED as u8;
/// "No MSI-X vector".
const NO_VECTOR: u16 = 0xffff;

/// BAR 4 regions.
const COMMON: u64 = 0x0000;
const ISR: u64 = 0x1000;
const DEVICE: u64 = 0x2000;
const NOTIFY: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const BAR_SIZE: u64 = 0x4000;
/// The virtio BAR and the MSI-X BAR.
const VIRTIO_BAR: usize = 4;
const MSIX_BAR: usize = 1;
const MSIX_PBA: u64 = 0x800;

/// Config-space offsets of the capabilities.
const CAP_MSIX: usize = 0x40;
const CAP_COMMON: usize = 0x4c;
const CAP_NOTIFY: usize = 0x5c;
const CAP_ISR: usize = 0x70;
const CAP_DEVICE: usize = 0x80;
/// `VIRTIO_PCI_CAP_PCI_CFG`: a window into the BARs through config space (what SeaBIOS
/// uses when the 64-bit BAR is placed above 4 GiB, out of its reach).
const CAP_PCI_CFG: usize = 0x90;
/// Its `pci_cfg_data` dword.
const PCI_CFG_DATA: usize = CAP_PCI_CFG + 16;

/// Sends an MSI message (an irqfd routed to it, or KVM's `KVM_SIGNAL_MSI`).
pub trait MsiSender: Send + Sync {
    /// Delivers `data` to `address`: the current message of MSI-X table entry `vector`
    /// (unmasked; the caller handles masking and the pending bits). `vector` lets an
    /// implementation keep one irqfd per entry.
    fn send(&self, vector: u16, address: u64, data: u32);
}

/// Drives the function's INTx pin. Called with the function's ISR locked, so calls
/// arrive in the order the ISR changed; it must not call back into the function.
pub type IntxLine = Arc<dyn Fn(bool) + Send + Sync>;

/// The MSI-X state: the table and PBA (the `pci` crate's model) and virtio's vector
/// assignments, under one lock.
struct Msix {
    table: MsixTable,
    config_vector: u16,
    queue_vectors: Vec<u16>,
    /// Bumped by every device reset: interrupts of queues started before it (still
    /// draining in their iothread) are dropped ([`QueueInterrupt`]).
    epoch: u64,
}

/// The interrupt side, shared with the device's iothreads.
struct Interrupts {
    /// Set by [`VirtioInterrupt::device_error`]: `DEVICE_NEEDS_RESET` until reset.
    needs_reset: std::sync::atomic::AtomicBool,
    msix: Mutex<Msix>,
    isr: Mutex<u8>,
    msi: Arc<dyn MsiSender>,
    intx: IntxLine,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Interrupts {
    /// Signals `vector` (MSI-X on) or sets ISR bit `isr_bit` and raises INTx, unless a
    /// reset came after `epoch`. The message goes out, or the ISR changes, under the
    /// MSI-X lock that the reset takes: nothing of an older epoch follows a reset.
    fn signal(&self, epoch: u64, vector: impl FnOnce(&Msix) -> u16, isr_bit: u8) {
        let mut msix = lock(&self.msix);
        if msix.epoch != epoch {
            return; // a queue of the device's previous life, draining
        }
        if msix.table.enabled() {
            let v = vector(&msix);
            // NO_VECTOR or out of range: no interrupt; masked: pending.
            if let Some(entry) = msix.table.signal(v) {
                self.msi.send(v, entry.address, entry.data);
            }
            return;
        }
        self.update_isr(|isr| *isr |= isr_bit);
    }

    /// Changes the ISR with `change` and drives INTx to match it before the ISR lock is
    /// released: the level is decided and set in one critical section, so a lower
    /// decided before a raise can never reach the irqchip after it (issue 14: the
    /// interrupt was lost, the line low with the ISR set). Returns the ISR as it was.
    /// Lock order: MSI-X, then ISR.
    fn update_isr(&self, change: impl FnOnce(&mut u8)) -> u8 {
        let mut isr = lock(&self.isr);
        let old = *isr;
        change(&mut isr);
        (self.intx)(*isr != 0);
        old
    }

    /// The driver's ISR read: returns the ISR, clears it and lowers INTx.
    fn read_isr(&self) -> u8 {
        self.update_isr(|isr| *isr = 0)
    }

    /// Delivers pending vectors that are now unmasked.
    fn flush_pending(&self) {
        let send = lock(&self.msix).table.take_deliverable();
        for (v, e) in send {
            self.msi.send(v, e.address, e.data);
        }
    }

    /// A device reset: interrupts of the old queues are dropped from now on, vectors
    /// unassigned, pending bits and the ISR cleared, INTx lowered, NEEDS_RESET gone.
    fn reset(&self) {
        let mut msix = lock(&self.msix);
        msix.epoch += 1;
        msix.config_vector = NO_VECTOR;
        msix.queue_vectors.fill(NO_VECTOR);
        msix.table.clear_pending();
        self.needs_reset
            .store(false, std::sync::atomic::Ordering::SeqCst);
        self.read_isr();
        drop(msix);
    }
}

/// The interrupt a started queue gets: the transport's, tied to the device's life it
/// was started in (its reset epoch).
struct QueueInterrupt {
    irq: Arc<Interrupts>,
    epoch: u64,
}

impl VirtioInterrupt for QueueInterrupt {
    fn notify_queue(&self, index: u16) {
        self.irq.signal(
            self.epoch,
            |m| {
                m.queue_vectors
                    .get(usize::from(index))
                    .copied()
                    .unwrap_or(NO_VECTOR)
            },
            1,
        );
    }

    fn notify_config(&self) {
        self.irq.signal(self.epoch, |m| m.config_vector, 2);
    }

    fn device_error(&self) {
        {
            // Under the lock the reset clears the flag in, so a late error of the old
            // life cannot mark the new one.
            let msix = lock(&self.irq.msix);
            if msix.epoch != self.epoch {
                return;
            }
            self.irq
                .needs_reset
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        self.notify_config();
    }
}

#[derive(Clone, Copy)]
struct QueueRegs {
    size: u16,
    enabled: bool,
    desc: u64,
    driver: u64,
    device: u64,
}

struct Transport {
    device: Box<dyn VirtioDevice>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    status: u8,
    config_generation: u8,
    queue_select: u16,
    queues: Vec<QueueRegs>,
    kicks: Vec<EventNotifier>,
    memory: RamList,
    iothread: Arc<IoThread>,
    started: bool,
    /// The last reset of a started device, while its queues may still be draining.
    reset: Option<Arc<PendingReset>>,
    /// The status before that reset: what the status register reads until the reset
    /// has finished (a driver waits for 0 before it sets the device up again).
    status_before_reset: u8,
}

struct Shared {
    id: String,
    config: Mutex<PciConfig>,
    transport: Mutex<Transport>,
    irq: Arc<Interrupts>,
}

/// A virtio device on PCI.
pub struct VirtioPci {
    shared: Arc<Shared>,
    bars: Vec<Option<Arc<dyn BusDevice>>>,
    ioevents: Mutex<IoEvents>,
    child_bus: Option<Arc<dyn ChildBus>>,
}

/// A bus the wrapped device model owns (a virtio-scsi controller's SCSI bus). Given to
/// [`VirtioPci::with_child_bus`], it becomes the function's child bus in the qdev tree:
/// it joins the PCI bus's tree when the function is plugged, so its devices share the
/// tree's ids and DEVICE_DELETED events.
pub trait ChildBus: Send + Sync {
    /// The qdev bus.
    fn bus(&self) -> &dyn qdev_bus::AnyBus;
}

/// Registers an eventfd to be set by the hypervisor on a guest write to an MMIO address
/// (KVM's ioeventfd), so a queue notification wakes the iothread without an exit to
/// user space.
pub trait IoEventRegistrar: Send + Sync {
    /// Sets `fd` on any write to `addr`.
    ///
    /// # Errors
    ///
    /// The hypervisor's error (the notification then takes the MMIO exit path).
    fn register(&self, fd: &EventNotifier, addr: u64) -> std::io::Result<()>;
    /// Undoes [`register`](Self::register).
    fn unregister(&self, fd: &EventNotifier, addr: u64);
}

/// Where the notify region's ioeventfds are registered now.
struct IoEvents {
    registrar: Option<Arc<dyn IoEventRegistrar>>,
    /// The notify base they are registered at, if any.
    base: Option<u64>,
    /// Registration failed once: stay on the MMIO exit path.
    unsupported: bool,
}

/// Why a virtio-pci function could not be built.
#[derive(Debug, thiserror::Error)]
#[error("virtio-pci {id}: {reason}")]
pub struct BuildError {
    id: String,
    reason: String,
}

impl VirtioPci {
    /// Wraps `device` (served on `iothread`, DMA into `memory`) as PCI function `id`.
    ///
    /// # Errors
    ///
    /// If the kick eventfds cannot be created.
    pub fn new(
        id: impl Into<String>,
        device: Box<dyn VirtioDevice>,
        memory: RamList,
        iothread: Arc<IoThread>,
        msi: Arc<dyn MsiSender>,
        intx: IntxLine,
    ) -> Result<VirtioPci, BuildError> {
        let id = id.into();
        let err = |reason: String| BuildError {
            id: id.clone(),
            reason,
        };
        let nq = device.num_queues();
        let vectors = usize::from(nq) + 1;
        let config =
            pci_config(device.device_type(), vectors as u16).map_err(|e| err(e.to_string()))?;
        let kicks = (0..nq)
            .map(|_| EventNotifier::new(false))
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| err(e.to_string()))?;
        let irq = Arc::new(Interrupts {
            msix: Mutex::new(Msix {
                table: MsixTable::new(vectors, MSIX_PBA),
                config_vector: NO_VECTOR,
                queue_vectors: vec![NO_VECTOR; usize::from(nq)],
                epoch: 0,
            }),
            isr: Mutex::new(0),
            needs_reset: std::sync::atomic::AtomicBool::new(false),
            msi,
            intx,
        });
        let shared = Arc::new(Shared {
            id,
            config: Mutex::new(config),
            transport: Mutex::new(Transport {
                device,
                device_feature_select: 0,
                driver_feature_select: 0,
                driver_features: 0,
                status: 0,
                config_generation: 0,
                queue_select: 0,
                queues: vec![
                    QueueRegs {
                        size: 0,
                        enabled: false,
                        desc: 0,
                        driver: 0,
                        device: 0
                    };
                    usize::from(nq)
                ],
                kicks,
                memory,
                iothread,
                started: false,
                reset: None,
                status_before_reset: 0,
            }),
            irq,
        });
        let mut bars: Vec<Option<Arc<dyn BusDevice>>> = vec![None; 6];
        bars[VIRTIO_BAR] = Some(Arc::new(VirtioBar(shared.clone())));
        bars[MSIX_BAR] = Some(Arc::new(MsixBar(shared.clone())));
        let mut t = lock(&shared.transport);
        for (i, q) in t.queues.iter_mut().enumerate() {
            q.size = 0;
            let _ = i;
        }
        let max = t.device.queue_max_size();
        for q in &mut t.queues {
            q.size = max;
        }
        drop(t);
        Ok(VirtioPci {
            shared,
            bars,
            ioevents: Mutex::new(IoEvents {
                registrar: None,
                base: None,
                unsupported: false,
            }),
            child_bus: None,
        })
    }

    /// Makes `bus` (owned by the wrapped device) this function's child bus in the qdev
    /// tree; see [`ChildBus`].
    #[must_use]
    pub fn with_child_bus(mut self, bus: Arc<dyn ChildBus>) -> VirtioPci {
        self.child_bus = Some(bus);
        self
    }

    /// Registers the queues' kick eventfds as ioeventfds on the notify region wherever
    /// the guest places the BAR (from now on, and moved when the BAR moves).
    pub fn set_ioevent_registrar(&self, registrar: Arc<dyn IoEventRegistrar>) {
        lock(&self.ioevents).registrar = Some(registrar);
        self.sync_ioevents(None);
    }

    /// Moves the ioeventfd registrations to `notify_base` (`None`: BAR not decoded).
    fn sync_ioevents(&self, notify_base: Option<u64>) {
        let mut io = lock(&self.ioevents);
        let Some(reg) = io.registrar.clone() else {
            return;
        };
        if io.base == notify_base || io.unsupported {
            return;
        }
        let t = lock(&self.shared.transport);
        if let Some(old) = io.base.take() {
            for (i, k) in t.kicks.iter().enumerate() {
                reg.unregister(k, old + i as u64 * u64::from(NOTIFY_MULTIPLIER));
            }
        }
        if let Some(base) = notify_base {
            for (i, k) in t.kicks.iter().enumerate() {
                let addr = base + i as u64 * u64::from(NOTIFY_MULTIPLIER);
                if let Err(e) = reg.register(k, addr) {
                    tracing::warn!(
                        "virtio-pci {}: no ioeventfd ({e}); notifications exit to user space",
                        self.shared.id
                    );
                    for (j, k) in t.kicks.iter().enumerate().take(i) {
                        reg.unregister(k, base + j as u64 * u64::from(NOTIFY_MULTIPLIER));
                    }
                    io.unsupported = true;
                    return;
                }
            }
            io.base = Some(base);
        }
    }

    /// The kick notifier of queue `index` (to register as a KVM ioeventfd on
    /// [`notify_address`](Self::notify_address)).
    pub fn kick(&self, index: u16) -> Option<EventNotifier> {
        lock(&self.shared.transport)
            .kicks
            .get(usize::from(index))
            .and_then(|k| k.try_clone().ok())
    }

    /// The guest address a notification of queue `index` is written to, once the BAR is
    /// placed.
    pub fn notify_address(&self, index: u16) -> Option<u64> {
        let (base, _, _) = lock(&self.shared.config).bar(VIRTIO_BAR)?;
        (base != 0).then(|| base + NOTIFY + u64::from(index) * u64::from(NOTIFY_MULTIPLIER))
    }
}

/// The config space: ids, BARs, MSI-X and the four virtio capabilities.
fn pci_config(device_type: u32, vectors: u16) -> ::pci::Result<PciConfig> {
    // Mass storage (0x01) for block, "other" elsewhere; modern device ids 0x1040 + type.
    let class = if device_type == 2 {
        0x01_00_00
    } else {
        0xff_00_00
    };
    let mut c = PciConfig::new(0x1af4, 0x1040 + device_type as u16, class, 1);
    c.set_interrupt_pin(1);
    c.add_bar(MSIX_BAR, 0x1000, BarKind::Mem32, false)?;
    c.add_bar(VIRTIO_BAR, BAR_SIZE, BarKind::Mem64, true)?;
    // MSI-X: table size - 1, table and PBA in BAR 1. Enable and function mask (bits
    // 15, 14 of message control) are writable.
    msix::add_capability(
        &mut c,
        CAP_MSIX,
        vectors,
        MSIX_BAR as u8,
        0,
        MSIX_PBA as u32,
    )?;
    // The virtio capabilities follow in the list, in this order.
    let vendor_cap = |c: &mut PciConfig, at: usize, len: u8, kind: u8, offset: u64, length: u32| {
        c.add_capability(at, 0x09, usize::from(len))?;
        c.set_u8(at + 2, len);
        c.set_u8(at + 3, kind);
        c.set_u8(at + 4, VIRTIO_BAR as u8);
        c.set_u32(at + 8, offset as u32);
        c.set_u32(at + 12, length);
        Ok::<(), ::pci::Error>(())
    };
    vendor_cap(&mut c, CAP_COMMON, 16, 1, COMMON, 0x1000)?;
    vendor_cap(&mut c, CAP_NOTIFY, 20, 2, NOTIFY, 0x1000)?;
    c.set_u32(CAP_NOTIFY + 16, NOTIFY_MULTIPLIER);
    vendor_cap(&mut c, CAP_ISR, 16, 3, ISR, 0x1000)?;
    vendor_cap(&mut c, CAP_DEVICE, 16, 4, DEVICE, 0x1000)?;
    vendor_cap(&mut c, CAP_PCI_CFG, 20, 5, 0, 0)?;
    // The driver picks the BAR, offset and length, then accesses pci_cfg_data.
    c.set_writable(CAP_PCI_CFG + 4, 1, 0xff);
    c.set_writable(CAP_PCI_CFG + 8, 4, 0xffff_ffff);
    c.set_writable(CAP_PCI_CFG + 12, 4, 0xffff_ffff);
    Ok(c)
}

impl Transport {
    fn selected(&mut self) -> Option<&mut QueueRegs> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    /// A device reset (status 0, or the function's reset). It does not wait: the
    /// device stops its queues in their own contexts ([`VirtioDevice::reset_async`]),
    /// and the status register reads non-zero until they have drained, as virtio
    /// allows ("the driver MUST wait for a read of device_status to return 0").
    fn reset(&mut self, irq: &Interrupts) {
        if self.started {
            let (pending, completer) = PendingReset::new();
            self.device.reset_async(Box::new(move || drop(completer)));
            self.reset = Some(pending);
            self.status_before_reset = self.status;
            self.started = false;
        }
        self.device.ack_features(0);
        let max = self.device.queue_max_size();
        for q in &mut self.queues {
            *q = QueueRegs {
                size: max,
                enabled: false,
                desc: 0,
                driver: 0,
                device: 0,
            };
        }
        self.status = 0;
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        irq.reset();
    }

    /// The reset still finishing, if any.
    fn reset_in_progress(&self) -> Option<&Arc<PendingReset>> {
        self.reset.as_ref().filter(|r| !r.is_complete())
    }

    /// The status register as the driver reads it.
    fn status_register(&self, irq: &Interrupts) -> u8 {
        let status = if self.status == 0 && self.reset_in_progress().is_some() {
            self.status_before_reset
        } else {
            self.status
        };
        let needs_reset = irq.needs_reset.load(std::sync::atomic::Ordering::SeqCst);
        status | if needs_reset { NEEDS_RESET } else { 0 }
    }

    fn set_status(&mut self, value: u8, irq: &Arc<Interrupts>) {
        if value == 0 {
            return self.reset(irq);
        }
        let mut value = value;
        if value & FEATURES_OK != 0 && self.status & FEATURES_OK == 0 {
            let offered = self.device.features();
            // VERSION_1 is mandatory for a modern device; unknown bits refuse.
            if self.driver_features & !offered != 0
                || self.driver_features & (1 << cfg::VIRTIO_F_VERSION_1) == 0
            {
                value &= !FEATURES_OK;
            } else {
                self.device.ack_features(self.driver_features);
            }
        }
        if value & DRIVER_OK != 0 && !self.started && value & FEATURES_OK != 0 {
            if let Err(e) = self.activate(irq) {
                tracing::error!("virtio-pci: {e}");
                // Queues started before the failure must not keep running (stopped in
                // their contexts: this runs in a vCPU's dispatch).
                self.device.reset_async(Box::new(|| {}));
                value |= NEEDS_RESET;
            }
        }
        let _ = (ACKNOWLEDGE, FAILED);
        self.status = value;
    }

    fn activate(&mut self, irq: &Arc<Interrupts>) -> Result<(), String> {
        for (i, regs) in self.queues.clone().iter().enumerate() {
            if !regs.enabled {
                continue;
            }
            let mut queue =
                Queue::new(self.device.queue_max_size()).map_err(|e| format!("{e:?}"))?;
            queue.set_size(regs.size);
            queue.set_desc_table_address(Some(regs.desc as u32), Some((regs.desc >> 32) as u32));
            queue
                .set_avail_ring_address(Some(regs.driver as u32), Some((regs.driver >> 32) as u32));
            queue.set_used_ring_address(Some(regs.device as u32), Some((regs.device >> 32) as u32));
            queue.set_ready(true);
            let kick = self.kicks[i].try_clone().map_err(|e| e.to_string())?;
            let epoch = lock(&irq.msix).epoch;
            let setup = QueueSetup {
                queue,
                kick,
                memory: self.memory.clone(),
                interrupt: Arc::new(QueueInterrupt {
                    irq: irq.clone(),
                    epoch,
                }),
                iothread: self.iothread.clone(),
            };
            // Without waiting for the iothread: it runs after any drain still going on.
            self.device
                .start_queue_async(i as u16, setup)
                .map_err(|e| e.to_string())?;
        }
        self.started = true;
        Ok(())
    }

    /// The common config structure as the driver reads it.
    fn common_image(&self, irq: &Interrupts) -> [u8; 0x38] {
        let mut b = [0u8; 0x38];
        let q = self.queues.get(usize::from(self.queue_select)).copied();
        let msix = lock(&irq.msix);
        let features = self.device.features();
        let word = |sel: u32, v: u64| match sel {
            0 => v as u32,
            1 => (v >> 32) as u32,
            _ => 0,
        };
        let mut put = |at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
        put(0x00, &self.device_feature_select.to_le_bytes());
        put(
            0x04,
            &word(self.device_feature_select, features).to_le_bytes(),
        );
        put(0x08, &self.driver_feature_select.to_le_bytes());
        put(
            0x0c,
            &word(self.driver_feature_select, self.driver_features).to_le_bytes(),
        );
        put(0x10, &msix.config_vector.to_le_bytes());
        put(0x12, &self.device.num_queues().to_le_bytes());
        put(0x14, &[self.status_register(irq), self.config_generation]);
        put(0x16, &self.queue_select.to_le_bytes());
        if let Some(q) = q {
            let vector = msix
                .queue_vectors
                .get(usize::from(self.queue_select))
                .copied()
                .unwrap_or(NO_VECTOR);
            put(0x18, &q.size.to_le_bytes());
            put(0x1a, &vector.to_le_bytes());
            put(0x1c, &u16::from(q.enabled).to_le_bytes());
            put(0x1e, &self.queue_select.to_le_bytes());
            put(0x20, &q.desc.to_le_bytes());
            put(0x28, &q.driver.to_le_bytes());
            put(0x30, &q.device.to_le_bytes());
        } else {
            put(0x1a, &NO_VECTOR.to_le_bytes());
        }
        b
    }

    fn common_write(&mut self, offset: u64, value: u32, irq: &Arc<Interrupts>) {
        let running = self.status & DRIVER_OK != 0;
        let set_lo = |v: &mut u64| *v = (*v & !0xffff_ffff) | u64::from(value);
        let set_hi = |v: &mut u64| *v = (*v & 0xffff_ffff) | (u64::from(value) << 32);
        match offset {
            0x00 => self.device_feature_select = value,
            0x08 => self.driver_feature_select = value,
            0x0c if self.status & FEATURES_OK == 0 => match self.driver_feature_select {
                0 => set_lo(&mut self.driver_features),
                1 => set_hi(&mut self.driver_features),
                _ => {}
            },
            0x10 => {
                let nv = lock(&irq.msix).table.len();
                lock(&irq.msix).config_vector = vector_or_none(value as u16, nv);
            }
            0x14 => self.set_status(value as u8, irq),
            0x16 => self.queue_select = value as u16,
            0x18 if !running => {
                let max = self.device.queue_max_size();
                let size = value as u16;
                if let Some(q) = self.selected() {
                    // A power of two no larger than the maximum, else ignored.
                    if size.is_power_of_two() && size <= max {
                        q.size = size;
                    }
                }
            }
            0x1a => {
                let qs = usize::from(self.queue_select);
                let mut msix = lock(&irq.msix);
                let nv = msix.table.len();
                if let Some(v) = msix.queue_vectors.get_mut(qs) {
                    *v = vector_or_none(value as u16, nv);
                }
            }
            0x1c if !running => {
                if let Some(q) = self.selected() {
                    q.enabled = value & 1 != 0;
                }
            }
            0x20 if !running => self.selected().map_or((), |q| set_lo(&mut q.desc)),
            0x24 if !running => self.selected().map_or((), |q| set_hi(&mut q.desc)),
            0x28 if !running => self.selected().map_or((), |q| set_lo(&mut q.driver)),
            0x2c if !running => self.selected().map_or((), |q| set_hi(&mut q.driver)),
            0x30 if !running => self.selected().map_or((), |q| set_lo(&mut q.device)),
            0x34 if !running => self.selected().map_or((), |q| set_hi(&mut q.device)),
            _ => {}
        }
    }
}

/// A vector the table has, or NO_VECTOR (the driver reads it back to see it failed).
fn vector_or_none(v: u16, table_len: usize) -> u16 {
    if usize::from(v) < table_len {
        v
    } else {
        NO_VECTOR
    }
}

/// BAR 4: the virtio registers.
struct VirtioBar(Arc<Shared>);

impl BusDevice for VirtioBar {
    fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let irq = &self.0.irq;
        match offset {
            COMMON..ISR => {
                let image = lock(&self.0.transport).common_image(irq);
                let start = offset as usize;
                for (i, d) in data.iter_mut().enumerate() {
                    *d = image.get(start + i).copied().unwrap_or(0);
                }
            }
            ISR => data[0] = irq.read_isr(),
            DEVICE..NOTIFY => {
                lock(&self.0.transport)
                    .device
                    .read_config(offset - DEVICE, data);
            }
            _ => {}
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut buf = [0u8; 4];
        let n = data.len().min(4);
        buf[..n].copy_from_slice(&data[..n]);
        let value = u32::from_le_bytes(buf);
        match offset {
            COMMON..ISR => {
                let mut t = lock(&self.0.transport);
                // Byte and word writes to the registers inside shared dwords.
                match (offset, data.len()) {
                    (0x14, 1) | (0x16, 2) | (0x18, 2) | (0x1a, 2) | (0x1c, 2) | (0x10, 2) => {
                        t.common_write(offset, value, &self.0.irq)
                    }
                    (o, 4) if o % 4 == 0 => t.common_write(o, value, &self.0.irq),
                    (o, 8) if o % 8 == 0 => {
                        let hi = u32::from_le_bytes(data[4..8].try_into().unwrap_or([0; 4]));
                        t.common_write(o, value, &self.0.irq);
                        t.common_write(o + 4, hi, &self.0.irq);
                    }
                    _ => {} // other widths are not part of the interface
                }
            }
            DEVICE..NOTIFY => {
                let mut t = lock(&self.0.transport);
                t.device.write_config(offset - DEVICE, data);
                t.config_generation = t.config_generation.wrapping_add(1);
            }
            NOTIFY..BAR_SIZE => {
                let index = (offset - NOTIFY) / u64::from(NOTIFY_MULTIPLIER);
                let t = lock(&self.0.transport);
                if let Some(k) = t.kicks.get(index as usize) {
                    let _ = k.set();
                }
            }
            _ => {}
        }
    }
}

/// BAR 1: the MSI-X table and PBA.
struct MsixBar(Arc<Shared>);

impl BusDevice for MsixBar {
    fn read(&self, offset: u64, data: &mut [u8]) {
        lock(&self.0.irq.msix).table.read(offset, data);
    }

    fn write(&self, offset: u64, data: &[u8]) {
        // An entry written may have been unmasked: deliver what it held back.
        let changed = lock(&self.0.irq.msix).table.write(offset, data);
        if changed {
            self.0.irq.flush_pending();
        }
    }
}

impl qdev_bus::Device for VirtioPci {
    fn id(&self) -> &str {
        &self.shared.id
    }

    fn reset(&self) {
        self.pci_reset();
    }

    fn for_each_child_bus<'a>(&'a self, visit: &mut dyn FnMut(&'a dyn qdev_bus::AnyBus)) {
        if let Some(bus) = &self.child_bus {
            visit(bus.bus());
        }
    }
}

impl VirtioPci {
    /// The BAR access `pci_cfg_data` stands for: the BAR handler and offset, if the
    /// window names the virtio BAR with a length of 1, 2 or 4 inside it.
    fn cfg_window(&self) -> Option<(Arc<dyn BusDevice>, u64, usize)> {
        let c = lock(&self.shared.config);
        let bar = c.value(CAP_PCI_CFG + 4, 1) as usize;
        let offset = c.value(CAP_PCI_CFG + 8, 4);
        let len = c.value(CAP_PCI_CFG + 12, 4) as usize;
        drop(c);
        let handler = self.bars.get(bar)?.clone()?;
        let fits = bar == VIRTIO_BAR && matches!(len, 1 | 2 | 4) && offset + len as u64 <= BAR_SIZE;
        fits.then_some((handler, offset, len))
    }
}

impl PciFunction for VirtioPci {
    fn config_read(&self, offset: usize, data: &mut [u8]) {
        if offset == PCI_CFG_DATA {
            data.fill(0);
            if let Some((bar, at, len)) = self.cfg_window() {
                let n = len.min(data.len());
                bar.read(at, &mut data[..n]);
            }
            return;
        }
        lock(&self.shared.config).read(offset, data);
    }

    fn config_write(&self, offset: usize, data: &[u8]) {
        if offset == PCI_CFG_DATA {
            if let Some((bar, at, len)) = self.cfg_window() {
                let n = len.min(data.len());
                bar.write(at, &data[..n]);
            }
            return;
        }
        let control = {
            let mut c = lock(&self.shared.config);
            c.write(offset, data);
            msix::control(&c, CAP_MSIX)
        };
        lock(&self.shared.irq.msix).table.set_control(control);
        self.shared.irq.flush_pending();
    }

    fn mappings(&self) -> Vec<PciMapping> {
        let (maps, notify) = {
            let c = lock(&self.shared.config);
            let notify = c
                .decoded_bars()
                .into_iter()
                .find(|&(i, _, _, _)| i == VIRTIO_BAR)
                .map(|(_, _, base, _)| base + NOTIFY);
            (bar_mappings(&c, &self.bars), notify)
        };
        self.sync_ioevents(notify);
        maps
    }

    fn pending_reset(&self) -> Option<Arc<PendingReset>> {
        lock(&self.shared.transport).reset_in_progress().cloned()
    }

    fn pci_reset(&self) {
        lock(&self.shared.config).reset();
        let mut t = lock(&self.shared.transport);
        t.reset(&self.shared.irq);
        lock(&self.shared.irq.msix).table.reset();
    }
}

/// The README's example, run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
