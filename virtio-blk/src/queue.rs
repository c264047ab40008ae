//! The virtio-blk side of one queue: parsing a chain into a request and running it on
//! the drive; the generic runner (`virtio_core::QueueSet`) pops the chains, tracks
//! them and signals the driver.

use aio_context::AioContext;
use block_dma::{BlockOp, DmaDirection, DmaMemory, Drive, DriveRequest, Errno, SgList};
use ram_block::{RamBlocks, RamList};
use virtio_core::{Completion, Desc, InFlight, QueueHandler};
use vm_memory::{Bytes, GuestAddress};

use super::config::*;
use super::request::{Action, DiskLimits, Request, parse};

/// What a queue needs to know about its device.
#[derive(Clone)]
pub(super) struct DeviceInfo {
    pub(super) drive: Drive,
    pub(super) limits: DiskLimits,
    pub(super) serial: [u8; ID_BYTES],
}

/// One queue's request handling.
pub(super) struct BlkQueue {
    device: DeviceInfo,
    dma: DmaMemory,
}

impl BlkQueue {
    pub(super) fn new(device: DeviceInfo, memory: &RamList) -> BlkQueue {
        BlkQueue {
            device,
            dma: DmaMemory::new(memory.clone()),
        }
    }
}

/// A drive request in flight (a parked one is cancelled when the queue stops).
#[derive(Clone)]
pub(super) struct BlkInFlight(DriveRequest);

impl InFlight for BlkInFlight {
    fn is_parked(&self) -> bool {
        self.0.is_parked()
    }

    fn cancel(&self) {
        self.0.cancel();
    }
}

impl QueueHandler for BlkQueue {
    type Request = Request;
    type InFlight = BlkInFlight;

    fn parse(&self, mem: &RamBlocks, descs: &[Desc]) -> Request {
        // The size now: a `block_resize` moves the end requests are checked against.
        let limits = DiskLimits {
            size: self.device.drive.backend().size() & !511,
            ..self.device.limits
        };
        parse(mem, descs, &limits)
    }

    fn start(&self, ctx: &AioContext, req: Request, done: Completion) -> Option<BlkInFlight> {
        let drive = &self.device.drive;
        let dma = &self.dma;
        let (status, writable) = (req.status, req.writable);
        let finish = move |done: Completion, st: u8| complete(done, status, writable, st);
        let handle = match req.action {
            Action::Status(st) => {
                finish(done, st);
                return None;
            }
            Action::GetId { data } => {
                let st = write_id(&done.memory(), &self.device.serial, &data);
                finish(done, st);
                return None;
            }
            Action::Read { data, .. } | Action::Write { data, .. } if data.is_empty() => {
                finish(done, S_OK);
                return None;
            }
            Action::Read { offset, data } => drive.dma(
                ctx,
                dma,
                DmaDirection::Read,
                offset,
                data,
                status_of(move |st| finish(done, st)),
            ),
            Action::Write { offset, data } => drive.dma(
                ctx,
                dma,
                DmaDirection::Write,
                offset,
                data,
                status_of(move |st| finish(done, st)),
            ),
            Action::Flush => drive.op(
                ctx,
                || BlockOp::Flush,
                status_of(move |st| finish(done, st)),
            ),
            Action::Discard { offset, len } => drive.op(
                ctx,
                move || BlockOp::Discard { offset, len },
                status_of(move |st| finish(done, st)),
            ),
            Action::WriteZeroes { offset, len, unmap } => drive.op(
                ctx,
                move || BlockOp::WriteZeroes { offset, len, unmap },
                status_of(move |st| finish(done, st)),
            ),
        };
        Some(BlkInFlight(handle))
    }
}

/// Copies the device ID into the GET_ID buffers.
fn write_id(mem: &RamBlocks, serial: &[u8; ID_BYTES], data: &SgList) -> u8 {
    let mut done = 0usize;
    for e in data.entries() {
        let n = e.len as usize;
        if mem
            .write_slice(&serial[done..done + n], GuestAddress(e.addr))
            .is_err()
        {
            return S_IOERR;
        }
        done += n;
    }
    S_OK
}

/// Maps a drive result to a virtio status.
fn status_of(finish: impl FnOnce(u8) + 'static) -> block_dma::DmaDone {
    Box::new(move |res: Result<u64, Errno>| {
        finish(match res {
            Ok(_) => S_OK,
            Err(e) if e == Errno::EOPNOTSUPP => S_UNSUPP,
            Err(_) => S_IOERR,
        })
    })
}

/// Writes the status and returns the chain to the driver.
fn complete(done: Completion, status: Option<u64>, writable: u32, st: u8) {
    let used_len = match status {
        // A failed status write (memory unplugged) still returns the chain.
        Some(addr) if done.memory().write_obj(st, GuestAddress(addr)).is_ok() => writable,
        _ => 0,
    };
    done.complete(used_len);
}
