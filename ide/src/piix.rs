//! The PIIX3 IDE PCI function (8086:7010, class 01:01, prog-if 0x80: both channels in
//! compatibility mode, bus-master capable), at 00:01.1 on a PC.

use std::sync::Arc;

use io_bus::BusDevice;
use pci::{BarKind, PciConfig, PciFunction, PciMapping, SimpleFunction};

use crate::IdeController;

/// PCI vendor id (Intel).
pub const VENDOR_ID: u16 = 0x8086;
/// PCI device id (82371SB PIIX3 IDE).
pub const DEVICE_ID: u16 = 0x7010;
/// Class code: mass storage, IDE, prog-if 0x80 (bus master, legacy ports).
pub const CLASS: u32 = 0x01_01_80;

/// The PIIX3 IDE function: config space and BAR4 (the bus master). The legacy ports
/// do not move with BARs; the machine maps them ([`IdeController::map_legacy`]).
pub struct Piix3Ide {
    function: SimpleFunction,
    controller: IdeController,
}

impl Piix3Ide {
    /// The function for `controller`, with qdev id `id`.
    pub fn new(id: impl Into<String>, controller: IdeController) -> Piix3Ide {
        let mut config = PciConfig::new(VENDOR_ID, DEVICE_ID, CLASS, 0);
        // 16 I/O ports: a valid size, so the error case cannot happen.
        if let Err(e) = config.add_bar(4, 16, BarKind::Io, false) {
            tracing::error!("piix3-ide: BAR4: {e}");
        }
        // IDETIM (primary, secondary) and SIDETIM. Bit 15 of each IDETIM enables a
        // channel's decode; SeaBIOS sets it, and Linux's ata_piix disables a channel
        // without it. We power on with both enabled so that a guest booted without
        // firmware finds its disks (a real PIIX3 resets them to 0).
        config.set_u16(0x40, 0x8000);
        config.set_u16(0x42, 0x8000);
        config.set_writable(0x40, 4, 0xffff_ffff);
        config.set_writable(0x44, 1, 0xff);
        let mut bars: Vec<Option<Arc<dyn BusDevice>>> = vec![None; 4];
        bars.push(Some(controller.bus_master()));
        Piix3Ide {
            function: SimpleFunction::new(id, config, bars),
            controller,
        }
    }

    /// The controller behind the function.
    pub fn controller(&self) -> &IdeController {
        &self.controller
    }
}

impl qdev_bus::Device for Piix3Ide {
    fn id(&self) -> &str {
        qdev_bus::Device::id(&self.function)
    }
    fn reset(&self) {
        self.pci_reset();
    }
}

impl PciFunction for Piix3Ide {
    fn config_read(&self, offset: usize, data: &mut [u8]) {
        self.function.config_read(offset, data);
    }
    fn config_write(&self, offset: usize, data: &[u8]) {
        self.function.config_write(offset, data);
    }
    fn mappings(&self) -> Vec<PciMapping> {
        self.function.mappings()
    }
    fn pci_reset(&self) {
        self.function.pci_reset();
        self.controller.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aio_context::AioContext;
    use block_dma::DmaMemory;
    use pci::{Space, regs};
    use ram_block::RamList;

    struct NoIrq;
    impl pci::IrqLine for NoIrq {
        fn set_level(&self, _: u32, _: bool) {}
    }

    #[test]
    fn ids_class_and_bar4() {
        let ctx = AioContext::new().unwrap();
        let mem = DmaMemory::new(RamList::new());
        let ide = IdeController::new(mem, Arc::new(NoIrq), ctx.handle(), Default::default());
        let f = Piix3Ide::new("ide", ide.unwrap());
        let mut b = [0u8; 4];
        f.config_read(regs::VENDOR_ID, &mut b);
        assert_eq!(b, [0x86, 0x80, 0x10, 0x70]);
        f.config_read(regs::REVISION, &mut b);
        assert_eq!(
            &b[1..],
            &[0x80, 0x01, 0x01],
            "prog-if 0x80, IDE, mass storage"
        );
        f.config_write(regs::BAR0 + 16, &0xc000u32.to_le_bytes());
        f.config_write(regs::COMMAND, &[0x05, 0]);
        let m = f.mappings();
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].space, m[0].base, m[0].len), (Space::Io, 0xc000, 16));
        f.config_write(0x40, &0x8000u16.to_le_bytes());
        let mut t = [0u8; 2];
        f.config_read(0x40, &mut t);
        assert_eq!(u16::from_le_bytes(t), 0x8000, "IDETIM is writable");
        f.config_write(0x40, &0u16.to_le_bytes());
        f.pci_reset();
        assert!(f.mappings().is_empty());
        f.config_read(0x40, &mut t);
        assert_eq!(
            u16::from_le_bytes(t),
            0x8000,
            "decode enabled again after reset"
        );
    }
}
