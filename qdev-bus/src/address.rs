//! Where a child sits on its bus.

use std::fmt;

use crate::{Error, Result};

/// A child's address on a bus: a SCSI target/LUN, a PCI slot/function, a port number.
///
/// Children are kept sorted by address, so enumeration (REPORT LUNS, `lspci`) comes out
/// in order and dispatch stops early. Any `Copy + Ord + Display` type qualifies; make
/// its constructor reject values the bus cannot hold (as [`PciAddress::new`] does), so
/// that every value of the type is a valid address.
pub trait Address: Copy + Ord + fmt::Debug + fmt::Display + Send + Sync + 'static {}

impl<T: Copy + Ord + fmt::Debug + fmt::Display + Send + Sync + 'static> Address for T {}

/// A SCSI device's address on its bus (channel 0, as on virtio-scsi): target and LUN.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ScsiAddress {
    /// SCSI target id.
    pub target: u16,
    /// Logical unit number within the target.
    pub lun: u16,
}

impl ScsiAddress {
    /// The address of LUN `lun` of target `target`.
    pub const fn new(target: u16, lun: u16) -> ScsiAddress {
        ScsiAddress { target, lun }
    }
}

impl fmt::Display for ScsiAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "target {} lun {}", self.target, self.lun)
    }
}

/// A PCI device's address on its bus: slot 0..32, function 0..8 (QEMU's `addr=SS.F`).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    slot: u8,
    function: u8,
}

impl PciAddress {
    /// Slot `slot`, function `function`.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddress`] unless `slot < 32` and `function < 8`.
    pub fn new(slot: u8, function: u8) -> Result<PciAddress> {
        if slot >= 32 || function >= 8 {
            return Err(Error::InvalidAddress {
                address: format!("{slot:02x}.{function}"),
                reason: "PCI slots are 00..1f and functions 0..7",
            });
        }
        Ok(PciAddress { slot, function })
    }

    /// The slot number, 0..32.
    pub fn slot(&self) -> u8 {
        self.slot
    }

    /// The function number, 0..8.
    pub fn function(&self) -> u8 {
        self.function
    }
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02x}.{}", self.slot, self.function)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses_are_checked_and_print_like_qemu() {
        assert_eq!(PciAddress::new(4, 1).unwrap().to_string(), "04.1");
        let err = PciAddress::new(32, 0).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid address 20.0: PCI slots are 00..1f and functions 0..7"
        );
        assert!(PciAddress::new(1, 8).is_err());
    }

    #[test]
    fn scsi_addresses_sort_by_target_then_lun() {
        assert!(ScsiAddress::new(0, 9) < ScsiAddress::new(1, 0));
        assert_eq!(ScsiAddress::new(2, 3).to_string(), "target 2 lun 3");
    }
}
