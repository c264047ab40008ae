//! One queue, served on its iothread.
//!
//! The worker lives in its iothread (an `Rc` in a thread-local table, reached by id from
//! `start`/`stop`, which run there through the queue set's operation chain). A kick pops
//! every available chain, has the device's [`QueueHandler`] parse and start it; the
//! request's [`Completion`] adds the used entry and signals the driver if it wants it
//! (EVENT_IDX), once per loop iteration.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use aio_context::{AioContext, EventNotifier};
use ram_block::{RamBlocks, RamList, RamMemory};
use slab::Slab;
use virtio_queue::{Queue, QueueT};

use crate::VirtioInterrupt;

thread_local! {
    static WORKERS: RefCell<HashMap<u64, Rc<dyn AnyWorker>>> = RefCell::new(HashMap::new());
}

/// One descriptor of a chain: guest address, length, device-writable. Every field
/// comes from the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Desc {
    /// Guest address.
    pub addr: u64,
    /// Length.
    pub len: u32,
    /// Device-writable (the driver reads it back).
    pub write: bool,
}

/// A request in flight that a queue stop may have to cancel (one parked by a
/// `werror`/`rerror=stop` policy waits for a resume that may never come).
pub trait InFlight: Clone + 'static {
    /// Whether the request is parked (waiting for a resume, not for I/O).
    fn is_parked(&self) -> bool;
    /// Cancels the request: its completion runs (with an error).
    fn cancel(&self);
}

/// What a device does with the chains of one queue. Built by the device for each
/// queue start and moved to the queue's iothread, where it stays.
pub trait QueueHandler: Send + 'static {
    /// A parsed chain.
    type Request;
    /// What a started request leaves to track (see [`InFlight`]).
    type InFlight: InFlight;
    /// Parses one chain (untrusted descriptors, already walked by virtio-queue).
    fn parse(&self, mem: &RamBlocks, descs: &[Desc]) -> Self::Request;
    /// Starts `request` on `ctx`. `done` must be completed exactly once, now or later
    /// (dropping it returns nothing to the driver). Returns what to track while the
    /// request is in flight, or `None` if it completed already or cannot be parked.
    fn start(
        &self,
        ctx: &AioContext,
        request: Self::Request,
        done: Completion,
    ) -> Option<Self::InFlight>;
}

/// The device's side of one chain in flight: completing it returns the chain to the
/// driver (the used entry) and schedules the driver's notification.
pub struct Completion {
    worker: Rc<dyn AnyWorker>,
    slot: usize,
    head: u16,
}

impl Completion {
    /// The guest memory (a read section while the view lives).
    pub fn memory(&self) -> RamMemory {
        self.worker.memory()
    }

    /// Returns the chain with `used_len` bytes written by the device.
    pub fn complete(self, used_len: u32) {
        self.worker.complete(self.slot, self.head, used_len);
    }
}

/// What the thread-local table, the notification BH and completions reach a worker by.
trait AnyWorker {
    fn memory(&self) -> RamMemory;
    fn complete(&self, slot: usize, head: u16, used_len: u32);
    fn flush_notify(&self);
    fn stop(self: Rc<Self>) -> Option<Queue>;
    fn process_now(self: Rc<Self>);
}

/// Pops and starts every chain the driver made available on the running queue `id`
/// now, as its kick would; nothing if that queue does not run on this thread.
pub(crate) fn process_now(id: u64) {
    if let Some(w) = WORKERS.with(|m| m.borrow().get(&id).cloned()) {
        w.process_now();
    }
}

struct Worker<H: QueueHandler> {
    /// "virtio-blk": names the device in messages.
    name: &'static str,
    index: u16,
    memory: RamList,
    interrupt: Arc<dyn VirtioInterrupt>,
    ctx: AioContext,
    handler: H,
    state: RefCell<State<H::InFlight>>,
    /// The chains popped by one `process` round (kept for its capacity: no allocation
    /// per kick or per chain on the hot path).
    chains: RefCell<Vec<(u16, H::Request)>>,
}

struct State<F> {
    queue: Queue,
    kick: EventNotifier,
    /// Requests in flight (to cancel parked ones on stop).
    in_flight: Slab<Option<F>>,
    stopping: bool,
    /// The driver corrupted the ring: ignore it until the queue is restarted.
    broken: bool,
    /// Signals the used buffers of one loop iteration at once.
    notify_bh: aio_context::Bh,
    notify_scheduled: bool,
}

/// What [`start`] needs besides the handler.
pub(crate) struct StartArgs {
    pub(crate) name: &'static str,
    pub(crate) id: u64,
    pub(crate) index: u16,
    pub(crate) queue: Queue,
    pub(crate) kick: EventNotifier,
    pub(crate) memory: RamList,
    pub(crate) interrupt: Arc<dyn VirtioInterrupt>,
}

/// Creates the worker on the current (iothread) thread and watches its kick.
pub(crate) fn start<H: QueueHandler>(args: StartArgs, handler: H) -> std::io::Result<()> {
    let ctx = AioContext::current().ok_or_else(|| std::io::Error::other("not on an iothread"))?;
    let id = args.id;
    let worker = Rc::new(Worker {
        name: args.name,
        index: args.index,
        memory: args.memory,
        interrupt: args.interrupt,
        ctx: ctx.clone(),
        handler,
        state: RefCell::new(State {
            queue: args.queue,
            kick: args.kick,
            in_flight: Slab::new(),
            stopping: false,
            broken: false,
            // The BH is Send: it finds its worker by id in this thread's table.
            notify_bh: ctx.new_bh(move || {
                if let Some(w) = WORKERS.with(|m| m.borrow().get(&id).cloned()) {
                    w.flush_notify();
                }
            }),
            notify_scheduled: false,
        }),
        chains: RefCell::new(Vec::new()),
    });
    let w = worker.clone();
    let handler = Box::new(move || {
        w.state.borrow().kick.test_and_clear();
        process(&w);
    });
    ctx.set_event_notifier(&worker.state.borrow().kick, Some(handler))?;
    WORKERS.with(|m| m.borrow_mut().insert(id, worker.clone()));
    // Buffers may have been made available before the kick was watched.
    process(&worker);
    Ok(())
}

/// Stops the worker `id` on the current thread: no new chains, parked requests
/// cancelled, in-flight ones completed; returns its queue.
pub(crate) fn stop(id: u64) -> Option<Queue> {
    let worker = WORKERS.with(|m| m.borrow_mut().remove(&id))?;
    worker.stop()
}

/// Pops and starts every available request.
fn process<H: QueueHandler>(worker: &Rc<Worker<H>>) {
    // The avail index of the last round that popped nothing (see below).
    let mut empty_round_at = None;
    loop {
        let mut st = worker.state.borrow_mut();
        if st.stopping || st.broken {
            return;
        }
        let mem = worker.memory.memory();
        let _ = st.queue.disable_notification(&*mem);
        let mut chains = std::mem::take(&mut *worker.chains.borrow_mut());
        let mut bad_head = None;
        while let Some(chain) = st.queue.pop_descriptor_chain(mem.clone()) {
            let head = chain.head_index();
            if head >= st.queue.size() {
                // virtio-queue pops an avail entry naming a descriptor past the table
                // as an empty chain; QEMU's virtqueue_get_head calls the device broken
                // ("Guest says index %u is available"), and so do we.
                bad_head = Some(head);
                break;
            }
            let descs: smallvec::SmallVec<[Desc; 8]> = chain
                .map(|d| Desc {
                    addr: d.addr().0,
                    len: d.len(),
                    write: d.is_write_only(),
                })
                .collect();
            chains.push((head, worker.handler.parse(&mem, &descs)));
        }
        if let Some(head) = bad_head {
            st.broken = true;
            tracing::warn!(
                "{}: queue {}: guest says descriptor {head} is available (queue size {}); queue stopped until reset",
                worker.name,
                worker.index,
                st.queue.size()
            );
            drop(mem);
            drop(st);
            // The chains popped before the bad entry are well-formed: they run.
            dispatch_all(worker, chains);
            worker.interrupt.device_error();
            return;
        }
        let more = st.queue.enable_notification(&*mem).unwrap_or(false);
        if more && chains.is_empty() {
            // Nothing popped, yet the avail index moved: either the driver published a
            // chain after our last pop (a race: go round again), or it moved the index
            // by more than the queue size, which no pop can consume (QEMU's virtio_error
            // "Guest moved avail index"), or virtio-queue cannot pop the entry at all
            // (it refuses an avail ring at address 0, for one): nothing popped twice at
            // the same index. Retrying those would spin forever, so the queue is broken
            // until the driver resets the device.
            let avail = st
                .queue
                .avail_idx(&*mem, Ordering::Acquire)
                .map(|a| a.0)
                .ok();
            let pending = avail.map(|a| a.wrapping_sub(st.queue.next_avail()));
            let stuck = avail.is_some() && empty_round_at == avail;
            empty_round_at = avail;
            if stuck || pending.is_none_or(|p| p > st.queue.size()) {
                st.broken = true;
                tracing::warn!(
                    "{}: queue {}: avail index out of range or entry unreadable; queue stopped until reset",
                    worker.name,
                    worker.index
                );
                drop(mem);
                drop(st);
                worker.interrupt.device_error();
                return;
            }
        }
        drop(mem);
        drop(st);
        dispatch_all(worker, chains);
        if !more {
            return;
        }
    }
}

/// Starts the requests of one round, then keeps the vector (for its capacity).
fn dispatch_all<H: QueueHandler>(worker: &Rc<Worker<H>>, mut chains: Vec<(u16, H::Request)>) {
    for (head, req) in chains.drain(..) {
        dispatch(worker, head, req);
    }
    *worker.chains.borrow_mut() = chains;
}

/// Starts one request, tracking it while it is in flight.
fn dispatch<H: QueueHandler>(worker: &Rc<Worker<H>>, head: u16, req: H::Request) {
    let slot = worker.state.borrow_mut().in_flight.insert(None);
    let done = Completion {
        worker: worker.clone(),
        slot,
        head,
    };
    // No borrow is held: the request may complete inside `start`.
    if let Some(handle) = worker.handler.start(&worker.ctx, req, done) {
        if let Some(entry) = worker.state.borrow_mut().in_flight.get_mut(slot) {
            *entry = Some(handle);
        }
    }
}

impl<H: QueueHandler> AnyWorker for Worker<H> {
    fn memory(&self) -> RamMemory {
        self.memory.memory()
    }

    /// Returns the chain to the driver and schedules its notification.
    fn complete(&self, slot: usize, head: u16, used_len: u32) {
        let mut st = self.state.borrow_mut();
        st.in_flight.try_remove(slot);
        let mem = self.memory.memory();
        if st.queue.add_used(&*mem, head, used_len).is_err() {
            return;
        }
        // One interrupt per loop iteration, not per completion (QEMU's
        // virtio_notify through a BH): the BH runs after this round of completions.
        if !st.notify_scheduled {
            st.notify_scheduled = true;
            st.notify_bh.schedule();
        }
    }

    /// Signals the driver once for the completions since the last call, if it wants
    /// it (EVENT_IDX decides over all of them at once).
    fn flush_notify(&self) {
        let mut st = self.state.borrow_mut();
        st.notify_scheduled = false;
        let mem = self.memory.memory();
        if st.queue.needs_notification(&*mem).unwrap_or(true) {
            drop(mem);
            drop(st);
            self.interrupt.notify_queue(self.index);
        }
    }

    fn process_now(self: Rc<Self>) {
        process(&self);
    }

    fn stop(self: Rc<Self>) -> Option<Queue> {
        rcu::assert_may_block(&format!("{} queue drain", self.name));
        {
            let mut st = self.state.borrow_mut();
            st.stopping = true;
            self.ctx
                .remove_fd_handler(std::os::fd::AsRawFd::as_raw_fd(&st.kick));
        }
        // AIO_WAIT_WHILE: drain our own requests (this runs inside the iothread's loop).
        // A request parked by werror/rerror=stop would wait for a resume that may never
        // come, so parked ones are cancelled, on every round: one that fails while we
        // drain parks too (QEMU's reset drains, then drops its queue of stopped requests).
        loop {
            let parked: Vec<H::InFlight> = {
                let st = self.state.borrow();
                if st.in_flight.is_empty() {
                    break;
                }
                st.in_flight
                    .iter()
                    .filter_map(|(_, r)| r.clone())
                    .filter(|r| r.is_parked())
                    .collect()
            };
            for r in parked {
                r.cancel();
            }
            self.ctx.poll(true);
        }
        // The last completions' interrupt (the BH cannot find the worker any more).
        self.state.borrow().notify_bh.delete();
        if self.state.borrow().notify_scheduled {
            self.flush_notify();
        }
        let mut st = self.state.borrow_mut();
        let fresh = Queue::new(st.queue.max_size()).ok()?;
        Some(std::mem::replace(&mut st.queue, fresh))
    }
}
