//! The PIIX3 IDE function of the `pc` machine: at 00:01.1 from power-on (with or
//! without drives, as QEMU's `-M pc`), its legacy ports in port I/O space, its channels
//! on GSI 14 and 15 through the in-kernel irqchip, its bus master reaching guest RAM,
//! its I/O completing on the main loop. Drives are attached before the guest runs
//! ([`attach`]).

use std::sync::Arc;

use aio_context::AioHandle;
use block_dma::{DmaMemory, Drive};
use ide::{IdeController, IdeDevice, Piix3Ide};
use io_bus::PLATFORM_OWNER;
use qdev_bus::PciAddress;

use kvm_ioctls::VmFd;

use crate::{Error, GuestRam, KvmIrqLine, Platform, Result};

/// Where the function sits on the `pc` machine (slot 1, function 1).
pub const IDE_SLOT: u8 = 1;
/// The function number beside the PIIX3 ISA bridge.
pub const IDE_FUNCTION: u8 = 1;

/// The qdev id QEMU gives the function (`query-pci` shows it as `piix3-ide`).
const QDEV_ID: &str = "piix3-ide";

/// Builds the controller (no devices yet), maps its legacy ports and plugs the PCI
/// function at 00:01.1. `aio` is the loop where its I/O is submitted and completes.
pub(crate) fn plug(
    vm: &Arc<VmFd>,
    ram: &GuestRam,
    platform: &Platform,
    aio: AioHandle,
) -> Result<IdeController> {
    let ctl = IdeController::new(
        DmaMemory::new(ram.list().clone()),
        Arc::new(KvmIrqLine(vm.clone())),
        aio,
        [[None, None], [None, None]],
    )
    .map_err(ide_error)?;
    // The legacy ports do not move with the function's BARs: owned by the platform,
    // so a BAR remap of 00:01.1 leaves them in place.
    ctl.map_legacy(&platform.pio, PLATFORM_OWNER)
        .map_err(ide_error)?;
    let address = PciAddress::new(IDE_SLOT, IDE_FUNCTION)?;
    platform
        .pci
        .plug(address, Box::new(Piix3Ide::new(QDEV_ID, ctl.clone())))?;
    Ok(ctl)
}

fn ide_error(e: ide::Error) -> Error {
    Error::Io {
        what: "piix3-ide".into(),
        source: std::io::Error::other(e.to_string()),
    }
}

/// What kind of IDE device [`attach`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdeMedia {
    /// `ide-hd` (`media=disk`): an ATA disk; needs a drive.
    Disk,
    /// `ide-cd` (`media=cdrom`): an ATAPI drive, with a disc or empty.
    Cdrom,
}

impl IdeMedia {
    /// QEMU's driver name: `ide-hd` or `ide-cd`.
    pub fn driver(self) -> &'static str {
        match self {
            IdeMedia::Disk => "ide-hd",
            IdeMedia::Cdrom => "ide-cd",
        }
    }
}

/// Attaches an `ide-hd`/`ide-cd` named `id` on `drive` at `bus` (0: primary, 1:
/// secondary) and `unit` (0: master, 1: slave) of the machine's IDE controller
/// ([`crate::Machine::ide`]), with IDENTIFY's `serial` (`None`: `QM000NN`). Call
/// before the guest runs.
///
/// # Errors
///
/// A disk without a drive, a bus/unit past 1 or taken, an id in use: the message is
/// QEMU's where it has one.
pub fn attach(
    ctl: &IdeController,
    bus: usize,
    unit: usize,
    id: &str,
    media: IdeMedia,
    drive: Option<Drive>,
    serial: Option<&str>,
) -> std::result::Result<(), String> {
    let mut device = match (media, drive) {
        (IdeMedia::Disk, Some(drive)) => IdeDevice::disk(id, drive),
        (IdeMedia::Disk, None) => return Err("Device needs media, but drive is empty".into()),
        (IdeMedia::Cdrom, disc) => IdeDevice::cdrom(id, disc),
    };
    if let Some(serial) = serial {
        device = device.serial(serial);
    }
    if bus > 1 {
        return Err(format!("Bus 'ide.{bus}' not found"));
    }
    ctl.attach(bus, unit, device).map_err(|e| e.to_string())
}

/// The firmware device path of the IDE device at `bus`/`unit` (fw_cfg `bootorder`), as
/// QEMU names it: the PIIX3 IDE function, the channel, then the unit.
pub fn ide_boot_path(bus: usize, unit: usize) -> String {
    format!("/pci@i0cf8/ide@{IDE_SLOT:x},{IDE_FUNCTION:x}/drive@{bus:x}/disk@{unit:x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_paths_are_qemus() {
        assert_eq!(ide_boot_path(0, 0), "/pci@i0cf8/ide@1,1/drive@0/disk@0");
        assert_eq!(ide_boot_path(1, 1), "/pci@i0cf8/ide@1,1/drive@1/disk@1");
    }
}
