//! SCSI for a VMM: a SCSI bus on qdev-bus with target/LUN addressing, and `scsi-hd`, a
//! SCSI disk that is a state machine over a block-dma [`Drive`](block_dma::Drive) and
//! knows nothing of its transport (virtio-scsi in a VMM, vhost-user-scsi in a storage
//! daemon).
//!
//! A transport turns what its guest sent into a [`ScsiRequest`] (a CDB and a data
//! buffer in guest memory) and hands it to [`ScsiBus::execute`] with the target and
//! LUN; the completion gets a [`ScsiResponse`] (SCSI status, sense data in fixed or
//! descriptor format, bytes moved, and a [`HostStatus`] for the transport's own
//! response code).
//!
//! **The invariant** (the design's invariant 4, the bus-children seed): dispatch and
//! REPORT LUNS walk the bus's RCU child list under a read guard while hotplug mutates
//! it; a LUN reachable under the guard stays valid until the guard is dropped, and
//! REPORT LUNS reads one version of the LUN inventory (its count and its list agree).
//! Guest input is hostile: every CDB is parsed with bounds checks ([`cdb::parse`]) and
//! a bad one gets CHECK CONDITION with the right sense; nothing panics.
//!
//! ```
//! use std::sync::Arc;
//! use aio_context::AioContext;
//! use block_dma::{DmaMemory, Drive, ErrorPolicy, FileBackend, FileOptions, SgList};
//! use ram_block::{Backing, RamBlock, RamList};
//! use scsi::{DataBuffer, DataDirection, HdOptions, ScsiBus, ScsiHd, ScsiRequest, Sense};
//! use vm_memory::GuestAddress;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let image = tempfile::NamedTempFile::new()?;
//! image.as_file().set_len(1 << 20)?;
//! let backend = FileBackend::open(&FileOptions::new(image.path()))?;
//! let drive = Drive::new("disk0", "node0", Arc::new(backend), ErrorPolicy::default(), None);
//!
//! let bus = ScsiBus::root("scsi0.0", |_| {});
//! bus.plug(0, 0, Box::new(ScsiHd::new("disk0", drive, HdOptions::default())?))?;
//!
//! let ram = RamList::new();
//! ram.add(RamBlock::new("ram", GuestAddress(0), 1 << 16, Backing::Memfd { huge_pages: false })?)?;
//! let ctx = AioContext::new()?;
//! let run = |cdb: &[u8]| {
//!     let req = ScsiRequest {
//!         cdb: cdb.into(),
//!         data: DataBuffer {
//!             mem: DmaMemory::new(ram.clone()),
//!             sg: [(0x1000, 512)].into_iter().collect::<SgList>(),
//!             dir: DataDirection::FromDevice,
//!         },
//!     };
//!     let out = std::rc::Rc::new(std::cell::RefCell::new(None));
//!     let o = out.clone();
//!     bus.execute(&ctx, 0, 0, req, scsi::ScsiDone::new(move |r| *o.borrow_mut() = Some(r)));
//!     while out.borrow().is_none() { ctx.poll(true); }
//!     out.take().unwrap()
//! };
//! // A new disk reports POWER ON, RESET first, then answers.
//! assert_eq!(run(&[0, 0, 0, 0, 0, 0]).sense(), Some(Sense::POWER_ON_RESET));
//! assert_eq!(run(&[0, 0, 0, 0, 0, 0]).status, scsi::status::GOOD);
//! let cap = run(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
//! assert_eq!(cap.transferred, 8);
//! # Ok(()) }
//! ```
//!
//! `DESIGN.md` beside this crate explains the split between bus and disk, the unit
//! attention rules and the hot-unplug drain.
#![deny(missing_docs)]

mod bus;
pub mod cdb;
mod disk;
mod request;
mod sense;

pub use bus::{MAX_LUN, MAX_TARGET, ScsiBus};
pub use disk::pages::{
    MAX_TRANSFER_BLOCKS, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS, lun_bytes,
};
pub use disk::{HdControl, HdOptions, ScsiHd};
pub use request::{
    DataBuffer, DataDirection, HostStatus, InFlightCounter, MAX_CDB, ScsiDone, ScsiInFlight,
    ScsiRequest, ScsiResponse, ScsiSink, read_sg, read_sg_into, write_sg,
};
pub use sense::{DESCRIPTOR_SENSE_LEN, FIXED_SENSE_LEN, Sense, key, status};

use aio_context::AioContext;
use qdev_bus::Device;

/// What a SCSI bus dispatches to: a logical unit.
///
/// Commands arrive on the transport's iothread, under an RCU read guard: `execute`
/// must not block. State a command needs after `execute` returns (its I/O) must be
/// owned by the command (an `Arc` of the device's state), because the device itself
/// may be unplugged and reclaimed once the guard is gone.
pub trait ScsiDevice: Device {
    /// Executes `req` in `ctx`; `done` runs exactly once, possibly inside this call.
    /// Returns a handle while the command is in flight (for ABORT TASK and resets).
    fn execute(&self, ctx: &AioContext, req: ScsiRequest, done: ScsiDone) -> Option<ScsiInFlight>;

    /// Takes the pending unit attention condition, if any (it is reported once).
    fn take_unit_attention(&self) -> Option<Sense> {
        None
    }

    /// Whether sense data is returned in descriptor format (control mode page D_SENSE).
    fn descriptor_sense(&self) -> bool {
        false
    }

    /// The device's count of commands in flight, and its hot-unplug drain.
    fn in_flight(&self) -> &InFlightCounter;
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A device option the device cannot have.
    #[error("device {device:?}: {reason}")]
    Option {
        /// The device id.
        device: String,
        /// What is wrong.
        reason: String,
    },
    /// A target or LUN beyond what the bus addresses.
    #[error(
        "SCSI address target {target} lun {lun} is out of range (targets 0..={MAX_TARGET}, LUNs 0..={MAX_LUN})"
    )]
    Address {
        /// The target.
        target: u16,
        /// The LUN.
        lun: u16,
    },
    /// The bus refused the plug.
    #[error(transparent)]
    Bus(#[from] qdev_bus::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// The README's example, run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
