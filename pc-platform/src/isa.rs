//! The ISA bus behind the PIIX3 (QEMU's `isa.0`): the legacy devices (COM1, CMOS,
//! fw_cfg, the i8042, the debug ports, ...) as children of the PIIX3 ISA bridge in the
//! qdev tree, so that they are found and walked like PCI functions (by id, in reset
//! walks), while their ports are still dispatched through the port [`IoBus`].
//!
//! An [`IsaDevice`] names a model and the port ranges it decodes ([`IsaRegion`]s, each
//! with its handler); [`plug`] maps the ranges and then publishes the device on the bus,
//! at its first port ([`IsaAddress`]).
//!
//! ```
//! use std::sync::Arc;
//! use io_bus::IoBus;
//! use pc_platform::isa::{self, IsaAddress, IsaDevice, IsaRegion, ISA_BUS};
//! use pc_platform::legacy::Ignored;
//! use qdev_bus::{Bus, HotplugHandler, PciAddress};
//!
//! struct NoIrq;
//! impl pci::IrqLine for NoIrq {
//!     fn set_level(&self, _: u32, _: bool) {}
//! }
//!
//! let pci: Bus<PciAddress, dyn pci::PciFunction> = Bus::root("pci.0");
//! let (piix3, _router) = pc_platform::Piix3Isa::new(Arc::new(NoIrq));
//! pci.plug(PciAddress::new(1, 0)?, Box::new(piix3))?;
//!
//! let pio = IoBus::new("pio");
//! let guard = rcu::read();
//! let bus = isa::find_bus(&pci, &guard).unwrap();
//! let dma = IsaRegion { base: 0, len: 0x20, handler: Arc::new(Ignored::new(0x20)) };
//! isa::plug(bus, &pio, IsaDevice::new("dma0", vec![dma])).unwrap();
//! assert_eq!(bus.addresses(&guard), [IsaAddress(0)]);
//! assert!(pci.find_by_id(&guard, "dma0").is_some());
//! assert!(pio.read(0x08, &mut [0]));
//! # Ok::<(), qdev_bus::Error>(())
//! ```

use std::fmt;
use std::sync::Arc;

use io_bus::{BusDevice, IoBus, Overlap, PLATFORM_OWNER};
use qdev_bus::{AnyBus, Bus, Device, HotplugHandler, ReadGuard};

/// The ISA bus's name (QEMU's).
pub const ISA_BUS: &str = "isa.0";

/// An ISA device's place on its bus: its first I/O port (QEMU's `iobase`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IsaAddress(pub u16);

impl fmt::Display for IsaAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

/// The ISA bus type: the PIIX3 ISA bridge owns one.
pub type IsaBus = Bus<IsaAddress, IsaDevice>;

/// A port range an ISA device decodes, and the handler the port bus calls for it.
#[derive(Clone)]
pub struct IsaRegion {
    /// First port.
    pub base: u16,
    /// Number of ports.
    pub len: u64,
    /// What accesses to the range reach.
    pub handler: Arc<dyn BusDevice>,
}

impl fmt::Debug for IsaRegion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}+{:#x}", self.base, self.len)
    }
}

/// A device on the ISA bus: an id and the port ranges of its model.
///
/// Its qdev [`reset`](Device::reset) does nothing: the models that have power-on state
/// (CMOS, fw_cfg) are reset by the machine's reset sequence, as before they were on the
/// bus, so that a reset walk does not reset them twice or in a different order.
#[derive(Debug)]
pub struct IsaDevice {
    id: String,
    regions: Vec<IsaRegion>,
}

impl IsaDevice {
    /// A device `id` (QEMU's type name where the PC has one instance, e.g. `i8042`)
    /// decoding `regions`; the first region's base is its bus address.
    pub fn new(id: &str, regions: Vec<IsaRegion>) -> IsaDevice {
        IsaDevice {
            id: id.to_owned(),
            regions,
        }
    }

    /// The port ranges it decodes.
    pub fn regions(&self) -> &[IsaRegion] {
        &self.regions
    }

    /// Its bus address: its first port (0 if it decodes none).
    pub fn address(&self) -> IsaAddress {
        IsaAddress(self.regions.first().map_or(0, |r| r.base))
    }
}

impl Device for IsaDevice {
    fn id(&self) -> &str {
        &self.id
    }
}

/// Why [`plug`] failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A port range is empty, wraps, or overlaps one already mapped.
    #[error(transparent)]
    Ports(#[from] Overlap),
    /// The bus refused the device (a duplicate id, a detached bus).
    #[error(transparent)]
    Bus(#[from] qdev_bus::Error),
}

/// The ISA bus in the tree below `root` (the PCI bus the PIIX3 sits on).
pub fn find_bus<'g, G: ReadGuard>(root: &'g dyn AnyBus, guard: &'g G) -> Option<&'g IsaBus> {
    root.find_bus(guard, ISA_BUS)?.downcast_ref::<IsaBus>()
}

/// Maps `device`'s port ranges on `pio` (as platform ranges), then plugs it into `bus`.
/// On an error nothing of it stays mapped.
///
/// # Errors
///
/// [`Error::Ports`] if a range cannot be mapped (with [`IoBus::insert`]'s wording),
/// [`Error::Bus`] if the bus refuses the device.
pub fn plug(bus: &IsaBus, pio: &IoBus, device: IsaDevice) -> Result<(), Error> {
    let unmap = |regions: &[IsaRegion]| {
        for region in regions {
            pio.remove(u64::from(region.base));
        }
    };
    for (done, region) in device.regions.iter().enumerate() {
        let base = u64::from(region.base);
        if let Err(e) = pio.insert(base, region.len, PLATFORM_OWNER, region.handler.clone()) {
            unmap(&device.regions[..done]);
            return Err(e.into());
        }
    }
    let regions = device.regions.clone();
    bus.plug(device.address(), Box::new(device)).map_err(|e| {
        unmap(&regions);
        Error::from(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::legacy::Ignored;
    use qdev_bus::PciAddress;

    fn region(base: u16, len: u64) -> IsaRegion {
        IsaRegion {
            base,
            len,
            handler: Arc::new(Ignored::new(len as usize)),
        }
    }

    struct NoIrq;
    impl pci::IrqLine for NoIrq {
        fn set_level(&self, _: u32, _: bool) {}
    }

    /// A PCI bus with a PIIX3 on it, and a port bus.
    fn rig() -> (Bus<PciAddress, dyn pci::PciFunction>, IoBus) {
        let pci: Bus<PciAddress, dyn pci::PciFunction> = Bus::root("pci.0");
        let (piix3, _) = crate::Piix3Isa::new(Arc::new(NoIrq));
        pci.plug(PciAddress::new(1, 0).unwrap(), Box::new(piix3))
            .unwrap();
        (pci, IoBus::new("pio"))
    }

    #[test]
    fn devices_are_found_walked_and_dispatched() {
        let (pci, pio) = rig();
        let guard = rcu::read();
        let bus = find_bus(&pci, &guard).unwrap();
        let kbd = vec![region(0x60, 1), region(0x64, 1)];
        plug(bus, &pio, IsaDevice::new("i8042", kbd)).unwrap();
        plug(bus, &pio, IsaDevice::new("port92", vec![region(0x92, 1)])).unwrap();
        assert_eq!(bus.addresses(&guard), [IsaAddress(0x60), IsaAddress(0x92)]);
        let found = bus.find(&guard, "i8042").unwrap().device();
        assert_eq!(found.regions().len(), 2);
        assert!(pci.find_by_id(&guard, "port92").is_some());
        assert!(pio.read(0x64, &mut [0]));
        assert!(!pio.read(0x61, &mut [0]));
    }

    #[test]
    fn a_failed_plug_leaves_nothing_mapped() {
        let (pci, pio) = rig();
        let guard = rcu::read();
        let bus = find_bus(&pci, &guard).unwrap();
        plug(bus, &pio, IsaDevice::new("serial0", vec![region(0x3f8, 8)])).unwrap();
        // Second range overlaps COM1: the first one is unmapped again.
        let clash = vec![region(0x500, 4), region(0x3fc, 1)];
        let err = plug(bus, &pio, IsaDevice::new("exit0", clash)).unwrap_err();
        assert!(matches!(err, Error::Ports(_)), "{err}");
        assert!(!pio.read(0x500, &mut [0]));
        // A duplicate id: the ports are unmapped again.
        let err = plug(bus, &pio, IsaDevice::new("serial0", vec![region(0x2f8, 8)]));
        assert!(matches!(err, Err(Error::Bus(_))));
        assert!(!pio.read(0x2f8, &mut [0]));
        assert_eq!(bus.addresses(&guard), [IsaAddress(0x3f8)]);
    }
}
