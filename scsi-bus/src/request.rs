//! What a transport hands a SCSI device (a CDB and a data buffer in guest memory) and
//! what it gets back (status, sense, bytes transferred).

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use block_dma::{DmaMemory, DriveRequest, SgList};
use ram_block::RamBlocks;
use smallvec::SmallVec;
use vm_memory::{Bytes, GuestAddress};

use crate::sense::{Sense, status};

/// The largest CDB this crate accepts (virtio-scsi's default `cdb_size`).
pub const MAX_CDB: usize = 32;

/// Which way a command's data moves.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DataDirection {
    /// No data phase.
    None,
    /// Device to initiator (data-in: READ, INQUIRY).
    FromDevice,
    /// Initiator to device (data-out: WRITE, UNMAP parameter lists).
    ToDevice,
}

/// A command's data buffer: a scatter-gather list in guest memory.
#[derive(Clone, Debug)]
pub struct DataBuffer {
    /// The guest memory the list points into.
    pub mem: DmaMemory,
    /// The buffer (untrusted addresses and lengths: copies into and out of it are
    /// checked against guest RAM and fail cleanly).
    pub sg: SgList,
    /// Its direction.
    pub dir: DataDirection,
}

impl DataBuffer {
    /// Bytes in the buffer.
    pub fn len(&self) -> u64 {
        self.sg.len()
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.sg.is_empty()
    }

    /// The first `n` bytes of the list (all of it if shorter).
    pub fn prefix(&self, n: u64) -> SgList {
        let mut out = SgList::new();
        let mut left = n;
        for e in self.sg.entries() {
            if left == 0 {
                break;
            }
            let take = e.len.min(left);
            out.push(e.addr, take);
            left -= take;
        }
        out
    }

    /// Copies `data` into the start of a data-in buffer (as much as fits); returns the
    /// bytes copied, `None` if the buffer is not data-in or lies outside guest RAM.
    pub fn write_in(&self, data: &[u8]) -> Option<u64> {
        if data.is_empty() {
            return Some(0);
        }
        if self.dir != DataDirection::FromDevice {
            return None;
        }
        write_sg(&self.mem.ram().memory(), &self.sg, data)
    }

    /// Reads the first `len` bytes of a data-out buffer; `None` if it is not data-out,
    /// shorter than `len`, or outside guest RAM.
    pub fn read_out(&self, len: usize) -> Option<Vec<u8>> {
        if len == 0 {
            return Some(Vec::new());
        }
        if self.dir != DataDirection::ToDevice {
            return None;
        }
        read_sg(&self.mem.ram().memory(), &self.sg, len)
    }
}

/// Copies `data` into the start of `sg` in guest memory (as much as fits); returns the
/// bytes copied, or `None` if part of the list is not guest RAM.
pub fn write_sg(mem: &RamBlocks, sg: &SgList, data: &[u8]) -> Option<u64> {
    let mut done = 0usize;
    for e in sg.entries() {
        if done == data.len() {
            break;
        }
        let n = usize::try_from(e.len)
            .unwrap_or(usize::MAX)
            .min(data.len() - done);
        mem.write_slice(&data[done..done + n], GuestAddress(e.addr))
            .ok()?;
        done += n;
    }
    Some(done as u64)
}

/// The first `len` bytes of `sg` in guest memory; `None` if the list is shorter or
/// part of it is not guest RAM.
pub fn read_sg(mem: &RamBlocks, sg: &SgList, len: usize) -> Option<Vec<u8>> {
    let mut out = vec![0u8; len];
    read_sg_into(mem, sg, &mut out)?;
    Some(out)
}

/// Fills `out` from the start of `sg` in guest memory (no allocation); `None` if the
/// list is shorter or part of it is not guest RAM.
pub fn read_sg_into(mem: &RamBlocks, sg: &SgList, out: &mut [u8]) -> Option<()> {
    let len = out.len();
    if sg.len() < len as u64 {
        return None;
    }
    let mut done = 0usize;
    for e in sg.entries() {
        if done == len {
            break;
        }
        let n = usize::try_from(e.len).unwrap_or(usize::MAX).min(len - done);
        mem.read_slice(&mut out[done..done + n], GuestAddress(e.addr))
            .ok()?;
        done += n;
    }
    Some(())
}

/// One SCSI command as a transport hands it over.
#[derive(Clone, Debug)]
pub struct ScsiRequest {
    /// The CDB (at most [`MAX_CDB`] bytes; untrusted).
    pub cdb: SmallVec<[u8; MAX_CDB]>,
    /// The data buffer.
    pub data: DataBuffer,
}

/// How the transport should report the command, besides its SCSI status (virtio-scsi's
/// `response` field; QEMU's host status).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum HostStatus {
    /// Delivered; the SCSI status tells the outcome.
    Ok,
    /// The data buffer is smaller than the transfer the CDB asks for.
    Overrun,
    /// Aborted by a task management function (or a cancel).
    Aborted,
    /// Aborted by a LUN or target reset.
    Reset,
    /// No such target (or LUN being removed).
    BadTarget,
    /// Failed for another reason the initiator cannot fix (a bad buffer address).
    Failure,
}

/// The outcome of a command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScsiResponse {
    /// Transport-level outcome.
    pub host: HostStatus,
    /// SCSI status byte ([`status`]).
    pub status: u8,
    /// Sense data (empty unless CHECK CONDITION).
    pub sense: SmallVec<[u8; 18]>,
    /// Bytes of the data buffer moved (the residual is the buffer's length minus this).
    pub transferred: u64,
}

impl ScsiResponse {
    /// GOOD, `transferred` bytes moved.
    pub fn good(transferred: u64) -> ScsiResponse {
        ScsiResponse {
            host: HostStatus::Ok,
            status: status::GOOD,
            sense: SmallVec::new(),
            transferred,
        }
    }

    /// CHECK CONDITION with `sense` in descriptor (`descriptor`) or fixed format.
    pub fn check(sense: Sense, descriptor: bool) -> ScsiResponse {
        ScsiResponse {
            host: HostStatus::Ok,
            status: status::CHECK_CONDITION,
            sense: if descriptor {
                SmallVec::from_slice(&sense.descriptor())
            } else {
                SmallVec::from_slice(&sense.fixed())
            },
            transferred: 0,
        }
    }

    /// No SCSI status: the transport reports `host`.
    pub fn host(host: HostStatus) -> ScsiResponse {
        ScsiResponse {
            host,
            status: status::GOOD,
            sense: SmallVec::new(),
            transferred: 0,
        }
    }

    /// The sense condition, if any.
    pub fn sense(&self) -> Option<Sense> {
        Sense::decode(&self.sense)
    }
}

/// A transport's sink for many commands' responses: [`ScsiDone::sink`] names one command
/// by a token, so a transport that keeps its per-command state in a table of its own
/// (virtio-scsi: a slab per thread) completes commands with no allocation per command.
pub trait ScsiSink {
    /// Command `token` completed with `resp`.
    fn complete(&self, token: usize, resp: ScsiResponse);
    /// Command `token` was dropped without a response (its context went away): forget
    /// its state. The default does nothing.
    fn abandon(&self, _token: usize) {}
}

/// A command's completion; runs once, on the thread of the `AioContext` that submitted
/// it, possibly inside the submitting call (emulated commands complete at once).
///
/// Either a boxed closure ([`ScsiDone::new`], or `From` any closure) or a token for a
/// `'static` [`ScsiSink`] ([`ScsiDone::sink`]: the allocation-free fast path).
pub struct ScsiDone(DoneKind);

enum DoneKind {
    Boxed(Box<dyn FnOnce(ScsiResponse)>),
    Sink(&'static dyn ScsiSink, usize),
    Taken,
}

impl ScsiDone {
    /// A completion that runs `f`.
    pub fn new(f: impl FnOnce(ScsiResponse) + 'static) -> ScsiDone {
        ScsiDone(DoneKind::Boxed(Box::new(f)))
    }

    /// A completion that hands the response to `sink` with `token`.
    pub fn sink(sink: &'static dyn ScsiSink, token: usize) -> ScsiDone {
        ScsiDone(DoneKind::Sink(sink, token))
    }

    /// Delivers the response.
    pub fn complete(mut self, resp: ScsiResponse) {
        match std::mem::replace(&mut self.0, DoneKind::Taken) {
            DoneKind::Boxed(f) => f(resp),
            DoneKind::Sink(sink, token) => sink.complete(token, resp),
            DoneKind::Taken => {}
        }
    }
}

impl Drop for ScsiDone {
    fn drop(&mut self) {
        if let DoneKind::Sink(sink, token) = std::mem::replace(&mut self.0, DoneKind::Taken) {
            sink.abandon(token);
        }
    }
}

impl<F: FnOnce(ScsiResponse) + 'static> From<F> for ScsiDone {
    fn from(f: F) -> ScsiDone {
        ScsiDone::new(f)
    }
}

impl std::fmt::Debug for ScsiDone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            DoneKind::Boxed(_) => "ScsiDone(closure)",
            DoneKind::Sink(..) => "ScsiDone(sink)",
            DoneKind::Taken => "ScsiDone(taken)",
        })
    }
}

/// A command in flight, for task management: cancel it, or ask whether a `stop` error
/// policy parked it. Lives in its submitting context (not `Send`).
///
/// The handles are recycled through a small per-thread pool, so starting an I/O
/// command allocates none in steady state.
#[derive(Clone)]
pub struct ScsiInFlight(Rc<RefCell<Flight>>);

#[derive(Default)]
struct Flight {
    current: Option<DriveRequest>,
    canceled: Option<HostStatus>,
    finished: bool,
}

/// Handles kept for reuse per thread (at most this many).
const FLIGHT_POOL: usize = 256;

thread_local! {
    static FLIGHTS: RefCell<Vec<Rc<RefCell<Flight>>>> = const { RefCell::new(Vec::new()) };
}

impl Default for ScsiInFlight {
    fn default() -> Self {
        let reused = FLIGHTS.try_with(|p| p.borrow_mut().pop()).ok().flatten();
        ScsiInFlight(reused.unwrap_or_default())
    }
}

impl ScsiInFlight {
    /// Whether the command has completed (its response was delivered).
    pub fn is_finished(&self) -> bool {
        self.0.borrow().finished
    }

    /// The command completed: marks it, and returns the handle to the pool if no
    /// other holder is left.
    pub(crate) fn finish(self) {
        self.0.borrow_mut().finished = true;
        if Rc::strong_count(&self.0) == 1 {
            *self.0.borrow_mut() = Flight::default();
            let rc = self.0;
            let _ = FLIGHTS.try_with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < FLIGHT_POOL {
                    p.push(rc);
                }
            });
        }
    }

    /// Cancels the command: the block operation running now is cancelled and no further
    /// step starts; the command completes with `host` (ABORTED or RESET).
    pub fn cancel(&self, host: HostStatus) {
        let current = {
            let mut f = self.0.borrow_mut();
            if f.canceled.is_none() {
                f.canceled = Some(host);
            }
            f.current.clone()
        };
        if let Some(req) = current {
            req.cancel();
        }
    }

    /// Whether the block operation running now is parked by a `stop` error policy.
    pub fn is_parked(&self) -> bool {
        self.0
            .borrow()
            .current
            .as_ref()
            .is_some_and(|r| r.is_parked())
    }

    /// The host status a cancel asked for, if cancelled.
    pub fn canceled(&self) -> Option<HostStatus> {
        self.0.borrow().canceled
    }

    /// Records the block operation just started, unless it has completed already
    /// (inside the call that started it: then a later step, or nothing, runs now).
    pub(crate) fn started(&self, req: DriveRequest) {
        let mut f = self.0.borrow_mut();
        if f.current.is_none() && !f.finished {
            f.current = Some(req);
        }
    }

    /// The block operation running now completed.
    pub(crate) fn step_done(&self) {
        self.0.borrow_mut().current = None;
    }
}

/// Counts a device's commands in flight and runs a callback once the device is being
/// removed and the count reaches zero (the hot-unplug drain).
#[derive(Default)]
pub struct InFlightCounter {
    count: AtomicUsize,
    removing: AtomicBool,
    on_drained: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl std::fmt::Debug for InFlightCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InFlightCounter")
            .field("count", &self.count.load(Ordering::Relaxed))
            .field("removing", &self.removing.load(Ordering::Relaxed))
            .finish()
    }
}

impl InFlightCounter {
    /// A command starts; `false` (and nothing counted) if the device is being removed.
    pub fn try_enter(&self) -> bool {
        // SeqCst, here and in `leave` and `begin_removal`: a Dekker pair (count vs
        // removing). Either `begin_removal` sees this increment (and the last `leave`
        // fires the callback), or this sees `removing` and backs out.
        self.count.fetch_add(1, Ordering::SeqCst);
        if self.removing.load(Ordering::SeqCst) {
            self.leave();
            return false;
        }
        true
    }

    /// A command finished; runs the drain callback if it was the last one of a device
    /// being removed.
    pub fn leave(&self) {
        // The callback is taken out of its mutex, so it runs at most once whichever
        // side sees the count reach zero.
        if self.count.fetch_sub(1, Ordering::SeqCst) == 1 && self.removing.load(Ordering::SeqCst) {
            self.fire();
        }
    }

    /// Commands in flight.
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Acquire)
    }

    /// Whether removal has begun (new commands are refused).
    pub fn is_removing(&self) -> bool {
        self.removing.load(Ordering::Acquire)
    }

    /// Marks the device as being removed; `on_drained` runs once no command is in
    /// flight: now (in this thread) if none is, else in the thread that completes the
    /// last one.
    pub fn begin_removal(&self, on_drained: Box<dyn FnOnce() + Send>) {
        *self
            .on_drained
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(on_drained);
        self.removing.store(true, Ordering::SeqCst);
        if self.count.load(Ordering::SeqCst) == 0 {
            self.fire();
        }
    }

    fn fire(&self) {
        let f = self
            .on_drained
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(f) = f {
            f();
        }
    }
}

/// GOOD with `data` (truncated to `alloc` and to the buffer) copied to the data-in
/// buffer; OVERRUN if the buffer is not data-in, FAILURE if it is not guest RAM.
pub(crate) fn data_in(req: &ScsiRequest, data: &[u8], alloc: u32) -> ScsiResponse {
    let n = data.len().min(alloc as usize);
    if n == 0 || req.data.is_empty() {
        return ScsiResponse::good(0);
    }
    match req.data.write_in(&data[..n]) {
        Some(moved) => ScsiResponse::good(moved),
        None if req.data.dir != DataDirection::FromDevice => {
            ScsiResponse::host(HostStatus::Overrun)
        }
        None => ScsiResponse::host(HostStatus::Failure),
    }
}
