//! Block backends on io_uring, scatter-gather DMA over guest RAM, the bounce-buffer
//! fallback, cancel in every phase, and QEMU's `rerror`/`werror` policy.
//!
//! The layers, bottom up:
//! - [`BlockBackend`]: a narrow trait (read and write, vectored; flush; discard;
//!   write-zeroes) whose completions run in the submitting `AioContext`.
//!   [`FileBackend`] implements it for raw images and block devices on io_uring,
//!   buffered or O_DIRECT; [`FaultInjector`] wraps any backend and fails chosen requests
//!   (QEMU's blkdebug).
//! - [`dma_rw`]: a transfer between a guest [`SgList`] and a backend, mapping RAM in
//!   place (ram-block) and other memory through map-client's bounce buffer, waiting for
//!   the bounce buffer as a map-client BH, cancellable in every phase ([`DmaRequest`]).
//! - [`Drive`]: the device's view: DMA and the other operations under an
//!   [`ErrorPolicy`], with io-status, `BLOCK_IO_ERROR`, stopping the VM through
//!   `runstate`, and restarting parked requests from a BH on resume.
//!
//! Seeds: 000 (a DMA cancel racing the map-client notification: [`DmaRequest::cancel`]
//! unregisters the waiter and deletes its BH, so a concurrent release never runs it) and
//! 002 (restart after a write error runs from a BH, not inside the runstate handler).
//!
//! ```no_run
//! use std::sync::Arc;
//! use aio_context::AioContext;
//! use block_dma::{BlockBackend, DmaDirection, DmaMemory, Drive, ErrorPolicy, FileBackend, FileOptions, SgList};
//! use ram_block::{Backing, RamBlock, RamList};
//! use vm_memory::GuestAddress;
//!
//! let ctx = AioContext::new()?;
//! let ram = RamList::new();
//! ram.add(RamBlock::new("ram", GuestAddress(0), 1 << 20, Backing::Memfd { huge_pages: false })?)?;
//! let file = FileBackend::open(&FileOptions::new("disk.img").direct(true))?;
//! let drive = Drive::new("disk0", "file0", Arc::new(file), ErrorPolicy::default(), None);
//! let sg: SgList = [(0x1000, 4096)].into_iter().collect();
//! let _req = drive.dma(&ctx, &DmaMemory::new(ram), DmaDirection::Read, 0, sg, Box::new(|res| {
//!     println!("read: {res:?}");
//! }));
//! while ctx.poll(true) {}
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
#![deny(missing_docs)]

mod backend;
mod buffers;
mod copy_offload;
mod dma;
mod drain;
mod error;
mod fault;
mod file;
mod local;
mod memory;
mod policy;
mod sglist;

pub use backend::{
    BackendInfo, BlockBackend, BlockOp, Done, OpKind, Ticket, check_op, check_op_sized,
};
pub use buffers::{AlignedBuf, IoBuffers};
pub use dma::{DmaDirection, DmaDone, DmaRequest, SECTOR_SIZE, dma_rw, stray_waiter_runs};
pub use error::{Errno, OpenError};
pub use fault::{FaultInjector, FaultRule};
pub use file::{FileBackend, FileOptions};
pub use memory::{DirectRange, DmaMemory, MmioAccess};
pub use policy::{
    BlockIoError, Drive, DriveRequest, ErrorAction, ErrorPolicy, IoStatus, TakenAction,
};
pub use sglist::{SgEntry, SgList};
