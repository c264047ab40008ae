//! The function side: what the host bridge asks of a function ([`PciFunction`]), resets
//! that finish in another context ([`PendingReset`]), and a function made of a plain
//! config space and BAR handlers ([`SimpleFunction`]).

use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use io_bus::BusDevice;

use crate::{PciConfig, PciMapping};

/// A PCI function as the host bridge sees it. All methods take `&self`: vCPU threads
/// call them concurrently; the function serializes itself.
pub trait PciFunction: qdev_bus::Device {
    /// A config read of `data.len()` (1, 2 or 4) bytes at `offset` (inside one dword,
    /// below 256).
    fn config_read(&self, offset: usize, data: &mut [u8]);

    /// A config write, same bounds as reads. The host bridge calls
    /// [`mappings`](Self::mappings) afterwards.
    fn config_write(&self, offset: usize, data: &[u8]);

    /// The regions the function decodes now (after the last config write).
    fn mappings(&self) -> Vec<PciMapping>;

    /// Returns the function to its power-on state (config space included). Runs inside
    /// an RCU read section (a bus walk) or a vCPU's dispatch: it must not wait. A
    /// function whose reset finishes elsewhere (queues draining in their iothreads)
    /// returns at once and hands out the rest through
    /// [`pending_reset`](Self::pending_reset).
    fn pci_reset(&self);

    /// The last reset, if it is still finishing in another context (for a system reset
    /// to wait on, outside any read section).
    fn pending_reset(&self) -> Option<Arc<PendingReset>> {
        None
    }
}

/// A device reset that finishes in another context: a virtio device whose queues drain
/// in their iothreads. It completes when its [`ResetCompleter`] is dropped, whether the
/// work ran or was dropped unrun (its context gone), so a wait on it never outlives the
/// work it waits for.
#[derive(Debug, Default)]
pub struct PendingReset {
    done: Mutex<bool>,
    cond: Condvar,
}

/// Completes its [`PendingReset`] when dropped.
#[derive(Debug)]
pub struct ResetCompleter(Arc<PendingReset>);

impl Drop for ResetCompleter {
    fn drop(&mut self) {
        *self.0.lock() = true;
        self.0.cond.notify_all();
    }
}

/// How long a system reset waits for a device before it says so (a `tracing` warning).
const RESET_WARNING: Duration = Duration::from_secs(5);

impl PendingReset {
    /// A reset in progress, and the completer that ends it.
    pub fn new() -> (Arc<PendingReset>, ResetCompleter) {
        let pending = Arc::new(PendingReset::default());
        let completer = ResetCompleter(pending.clone());
        (pending, completer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.done.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the reset has finished.
    pub fn is_complete(&self) -> bool {
        *self.lock()
    }

    /// Waits until the reset has finished (a system reset, on the main loop, outside
    /// any read section); logs a `tracing` warning if it takes longer than a few seconds.
    pub fn wait(&self, what: &str) {
        rcu::assert_may_block("waiting for a device reset");
        let start = Instant::now();
        let mut warned = false;
        let mut done = self.lock();
        while !*done {
            let (guard, _) = self
                .cond
                .wait_timeout(done, RESET_WARNING / 10)
                .unwrap_or_else(|e| e.into_inner());
            done = guard;
            if !*done && !warned && start.elapsed() >= RESET_WARNING {
                warned = true;
                tracing::warn!(
                    "{what}: reset still draining I/O after {} s; waiting",
                    RESET_WARNING.as_secs()
                );
            }
        }
    }
}

/// A function whose config space is a plain [`PciConfig`] and whose BAR `n` is
/// handled by `bars[n]`: the host bridge, the ISA bridge, and any simple device.
pub struct SimpleFunction {
    id: String,
    config: Mutex<PciConfig>,
    bars: Vec<Option<Arc<dyn BusDevice>>>,
}

impl SimpleFunction {
    /// A function with id `id`, `config`, and one optional handler per BAR index.
    pub fn new(
        id: impl Into<String>,
        config: PciConfig,
        bars: Vec<Option<Arc<dyn BusDevice>>>,
    ) -> SimpleFunction {
        SimpleFunction {
            id: id.into(),
            config: Mutex::new(config),
            bars,
        }
    }

    /// The config space, locked.
    pub fn config(&self) -> std::sync::MutexGuard<'_, PciConfig> {
        self.config.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl qdev_bus::Device for SimpleFunction {
    fn id(&self) -> &str {
        &self.id
    }
    fn reset(&self) {
        self.pci_reset();
    }
}

impl PciFunction for SimpleFunction {
    fn config_read(&self, offset: usize, data: &mut [u8]) {
        self.config().read(offset, data);
    }
    fn config_write(&self, offset: usize, data: &[u8]) {
        self.config().write(offset, data);
    }
    fn mappings(&self) -> Vec<PciMapping> {
        bar_mappings(&self.config(), &self.bars)
    }
    fn pci_reset(&self) {
        self.config().reset();
    }
}

/// The mappings of `config`'s decoded BARs to their handlers (`handlers[index]`).
pub fn bar_mappings(
    config: &PciConfig,
    handlers: &[Option<Arc<dyn BusDevice>>],
) -> Vec<PciMapping> {
    config
        .decoded_bars()
        .into_iter()
        .filter_map(|(index, space, base, len)| {
            let device = handlers.get(index)?.clone()?;
            Some(PciMapping {
                space,
                base,
                len,
                device,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BarKind, Space, regs};

    struct Nop;
    impl BusDevice for Nop {
        fn read(&self, _: u64, data: &mut [u8]) {
            data.fill(0);
        }
        fn write(&self, _: u64, _: &[u8]) {}
    }

    #[test]
    fn a_pending_reset_completes_when_its_completer_drops_on_another_thread() {
        let (pending, completer) = PendingReset::new();
        assert!(!pending.is_complete());
        let worker = std::thread::spawn(move || drop(completer));
        pending.wait("test device");
        assert!(pending.is_complete());
        worker.join().unwrap();
    }

    #[test]
    fn a_simple_function_maps_only_decoded_bars_with_handlers() {
        let mut config = PciConfig::new(0x8086, 0x1234, 0xff_00_00, 0);
        config.add_bar(0, 0x20, BarKind::Io, false).unwrap();
        config.add_bar(1, 0x1000, BarKind::Mem32, false).unwrap();
        let nop: Arc<dyn BusDevice> = Arc::new(Nop);
        // BAR 1 has no handler: decoded, but nothing to map.
        let f = SimpleFunction::new("f", config, vec![Some(nop), None]);
        f.config_write(regs::BAR0, &0xc020u32.to_le_bytes());
        f.config_write(regs::BAR0 + 4, &0xfebf_0000u32.to_le_bytes());
        assert!(f.mappings().is_empty(), "decoding off");
        f.config_write(regs::COMMAND, &[0x03, 0]);
        let m = f.mappings();
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].space, m[0].base, m[0].len), (Space::Io, 0xc020, 0x20));
        qdev_bus::Device::reset(&f);
        assert!(f.mappings().is_empty(), "reset: BARs and command cleared");
        let mut id = [0u8; 2];
        f.config_read(regs::DEVICE_ID, &mut id);
        assert_eq!(u16::from_le_bytes(id), 0x1234);
        assert_eq!(qdev_bus::Device::id(&f), "f");
    }
}
