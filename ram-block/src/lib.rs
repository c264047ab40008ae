//! Guest RAM blocks under RCU: QEMU's RAM block list and its most-recently-used cache,
//! where a lookup cannot race with hot remove into freed memory.
//!
//! - A [`RamBlock`] is `size` bytes of guest-physical address space at `start`, backed by
//!   anonymous memory, a memfd (shareable with another process: a vhost-user backend
//!   maps the same fd) or a file descriptor handed to us, optionally on huge pages
//!   ([`Backing`]). A peer's fd ([`Backing::PeerFd`]) that the peer truncates under us
//!   costs that peer its memory ([`FaultReport`]), not the process its life: SIGBUS is
//!   caught for such mappings.
//! - A [`RamList`] places blocks in the guest-physical map; addresses between blocks are
//!   holes (MMIO, the PCI hole). Readers look up and translate guest ranges under any RCU
//!   read guard ([`rcu::read`], or a QSBR guard), with an MRU cache in front of a binary
//!   search; writers add and remove blocks under a mutex and never wait for readers.
//! - Translation is bounds checked for an untrusted guest ([`RamBlocks::translate`],
//!   [`RamBlocks::translate_prefix`]) and yields vm-memory [`VolatileSlice`]s, never
//!   `&[u8]`: guest memory changes under us, so plain references to it would be data
//!   races.
//! - [`RamList`], [`RamBlocks`] and [`RamBlock`] implement vm-memory's
//!   `GuestAddressSpace`, `GuestMemoryBackend` (hence `GuestMemory` and
//!   `Bytes<GuestAddress>`) and `GuestMemoryRegion`, so linux-loader and virtio-queue run
//!   on this memory directly; [`RamMemory`] explains how `memory()` maps onto a guard.
//!
//! **The invariant** (seed 001, QEMU's "exec: protect mru_block with RCU"): lookup,
//! MRU cache included, runs under a read guard; removing a block unlinks it at once and
//! unmaps it only after a grace period. Every block reference and slice borrows the
//! guard, so the borrow checker, not a comment, proves none outlives the read section
//! (`tests/ui/` holds the programs it rejects).
//!
//! ```
//! use ram_block::{Backing, RamBlock, RamList};
//! use vm_memory::{Bytes, GuestAddress};
//!
//! let ram = RamList::new();
//! let anon = Backing::Anonymous { huge_pages: false };
//! ram.add(RamBlock::new("low", GuestAddress(0), 0x8_0000, anon)?)?;
//! // a hole at 0x8_0000..0x10_0000, then a hot-added DIMM
//! ram.add(RamBlock::new("dimm0", GuestAddress(0x10_0000), 0x10_0000, Backing::Memfd { huge_pages: false })?)?;
//!
//! let guard = rcu::read();
//! let slice = ram.translate(&guard, GuestAddress(0x10_0100), 4)?; // lives no longer than `guard`
//! slice.write_obj(0xdead_beefu32, 0)?;
//! assert!(ram.translate(&guard, GuestAddress(0x8_0000), 1).is_err()); // the hole
//! assert!(ram.translate(&guard, GuestAddress(0x7_ffff), 2).is_err()); // leaves "low"
//!
//! ram.remove(GuestAddress(0x10_0000))?; // hot remove: unlinked now...
//! assert_eq!(slice.read_obj::<u32>(0)?, 0xdead_beef); // ...unmapped after `guard` is gone
//! assert!(ram.find(&rcu::read(), GuestAddress(0x10_0100)).is_none());
//! drop(guard);
//! rcu::barrier(); // the unmap has run
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! `DESIGN.md` beside this crate tells the longer story: why the map is a copy-on-write
//! version in an [`rcu::RcuCell`] rather than an `RcuList`, why the MRU cache lives in the
//! version (which removes a late-store race QEMU's global `mru_block` has), and the
//! threat model of translation.
#![deny(missing_docs)]

mod backing;
mod block;
mod blocks;
mod error;
mod fault;
mod list;
mod mapping;
mod memory;

pub use backing::Backing;
pub use block::RamBlock;
pub use blocks::RamBlocks;
pub use error::{Error, Result};
pub use fault::FaultReport;
pub use list::RamList;
pub use memory::RamMemory;
pub use vm_memory::{GuestAddress, VolatileSlice};

/// The default huge page size of this host (`Hugepagesize` in `/proc/meminfo`), which
/// [`Backing::Anonymous`] and [`Backing::Memfd`] use with `huge_pages: true`.
pub fn huge_page_size() -> u64 {
    backing::huge_page_size()
}

/// How many default-size huge pages the kernel has free (`HugePages_Free`); 0 when none
/// are reserved, in which case huge-page blocks fail with
/// [`Error::HugePagesUnavailable`].
pub fn free_huge_pages() -> u64 {
    backing::meminfo("HugePages_Free:").unwrap_or(0)
}
