//! DMA mapping with a budgeted bounce buffer whose waiters are bottom halves.
//!
//! A device model maps a guest range for DMA with [`Bounce::map`]: if the range is RAM
//! it gets host memory directly (the contiguous prefix); if not (MMIO), it gets a bounce
//! buffer of at most the address space's remaining budget (QEMU's
//! `max-bounce-buffer-size`, 4096 bytes by default), or [`MapError::Busy`]. A busy
//! request registers a [`Waiter`]: a BH of its own `AioContext`, scheduled (never
//! called) when budget is released.
//!
//! The invariant (design.md, invariant 2, seed acc60586 "dma-helpers: Fix race
//! condition of continue_after_map_failure and dma_aio_cancel"): notification schedules
//! each waiter's BH in that BH's own context and never runs the waiter's callback in the
//! releasing thread; unregistering a waiter while a release notifies is safe; and
//! [`Waiter::cancel`] leaves nothing that can run. Registration and release are paired
//! so that no wake-up is lost: the client list is written before the budget is read,
//! and the budget before the list.
//!
//! ```
//! use bottom_half::BhList;
//! use map_client::{Bounce, Direction, GuestMemoryAccess, MapError, Mapping};
//!
//! /// A toy address space: 64 bytes of MMIO, nothing directly mappable.
//! struct Mmio(std::sync::Mutex<Vec<u8>>);
//! impl GuestMemoryAccess for Mmio {
//!     type Direct<'a> = &'a [u8];
//!     type Error = std::io::Error;
//!     fn map_direct(&self, _: u64, _: usize) -> Option<(&[u8], usize)> { None }
//!     fn read(&self, addr: u64, buf: &mut [u8]) -> std::io::Result<()> {
//!         let m = self.0.lock().unwrap();
//!         buf.copy_from_slice(&m[addr as usize..addr as usize + buf.len()]);
//!         Ok(())
//!     }
//!     fn write(&self, addr: u64, buf: &[u8]) -> std::io::Result<()> {
//!         self.0.lock().unwrap()[addr as usize..addr as usize + buf.len()].copy_from_slice(buf);
//!         Ok(())
//!     }
//! }
//!
//! let mem = Mmio(std::sync::Mutex::new(vec![0; 64]));
//! let bounce = Bounce::new(32);
//! let Mapping::Bounce(mut first) = bounce.map(&mem, 0, 48, Direction::FromDevice)? else { unreachable!() };
//! assert_eq!(first.len(), 32); // shortened to the budget
//! assert!(matches!(bounce.map(&mem, 32, 16, Direction::FromDevice), Err(MapError::Busy { .. })));
//!
//! // The busy request waits with a BH of its context.
//! let list = BhList::new(|| {});
//! let retry = list.scheduler().new_bh(|| { /* retry the map */ });
//! let waiter = bounce.register(&retry);
//! first.as_mut_slice().fill(7);
//! bounce.unmap(&mem, Mapping::Bounce(first), 32)?; // writes back, releases, schedules `retry`
//! assert!(list.poll()); // the retry runs in its own context, not in unmap's thread
//! assert_eq!(mem.0.lock().unwrap()[..32], [7; 32]);
//! drop(waiter);
//! # Ok::<(), MapError>(())
//! ```
#![deny(missing_docs)]

mod bounce;
mod clients;
mod sync;

pub use bounce::{Bounce, BounceMapping, DEFAULT_BUDGET, Mapping, Waiter};

/// Which way the device moves data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// The device reads guest memory (a disk write): a bounce buffer is prefilled.
    ToDevice,
    /// The device writes guest memory (a disk read): a bounce buffer is written back on
    /// unmap.
    FromDevice,
}

/// What [`Bounce`] needs from an address space (the VMM implements it on its RAM
/// blocks and MMIO dispatch).
pub trait GuestMemoryAccess {
    /// Host memory a device may access in place, valid for `'a`.
    type Direct<'a>
    where
        Self: 'a;
    /// A failed slow-path access.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Maps the longest prefix of `[addr, addr + len)` that is plain RAM: the mapping and
    /// its length (at least 1). `None` if `addr` itself is not RAM.
    fn map_direct(&self, addr: u64, len: usize) -> Option<(Self::Direct<'_>, usize)>;

    /// Reads guest memory through the slow path (MMIO dispatch included).
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Self::Error>;

    /// Writes guest memory through the slow path.
    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Self::Error>;
}

/// Errors of [`Bounce::map`] and [`Bounce::unmap`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MapError {
    /// A zero-length map.
    #[error("zero-length DMA map at {addr:#x}")]
    Empty {
        /// The guest address.
        addr: u64,
    },
    /// The bounce budget is spent; register a waiter and retry.
    #[error("bounce buffer busy: cannot map {len} bytes at {addr:#x} now")]
    Busy {
        /// The guest address.
        addr: u64,
        /// The length asked for.
        len: usize,
    },
    /// The slow-path access behind a bounce buffer failed.
    #[error("guest memory access of {len} bytes at {addr:#x} failed")]
    Access {
        /// The guest address.
        addr: u64,
        /// The length accessed.
        len: usize,
        /// The address space's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}
