//! One virtio-blk queue, served on its iothread.
//!
//! The worker lives in its iothread (an `Rc` in a thread-local table, reached by id from
//! `start`/`stop`, which run there through `IoThread::run`). A kick pops every available
//! chain, parses it, and starts a block-dma request; the completion writes the status
//! byte, adds the used entry and signals the driver if it wants it (EVENT_IDX).

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use aio_context::{AioContext, EventNotifier};
use block_dma::{BlockOp, DmaDirection, DmaMemory, Drive, DriveRequest, Errno};
use ram_block::RamList;
use slab::Slab;
use virtio_queue::{Queue, QueueT};

use vm_memory::{Bytes, GuestAddress};

use super::config::*;
use super::request::{Action, Desc, DiskLimits, Request, parse};
use crate::virtio::VirtioInterrupt;

thread_local! {
    static WORKERS: RefCell<HashMap<u64, Rc<RefCell<Worker>>>> = RefCell::new(HashMap::new());
}

/// What a worker needs to know about its device.
#[derive(Clone)]
pub(super) struct DeviceInfo {
    pub(super) drive: Drive,
    pub(super) limits: DiskLimits,
    pub(super) serial: [u8; ID_BYTES],
}

pub(super) struct Worker {
    index: u16,
    queue: Queue,
    kick: EventNotifier,
    memory: RamList,
    dma: DmaMemory,
    interrupt: Arc<dyn VirtioInterrupt>,
    device: DeviceInfo,
    ctx: AioContext,
    /// Requests in flight (to cancel parked ones on stop).
    in_flight: Slab<Option<DriveRequest>>,
    stopping: bool,
    /// The driver corrupted the ring: ignore it until the queue is restarted.
    broken: bool,
    /// The chains popped by one `process` round (kept for its capacity).
    chains: Vec<(u16, Request)>,
    /// Signals the used buffers of one loop iteration at once.
    notify_bh: aio_context::Bh,
    notify_scheduled: bool,
}

/// Creates the worker on the current (iothread) thread and watches its kick.
pub(super) fn start(
    id: u64,
    index: u16,
    queue: Queue,
    kick: EventNotifier,
    memory: RamList,
    interrupt: Arc<dyn VirtioInterrupt>,
    device: DeviceInfo,
) -> std::io::Result<()> {
    let ctx = AioContext::current().ok_or_else(|| std::io::Error::other("not on an iothread"))?;
    let worker = Rc::new(RefCell::new(Worker {
        index,
        queue,
        kick,
        dma: DmaMemory::new(memory.clone()),
        memory,
        interrupt,
        device,
        ctx: ctx.clone(),
        in_flight: Slab::new(),
        stopping: false,
        broken: false,
        // The BH is Send: it finds its worker by id in this thread's table.
        notify_bh: ctx.new_bh(move || {
            if let Some(w) = WORKERS.with(|m| m.borrow().get(&id).cloned()) {
                flush_notify(&w);
            }
        }),
        notify_scheduled: false,
        chains: Vec::new(),
    }));
    let w = worker.clone();
    let handler = Box::new(move || {
        w.borrow().kick.test_and_clear();
        process(&w);
    });
    {
        let wb = worker.borrow();
        ctx.set_event_notifier(&wb.kick, Some(handler))?;
    }
    WORKERS.with(|m| m.borrow_mut().insert(id, worker.clone()));
    // Buffers may have been made available before the kick was watched.
    process(&worker);
    Ok(())
}

/// Stops the worker `id` on the current thread: no new chains, parked requests
/// cancelled, in-flight ones completed; returns its queue.
pub(super) fn stop(id: u64) -> Option<Queue> {
    rcu::assert_may_block("virtio-blk queue drain");
    let worker = WORKERS.with(|m| m.borrow_mut().remove(&id))?;
    let ctx = {
        let mut w = worker.borrow_mut();
        w.stopping = true;
        w.ctx
            .remove_fd_handler(std::os::fd::AsRawFd::as_raw_fd(&w.kick));
        w.ctx.clone()
    };
    // AIO_WAIT_WHILE: drain our own requests (this runs inside the iothread's loop).
    // A request parked by werror/rerror=stop would wait for a resume that may never
    // come, so parked ones are cancelled, on every round: one that fails while we drain
    // parks too (QEMU's reset drains, then drops its queue of stopped requests).
    loop {
        let parked: Vec<DriveRequest> = {
            let w = worker.borrow();
            if w.in_flight.is_empty() {
                break;
            }
            w.in_flight
                .iter()
                .filter_map(|(_, r)| r.clone())
                .filter(|r| r.is_parked())
                .collect()
        };
        for r in parked {
            r.cancel();
        }
        ctx.poll(true);
    }
    // The last completions' interrupt (the BH cannot find the worker any more).
    worker.borrow().notify_bh.delete();
    if worker.borrow().notify_scheduled {
        flush_notify(&worker);
    }
    let mut w = worker.borrow_mut();
    let fresh = Queue::new(w.queue.max_size()).ok()?;
    Some(std::mem::replace(&mut w.queue, fresh))
}

/// Pops and starts every available request.
fn process(worker: &Rc<RefCell<Worker>>) {
    loop {
        let mut w = worker.borrow_mut();
        if w.stopping || w.broken {
            return;
        }
        let mem = w.memory.memory();
        let _ = w.queue.disable_notification(&*mem);
        // Reused across kicks: no allocation per kick or per chain on the hot path.
        let mut chains = std::mem::take(&mut w.chains);
        while let Some(chain) = w.queue.pop_descriptor_chain(mem.clone()) {
            let head = chain.head_index();
            let descs: smallvec::SmallVec<[Desc; 8]> = chain
                .map(|d| Desc {
                    addr: d.addr().0,
                    len: d.len(),
                    write: d.is_write_only(),
                })
                .collect();
            chains.push((head, parse(&*mem, &descs, &w.device.limits)));
        }
        let more = w.queue.enable_notification(&*mem).unwrap_or(false);
        if more && chains.is_empty() {
            // Nothing popped, yet the avail index moved: either the driver published a
            // chain after our last pop (a race: go round again), or it moved the index
            // by more than the queue size, which no pop can consume (QEMU's virtio_error
            // "Guest moved avail index"): retrying would spin forever, so the queue is
            // broken until the driver resets the device.
            let avail = w.queue.avail_idx(&*mem, Ordering::Acquire).map(|a| a.0);
            let pending = avail.map(|a| a.wrapping_sub(w.queue.next_avail()));
            if pending.is_err() || pending.is_ok_and(|p| p > w.queue.size()) {
                w.broken = true;
                eprintln!(
                    "virtio-blk: queue {}: avail index out of range; queue stopped until reset",
                    w.index
                );
                let interrupt = w.interrupt.clone();
                drop(mem);
                drop(w);
                interrupt.device_error();
                return;
            }
        }
        drop(mem);
        drop(w);
        for (head, req) in chains.drain(..) {
            dispatch(worker, head, req);
        }
        worker.borrow_mut().chains = chains;
        if !more {
            return;
        }
    }
}

fn dispatch(worker: &Rc<RefCell<Worker>>, head: u16, req: Request) {
    let (drive, ctx, dma) = {
        let w = worker.borrow();
        (w.device.drive.clone(), w.ctx.clone(), w.dma.clone())
    };
    let slot = worker.borrow_mut().in_flight.insert(None);
    let w2 = worker.clone();
    let status = req.status;
    let writable = req.writable;
    let finish = move |st: u8| complete(&w2, slot, head, status, writable, st);
    let handle = match req.action {
        Action::Status(st) => return finish(st),
        Action::GetId { data } => {
            let serial = worker.borrow().device.serial;
            let mem = worker.borrow().memory.memory();
            let mut done = 0usize;
            for e in data.entries() {
                let n = e.len as usize;
                if mem
                    .write_slice(&serial[done..done + n], GuestAddress(e.addr))
                    .is_err()
                {
                    return finish(S_IOERR);
                }
                done += n;
            }
            return finish(S_OK);
        }
        Action::Read { offset, data } | Action::Write { offset, data } if data.is_empty() => {
            let _ = offset;
            return finish(S_OK);
        }
        Action::Read { offset, data } => drive.dma(
            &ctx,
            &dma,
            DmaDirection::Read,
            offset,
            data,
            status_of(finish),
        ),
        Action::Write { offset, data } => drive.dma(
            &ctx,
            &dma,
            DmaDirection::Write,
            offset,
            data,
            status_of(finish),
        ),
        Action::Flush => drive.op(&ctx, || BlockOp::Flush, status_of(finish)),
        Action::Discard { offset, len } => drive.op(
            &ctx,
            move || BlockOp::Discard { offset, len },
            status_of(finish),
        ),
        Action::WriteZeroes { offset, len, unmap } => drive.op(
            &ctx,
            move || BlockOp::WriteZeroes { offset, len, unmap },
            status_of(finish),
        ),
    };
    if let Some(entry) = worker.borrow_mut().in_flight.get_mut(slot) {
        *entry = Some(handle);
    }
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

/// Writes the status, returns the chain to the driver, and signals it if needed.
fn complete(
    worker: &Rc<RefCell<Worker>>,
    slot: usize,
    head: u16,
    status: Option<u64>,
    writable: u32,
    st: u8,
) {
    let mut w = worker.borrow_mut();
    w.in_flight.try_remove(slot);
    let mem = w.memory.memory();
    let used_len = match status {
        // A failed status write (memory unplugged) still returns the chain.
        Some(addr) if mem.write_obj(st, GuestAddress(addr)).is_ok() => writable,
        _ => 0,
    };
    if w.queue.add_used(&*mem, head, used_len).is_err() {
        return;
    }
    // One interrupt per loop iteration, not per completion (QEMU's
    // virtio_notify through a BH): the BH runs after this round of completions.
    if !w.notify_scheduled {
        w.notify_scheduled = true;
        w.notify_bh.schedule();
    }
}

/// Signals the driver once for the completions since the last call, if it wants it
/// (EVENT_IDX decides over all of them at once).
fn flush_notify(worker: &Rc<RefCell<Worker>>) {
    let mut w = worker.borrow_mut();
    w.notify_scheduled = false;
    let mem = w.memory.memory();
    if w.queue.needs_notification(&*mem).unwrap_or(true) {
        let (interrupt, index) = (w.interrupt.clone(), w.index);
        drop(mem);
        drop(w);
        interrupt.notify_queue(index);
    }
}
