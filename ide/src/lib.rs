//! PIIX3 IDE for a VMM: the PCI function with the legacy ports and the bus master
//! (PRD-table DMA), an ATA disk (`ide-hd`) and an ATAPI CD/DVD drive (`ide-cd`).
//!
//! The models are state machines behind one lock per channel, reached from vCPU
//! threads through [`io_bus::BusDevice`]s; they own no thread, socket or fd. The
//! machine hands them guest memory (a block-dma [`DmaMemory`](block_dma::DmaMemory)),
//! the interrupt lines (a [`pci::IrqLine`]: GSI 14 and 15) and an event loop
//! ([`aio_context::AioHandle`]) where their I/O runs through block-dma
//! [`Drive`](block_dma::Drive)s: scatter-gather DMA with the bounce fallback, and the
//! `rerror`/`werror` policy whose `stop` parks a request and restarts it from a BH
//! when the VM resumes (seed 002).
//!
//! The invariant: nothing the guest writes (registers, packets, PRD tables) makes a
//! vCPU wait for host I/O or the process fail; a bad command aborts (ERR/ABRT, or a
//! CHECK CONDITION for ATAPI), a bad PRD table ends that transfer.
//!
//! | guest input | where | bounds checked |
//! | --- | --- | --- |
//! | task file, command | `ata.rs` | LBA28/LBA48/CHS range against the medium (overflow checked); counts 0 = 256/65536; unknown opcodes abort |
//! | data port | `channel.rs` | only inside the open DRQ window; any access width; reads outside it return 0 |
//! | ATAPI packet | `atapi.rs` | READ(10)/(12) range against the disc; allocation lengths cap replies; byte count limit 0 treated as 0xfffe; unknown opcodes: ILLEGAL REQUEST |
//! | PRD table | `bmdma.rs` | at most 512 entries (one page); entries and regions translated through the RAM list; outside RAM: Error bit, command aborted |
//! | bus-master registers | `bmdma.rs` | PRD pointer dword aligned; Active read-only; Error/Interrupt write-one-to-clear |
//!
//! ```
//! use std::sync::Arc;
//! use aio_context::AioContext;
//! use block_dma::DmaMemory;
//! use ide::{IdeController, IdeDevice};
//! use io_bus::BusDevice;
//! use ram_block::RamList;
//!
//! struct NoIrq;
//! impl pci::IrqLine for NoIrq {
//!     fn set_level(&self, _gsi: u32, _level: bool) {}
//! }
//!
//! let ctx = AioContext::new()?;
//! let ide = IdeController::new(
//!     DmaMemory::new(RamList::new()),
//!     Arc::new(NoIrq),
//!     ctx.handle(),
//!     [[Some(IdeDevice::cdrom("cd0", None)), None], [None, None]],
//! )?;
//! let cmd = ide.command_block(0);
//! // IDENTIFY DEVICE to a CD drive aborts with the packet signature in LBA mid/high.
//! cmd.write(7, &[0xec]);
//! let mut b = [0u8];
//! cmd.read(7, &mut b);
//! assert_eq!(b[0] & 0x01, 0x01, "ERR");
//! cmd.read(4, &mut b);
//! assert_eq!(b[0], 0x14);
//! cmd.read(5, &mut b);
//! assert_eq!(b[0], 0xeb);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! See `DESIGN.md` for the threading and the DMA semantics.
#![deny(missing_docs)]

mod ata;
mod atapi;
mod bmdma;
mod channel;
mod controller;
mod device;
pub mod identify;
mod piix;
pub mod regs;

pub use controller::{DeviceKind, IdeController, IdeDevice, LEGACY};
pub use piix::{CLASS, DEVICE_ID, Piix3Ide, VENDOR_ID};

/// What went wrong building or driving the controller.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// No device has this id.
    #[error("Device '{0}' not found")]
    NotFound(String),
    /// The device has no removable medium (a disk).
    #[error("Device '{0}' is not removable")]
    NotRemovable(String),
    /// The guest locked the tray and `force` was not given (QEMU's wording).
    #[error(
        "Device '{0}' is locked and force was not specified, wait for tray to open and try again"
    )]
    Locked(String),
    /// Two devices with one id.
    #[error("Duplicate ID '{0}' for device")]
    DuplicateId(String),
    /// A channel or unit that the controller does not have (QEMU's words for a unit).
    #[error("Can't create IDE unit {1}, bus supports only 2 units")]
    NoUnit(usize, usize),
    /// The unit already has a device (QEMU's words).
    #[error("IDE unit {0} is in use")]
    UnitInUse(usize),
    /// The PIO buffers could not be allocated.
    #[error("ide: cannot allocate the PIO buffer: {0}")]
    Ram(String),
    /// A legacy port range is already taken.
    #[error("ide: legacy ports: {0}")]
    Ports(String),
}

/// This crate's result.
pub type Result<T> = std::result::Result<T, Error>;

/// The README's example, run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
