//! The PCI host: configuration mechanism #1 at 0xCF8/0xCFC, the reset control register
//! at 0xCF9, and the BAR mappings it keeps in step with config writes.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use qdev_bus::{Bus, HotplugHandler, PciAddress};

use io_bus::{BusDevice, IoBus, le_value};

use crate::{PciFunction, PciMapping, PendingReset, Space};

/// The config address port; data is at +4, the reset control register at +1.
pub const PCI_CONFIG_PORT: u16 = 0xcf8;

/// A decoded region: space, base, length.
type Decoded = (Space, u64, u64);

/// Owner ids on the I/O buses for PCI functions start here (`+ devfn`).
const OWNER_BASE: u64 = 0x1_0000;

/// What the host bridge asks of the machine (handled on the main thread, never inside
/// the vCPU exit that caused it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HostEvent {
    /// The guest set RST_CPU in the reset control register (0xCF9): a system reset.
    Reset,
}

/// Where the host bridge sends [`HostEvent`]s.
pub type HostEvents = Arc<dyn Fn(HostEvent) + Send + Sync>;

/// The host side of bus 0.
pub struct PciHost {
    bus: Bus<PciAddress, dyn PciFunction>,
    address: AtomicU32,
    pio: Arc<IoBus>,
    mmio: Arc<IoBus>,
    /// What each function decodes now, to skip remapping when nothing changed.
    /// Also serializes remapping.
    mapped: Mutex<HashMap<PciAddress, Vec<Decoded>>>,
    events: HostEvents,
}

/// Why a function could not be plugged or unplugged.
pub type PlugError = qdev_bus::Error;

fn owner(address: PciAddress) -> u64 {
    OWNER_BASE + u64::from(address.slot()) * 8 + u64::from(address.function())
}

impl PciHost {
    /// A host for bus 0 (`pci.0`) that maps BARs into `pio` and `mmio`, and reports
    /// resets written to 0xCF9 to `events`. `on_deleted` receives `DEVICE_DELETED`
    /// events for unplugged functions (the monitor's).
    pub fn new(
        pio: Arc<IoBus>,
        mmio: Arc<IoBus>,
        events: HostEvents,
        on_deleted: impl Fn(qdev_bus::DeviceDeleted) + Send + Sync + 'static,
    ) -> PciHost {
        PciHost {
            bus: Bus::root_with_events("pci.0", on_deleted),
            address: AtomicU32::new(0),
            pio,
            mmio,
            mapped: Mutex::new(HashMap::new()),
            events,
        }
    }

    /// The bus, for walks and lookups by id.
    pub fn bus(&self) -> &Bus<PciAddress, dyn PciFunction> {
        &self.bus
    }

    /// Plugs `function` at `address` (hotplug is this plus a guest notification,
    /// which the i440FX machine does not have; cold plug before the guest runs).
    ///
    /// # Errors
    ///
    /// qdev-bus's plug errors (address in use, bad or duplicate id, realize failure).
    pub fn plug(
        &self,
        address: PciAddress,
        function: Box<dyn PciFunction>,
    ) -> Result<(), PlugError> {
        self.bus.plug(address, function)?;
        self.remap(address);
        Ok(())
    }

    /// Unplugs the function `id`: its regions are unmapped at once; it is dropped after
    /// a grace period (and `DEVICE_DELETED` follows).
    ///
    /// # Errors
    ///
    /// No such device.
    pub fn unplug(&self, id: &str) -> Result<(), PlugError> {
        let address = {
            let guard = rcu::read();
            self.bus.find(&guard, id).map(|c| c.address())
        };
        let Some(address) = address else {
            return self.bus.unplug(id); // reports NoSuchDevice
        };
        {
            let mut mapped = self.mapped.lock().unwrap_or_else(|e| e.into_inner());
            mapped.remove(&address);
            self.pio.remove_owner(owner(address));
            self.mmio.remove_owner(owner(address));
        }
        self.bus.unplug(id)
    }

    /// Resets every function, waits for the resets that finish elsewhere (virtio
    /// queues draining in their iothreads: no DMA of the old life may land after the
    /// firmware restarts) and re-derives the mappings (system reset). The resets are
    /// requested under a read guard, the waiting is done after it.
    pub fn reset(&self) {
        self.address.store(0, Ordering::Relaxed);
        let (addresses, pending) = {
            let guard = rcu::read();
            self.bus.reset(&guard);
            let addresses = self.bus.addresses(&guard).to_vec();
            let pending: Vec<(PciAddress, Arc<PendingReset>)> = addresses
                .iter()
                .filter_map(|&a| Some((a, self.bus.get(&guard, a)?.pending_reset()?)))
                .collect();
            (addresses, pending)
        };
        for (address, reset) in pending {
            reset.wait(&format!("PCI {address}"));
        }
        for address in addresses {
            self.remap(address);
        }
    }

    /// Brings the I/O buses in line with what the function at `address` decodes.
    fn remap(&self, address: PciAddress) {
        let mut mapped = self.mapped.lock().unwrap_or_else(|e| e.into_inner());
        let mappings: Vec<PciMapping> = {
            let guard = rcu::read();
            match self.bus.get(&guard, address) {
                Some(function) => function.mappings(),
                None => Vec::new(),
            }
        };
        let key: Vec<Decoded> = mappings.iter().map(|m| (m.space, m.base, m.len)).collect();
        if mapped.get(&address) == Some(&key) {
            return;
        }
        let owner = owner(address);
        self.pio.remove_owner(owner);
        self.mmio.remove_owner(owner);
        for m in mappings {
            let bus = match m.space {
                Space::Io => &self.pio,
                Space::Mem => &self.mmio,
            };
            // A BAR placed over another device's range stays unmapped (QEMU would
            // let one shadow the other; a firmware that does this is broken anyway).
            if let Err(e) = bus.insert(m.base, m.len, owner, m.device) {
                tracing::warn!("PCI {address}: {e}; region left unmapped");
            }
        }
        mapped.insert(address, key);
    }

    /// The function and offset the config address register selects, if enabled and
    /// on bus 0.
    fn selected(&self) -> Option<(PciAddress, usize)> {
        let a = self.address.load(Ordering::Relaxed);
        if a & 0x8000_0000 == 0 || (a >> 16) & 0xff != 0 {
            return None;
        }
        let slot = ((a >> 11) & 0x1f) as u8;
        let function = ((a >> 8) & 0x7) as u8;
        let address = PciAddress::new(slot, function).ok()?;
        Some((address, (a & 0xfc) as usize))
    }

    fn config_read(&self, byte: usize, data: &mut [u8]) {
        data.fill(0xff);
        let Some((address, reg)) = self.selected() else {
            return;
        };
        if byte + data.len() > 4 {
            return;
        }
        let guard = rcu::read();
        if let Some(function) = self.bus.get(&guard, address) {
            function.config_read(reg + byte, data);
        }
    }

    fn config_write(&self, byte: usize, data: &[u8]) {
        let Some((address, reg)) = self.selected() else {
            return;
        };
        if byte + data.len() > 4 {
            return;
        }
        let found = {
            let guard = rcu::read();
            self.bus
                .get(&guard, address)
                .map(|function| function.config_write(reg + byte, data))
                .is_some()
        };
        if found {
            self.remap(address);
        }
    }
}

impl BusDevice for PciHost {
    fn read(&self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.address.load(Ordering::Relaxed).to_le_bytes()),
            (4..=7, _) => self.config_read(offset as usize - 4, data),
            // The reset control register reads back 0 (no reset in progress).
            (1, 1) => data[0] = 0,
            _ => data.fill(0xff),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        match (offset, data.len()) {
            (0, 4) => self.address.store(le_value(data) as u32, Ordering::Relaxed),
            (4..=7, _) => self.config_write(offset as usize - 4, data),
            // Reset control: bit 2 (RST_CPU) starts a reset.
            (1, 1) if data[0] & 0x04 != 0 => (self.events)(HostEvent::Reset),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{BarKind, PciConfig, SimpleFunction};

    struct Echo;
    impl BusDevice for Echo {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&self, _: u64, _: &[u8]) {}
    }

    fn cfg_addr(slot: u32, function: u32, reg: u32) -> [u8; 4] {
        (0x8000_0000 | slot << 11 | function << 8 | reg).to_le_bytes()
    }

    #[test]
    fn config_cycles_and_bar_programming_map_regions() {
        let pio = Arc::new(IoBus::new("pio"));
        let mmio = Arc::new(IoBus::new("mmio"));
        let resets = Arc::new(Mutex::new(0));
        let r = resets.clone();
        let host = PciHost::new(
            pio.clone(),
            mmio.clone(),
            Arc::new(move |_| *r.lock().unwrap() += 1),
            |_| {},
        );
        let mut config = PciConfig::new(0x1af4, 0x1001, 0x01_00_00, 0);
        config.add_bar(0, 0x40, BarKind::Io, false).unwrap();
        let echo: Arc<dyn BusDevice> = Arc::new(Echo);
        let f = SimpleFunction::new("dev0", config, vec![Some(echo)]);
        host.plug(PciAddress::new(3, 0).unwrap(), Box::new(f))
            .unwrap();

        let mut d = [0u8; 4];
        host.write(0, &cfg_addr(3, 0, 0));
        host.read(4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x1001_1af4);
        host.read(6, &mut d[..2]);
        assert_eq!(u16::from_le_bytes([d[0], d[1]]), 0x1001);
        // Absent function: all ones.
        host.write(0, &cfg_addr(4, 0, 0));
        host.read(4, &mut d);
        assert_eq!(d, [0xff; 4]);
        // Size, program and enable BAR 0.
        host.write(0, &cfg_addr(3, 0, 0x10));
        host.write(4, &[0xff; 4]);
        host.read(4, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0xffff_ffc1);
        host.write(4, &0xc000u32.to_le_bytes());
        let mut b = [0u8];
        assert!(!pio.read(0xc005, &mut b));
        host.write(0, &cfg_addr(3, 0, 0x04));
        host.write(4, &[0x01]);
        assert!(pio.read(0xc005, &mut b));
        assert_eq!(b, [5]);
        // Move it.
        host.write(0, &cfg_addr(3, 0, 0x10));
        host.write(4, &0xc100u32.to_le_bytes());
        assert!(!pio.read(0xc005, &mut b));
        assert!(pio.read(0xc105, &mut b));
        // Reset control.
        host.write(1, &[0x06]);
        assert_eq!(*resets.lock().unwrap(), 1);
        // Reset unmaps; unplug of an unknown id fails.
        host.reset();
        assert!(!pio.read(0xc105, &mut b));
        assert!(host.unplug("nope").is_err());
        host.unplug("dev0").unwrap();
    }
}
