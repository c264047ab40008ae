//! Port I/O and MMIO dispatch: the access trait devices implement ([`BusDevice`]) and the
//! address map vCPU threads look devices up in ([`IoBus`]).
//!
//! A device model implements [`BusDevice`] and knows nothing of the machine; the machine
//! maps devices into an [`IoBus`] (one for port I/O, one for MMIO) and dispatches a vCPU's
//! exit through it. The invariant (design.md, invariants 3 and 4 applied to the address
//! map): a lookup runs under an RCU read guard and never blocks; a device inserted or
//! removed by the main thread (PCI BAR programming, hotplug) is seen at once by new
//! lookups, and a removed device is dropped only after a grace period, so a vCPU that
//! found it finishes its access on a live device.
//!
//! ```
//! use std::sync::Arc;
//! use std::sync::atomic::{AtomicU8, Ordering};
//! use io_bus::{BusDevice, IoBus, PLATFORM_OWNER};
//!
//! /// A one-byte scratch register.
//! struct Scratch(AtomicU8);
//! impl BusDevice for Scratch {
//!     fn read(&self, _offset: u64, data: &mut [u8]) {
//!         data.fill(self.0.load(Ordering::Relaxed));
//!     }
//!     fn write(&self, _offset: u64, data: &[u8]) {
//!         self.0.store(data[0], Ordering::Relaxed);
//!     }
//! }
//!
//! let pio = IoBus::new("pio");
//! pio.insert(0x80, 1, PLATFORM_OWNER, Arc::new(Scratch(AtomicU8::new(0))))?;
//! assert!(pio.write(0x80, &[0x2a]));
//! let mut byte = [0u8];
//! assert!(pio.read(0x80, &mut byte));
//! assert_eq!(byte, [0x2a]);
//! // Nothing at 0x81: the read floats high, as on a PC.
//! assert!(!pio.read(0x81, &mut byte));
//! assert_eq!(byte, [0xff]);
//! # Ok::<(), io_bus::Overlap>(())
//! ```
//!
//! See `DESIGN.md` for why the table is a copied vector and not a tree.

#![deny(missing_docs)]

mod access;
mod bus;

pub use access::{le_value, read_le};
pub use bus::{IoBus, Overlap, PLATFORM_OWNER};

/// A device on an I/O bus. Called from vCPU threads, concurrently: state lives behind
/// the device's own lock. `offset` is relative to the start of the range the device was
/// mapped at; `data.len()` is the access width (1, 2, 4 or 8; bigger for MMIO string
/// operations). A device ignores what it does not understand; it never panics on guest
/// input.
///
/// Both methods run inside the dispatching vCPU's RCU read section: they must not block
/// on anything that may wait for a grace period (design.md, invariant 7).
pub trait BusDevice: Send + Sync {
    /// A guest read: fill all of `data`.
    fn read(&self, offset: u64, data: &mut [u8]);
    /// A guest write.
    fn write(&self, offset: u64, data: &[u8]);
}

/// The README's example, run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
