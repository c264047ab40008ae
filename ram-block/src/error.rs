//! The crate's one error type.

use std::io;

/// Errors of this crate. Guest-triggered errors (lookups and translations) carry only
/// numbers, so that a guest probing bad addresses costs no allocation; placement and
/// mapping errors name the block.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No RAM block maps the guest address (a hole: MMIO, the PCI hole, or nothing).
    #[error("guest address {addr:#x} is not RAM")]
    NotRam {
        /// The guest address looked up.
        addr: u64,
    },
    /// The guest range starts in a block but does not end in it (it runs into the next
    /// block, a hole, or past the top of the address space).
    #[error(
        "guest range {addr:#x} + {len:#x} bytes leaves the RAM block {block_start:#x}..={block_last:#x}"
    )]
    RangeLeavesBlock {
        /// The first guest address of the range.
        addr: u64,
        /// The length of the range in bytes.
        len: u64,
        /// The block's first guest address.
        block_start: u64,
        /// The block's last guest address (inclusive).
        block_last: u64,
    },
    /// A block of size zero.
    #[error("RAM block {name:?} has size 0")]
    EmptyBlock {
        /// The block's name.
        name: String,
    },
    /// `start + size` runs past the top of the 64-bit guest address space.
    #[error(
        "RAM block {name:?} at {start:#x} with size {size:#x} runs past the top of the guest address space"
    )]
    PastTopOfAddressSpace {
        /// The block's name.
        name: String,
        /// The guest address asked for.
        start: u64,
        /// The size asked for.
        size: u64,
    },
    /// The block would overlap a block already in the map.
    #[error(
        "RAM block {name:?} at {start:#x}..={last:#x} overlaps block {other:?} at {other_start:#x}..={other_last:#x}"
    )]
    Overlap {
        /// The new block's name.
        name: String,
        /// The new block's first guest address.
        start: u64,
        /// The new block's last guest address.
        last: u64,
        /// The name of the block already placed there.
        other: String,
        /// That block's first guest address.
        other_start: u64,
        /// That block's last guest address.
        other_last: u64,
    },
    /// A block with the same name is already in the map (names identify blocks, as
    /// QEMU's `idstr` does).
    #[error("a RAM block named {name:?} is already in the map")]
    DuplicateName {
        /// The name in use.
        name: String,
    },
    /// `remove` found no block starting at the address.
    #[error("no RAM block starts at guest address {start:#x}")]
    NoSuchBlock {
        /// The guest address given.
        start: u64,
    },
    /// The size does not fit the host (larger than `isize::MAX` or the address space).
    #[error("RAM block {name:?}: size {size:#x} cannot be mapped on this host")]
    TooLarge {
        /// The block's name.
        name: String,
        /// The size asked for.
        size: u64,
    },
    /// A huge-page block whose size is not a multiple of the huge page size.
    #[error(
        "RAM block {name:?}: size {size:#x} is not a multiple of the huge page size {huge_page_size:#x}"
    )]
    HugePageMisaligned {
        /// The block's name.
        name: String,
        /// The size asked for.
        size: u64,
        /// The system's default huge page size.
        huge_page_size: u64,
    },
    /// Huge pages were asked for but the kernel has none to give.
    #[error(
        "RAM block {name:?}: no huge pages for {size:#x} bytes ({free} free of {total} configured); \
         reserve some, e.g. `sysctl vm.nr_hugepages=N`"
    )]
    HugePagesUnavailable {
        /// The block's name.
        name: String,
        /// The size asked for.
        size: u64,
        /// `HugePages_Free` from `/proc/meminfo`.
        free: u64,
        /// `HugePages_Total` from `/proc/meminfo`.
        total: u64,
    },
    /// A file offset that `mmap` cannot take (not page aligned, or too large).
    #[error(
        "RAM block {name:?}: file offset {offset:#x} is not a multiple of the page size {page_size:#x} (or exceeds i64::MAX)"
    )]
    BadFileOffset {
        /// The block's name.
        name: String,
        /// The offset given.
        offset: u64,
        /// The host page size.
        page_size: u64,
    },
    /// The file is shorter than `offset + size`: touching the tail would raise SIGBUS.
    #[error(
        "RAM block {name:?}: file has {file_size:#x} bytes, the block needs {needed:#x} (offset + size)"
    )]
    FileTooSmall {
        /// The block's name.
        name: String,
        /// The file's size.
        file_size: u64,
        /// `offset + size`.
        needed: u64,
    },
    /// A peer's file sealed against writes (`F_SEAL_WRITE`, `F_SEAL_FUTURE_WRITE`):
    /// guest RAM must be writable.
    #[error("RAM block {name:?}: the file is sealed against writes")]
    SealedAgainstWrites {
        /// The block's name.
        name: String,
    },
    /// A system call failed while creating the block's memory.
    #[error("RAM block {name:?}: {op} failed: {source}")]
    Os {
        /// The block's name.
        name: String,
        /// The operation (`mmap`, `memfd_create`, `ftruncate`, ...).
        op: &'static str,
        /// The error the kernel returned.
        source: io::Error,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
