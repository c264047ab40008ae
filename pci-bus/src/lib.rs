//! PCI for a VMM: function config spaces, BAR decoding and sizing, the capabilities
//! list, the MSI-X table and PBA, the host bridge with configuration mechanism #1
//! (0xCF8/0xCFC), and INTx routing as a trait.
//!
//! A PCI function is a [`PciFunction`] plugged into the host's
//! `qdev_bus::Bus<PciAddress, dyn PciFunction>` (its child list is an RCU list: config
//! cycles from vCPUs look functions up under a read guard while hotplug changes it).
//! After every config write the [`PciHost`] asks the function where it decodes now
//! ([`PciFunction::mappings`]) and updates the port and memory [`io_bus::IoBus`]es, so
//! BAR programming by firmware or the OS takes effect at once. A function's BAR
//! handlers are `Arc<dyn io_bus::BusDevice>`s that it hands out; they stay valid for
//! readers that found them until a grace period after unmapping.
//!
//! To add a device: build a [`PciConfig`] (ids, class, BARs, capabilities, interrupt
//! pin), implement [`PciFunction`] (usually by delegating to a `Mutex<PciConfig>` and
//! mapping decoded BARs to handlers, as [`SimpleFunction`] does), and plug it with
//! [`PciHost::plug`]. INTx goes through an [`IntxRouting`]; MSI-X state is an
//! [`msix::MsixTable`].
//!
//! ```
//! use std::sync::Arc;
//! use io_bus::{BusDevice, IoBus};
//! use pci::{BarKind, PciConfig, PciHost, SimpleFunction, regs};
//! use qdev_bus::PciAddress;
//!
//! /// An I/O BAR whose every port reads its offset.
//! struct Echo;
//! impl BusDevice for Echo {
//!     fn read(&self, offset: u64, data: &mut [u8]) {
//!         data.fill(offset as u8);
//!     }
//!     fn write(&self, _: u64, _: &[u8]) {}
//! }
//!
//! let pio = Arc::new(IoBus::new("pio"));
//! let mmio = Arc::new(IoBus::new("mmio"));
//! let host = Arc::new(PciHost::new(pio.clone(), mmio, Arc::new(|_| {}), |_| {}));
//! pio.insert(0xcf8, 8, 0, host.clone())?;
//!
//! let mut config = PciConfig::new(0x1af4, 0x1000, 0xff_00_00, 0);
//! config.add_bar(0, 0x40, BarKind::Io, false)?;
//! let echo: Arc<dyn BusDevice> = Arc::new(Echo);
//! let function = SimpleFunction::new("dev0", config, vec![Some(echo)]);
//! host.plug(PciAddress::new(3, 0)?, Box::new(function))?;
//!
//! // Firmware programs BAR 0 to 0xc000 and enables I/O decoding through 0xCF8/0xCFC.
//! let select = |reg: u32| (0x8000_0000u32 | 3 << 11 | reg).to_le_bytes();
//! pio.write(0xcf8, &select(regs::BAR0 as u32));
//! pio.write(0xcfc, &0xc000u32.to_le_bytes());
//! pio.write(0xcf8, &select(regs::COMMAND as u32));
//! pio.write(0xcfc, &[0x01, 0x00]);
//! let mut b = [0u8];
//! assert!(pio.read(0xc005, &mut b));
//! assert_eq!(b, [5]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! See `DESIGN.md` for what lives here and what stays with the platform.

#![deny(missing_docs)]

mod config;
mod function;
mod host;
mod intx;
pub mod msix;

pub use config::{BarKind, PciConfig, PciMapping, Space, regs};
pub use function::{PciFunction, PendingReset, ResetCompleter, SimpleFunction, bar_mappings};
pub use host::{HostEvent, HostEvents, PCI_CONFIG_PORT, PciHost, PlugError};
pub use intx::{IntxRouting, IrqLine, intx_line};

/// Why a config space could not be built as asked.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A BAR size that is not a power of two, out of range for its kind, or a BAR slot
    /// in use.
    #[error("BAR {index}: invalid size {size:#x} or slot for {kind:?}")]
    BadBar {
        /// BAR index.
        index: usize,
        /// Requested size.
        size: u64,
        /// Requested kind.
        kind: BarKind,
    },
    /// A capability that does not fit: misaligned, inside the header, past the end of
    /// the space, or over another capability.
    #[error("capability {id:#04x} at {at:#x}+{len:#x}: misplaced or overlapping")]
    BadCapability {
        /// Config-space offset.
        at: usize,
        /// Capability id.
        id: u8,
        /// Length in bytes.
        len: usize,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// The README's example, run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
