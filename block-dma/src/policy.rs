//! [`Drive`]: a backend with QEMU's `rerror`/`werror` policy, its io-status, and the
//! restart of stopped requests when the VM resumes (seed 002).
//!
//! On an error the policy picks an action (QEMU's `blk_get_error_action`):
//! - `report`: the request fails;
//! - `ignore`: the request completes as if it succeeded;
//! - `stop` (and `enospc` for `ENOSPC`): the drive records its io-status, emits
//!   `BLOCK_IO_ERROR`, *then* asks the run state machine to stop the VM (the event is
//!   emitted under runstate's stop-request lock, so it precedes the `STOP`), and parks the
//!   request in its context.
//!
//! On resume, the drive's runstate handler only schedules a BH (one per context that has
//! parked requests); the BH resubmits the parked requests in their original order. A
//! request that fails again re-enters the policy like a new one: it parks again and
//! stops the VM again, from the BH, never from inside the runstate notification (the
//! QEMU bug of seed 002 was a restart from inside the handler, which stopped the VM in
//! the middle of the round that was starting it).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::str::FromStr;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::thread::ThreadId;

use aio_context::{AioContext, Bh};
use runstate::{HandlerId, RunState, RunStateMachine};

use crate::backend::{BlockBackend, BlockOp, Done};
use crate::dma::{DmaDirection, DmaRequest, dma_rw};
use crate::local::{self, Token};
use crate::{DmaMemory, Errno, SgList};

/// What to do when a request fails (`rerror=`/`werror=`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorAction {
    /// Fail the request (the guest sees an I/O error).
    Report,
    /// Complete the request as a success.
    Ignore,
    /// Stop the VM and retry the request when it resumes.
    Stop,
    /// Stop on `ENOSPC`, report anything else.
    Enospc,
}

impl FromStr for ErrorAction {
    type Err = String;
    fn from_str(s: &str) -> Result<ErrorAction, String> {
        match s {
            "report" => Ok(ErrorAction::Report),
            "ignore" => Ok(ErrorAction::Ignore),
            "stop" => Ok(ErrorAction::Stop),
            "enospc" => Ok(ErrorAction::Enospc),
            _ => Err(format!(
                "'{s}' invalid error action: expected report, ignore, stop or enospc"
            )),
        }
    }
}

/// A drive's error policy. The default is QEMU's: `rerror=report`, `werror=enospc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorPolicy {
    /// For reads.
    pub rerror: ErrorAction,
    /// For writes, flushes, discards and write-zeroes.
    pub werror: ErrorAction,
}

impl Default for ErrorPolicy {
    fn default() -> Self {
        ErrorPolicy {
            rerror: ErrorAction::Report,
            werror: ErrorAction::Enospc,
        }
    }
}

/// The action actually taken for one error (QMP's `BlockErrorAction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TakenAction {
    /// Reported to the guest.
    Report,
    /// Ignored.
    Ignore,
    /// The VM was stopped.
    Stop,
}

impl TakenAction {
    /// QMP's name.
    pub fn qmp_name(self) -> &'static str {
        match self {
            TakenAction::Report => "report",
            TakenAction::Ignore => "ignore",
            TakenAction::Stop => "stop",
        }
    }
}

impl ErrorPolicy {
    /// The action for `errno` on a read (`is_read`) or a write.
    pub fn action(&self, is_read: bool, errno: Errno) -> TakenAction {
        match if is_read { self.rerror } else { self.werror } {
            ErrorAction::Report => TakenAction::Report,
            ErrorAction::Ignore => TakenAction::Ignore,
            ErrorAction::Stop => TakenAction::Stop,
            ErrorAction::Enospc if errno == Errno::ENOSPC => TakenAction::Stop,
            ErrorAction::Enospc => TakenAction::Report,
        }
    }
}

/// QMP's `BlockDeviceIoStatus`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoStatus {
    /// No error since the last reset.
    Ok,
    /// A request failed and stopped the VM.
    Failed,
    /// A request failed with `ENOSPC` and stopped the VM.
    NoSpace,
}

impl IoStatus {
    /// QMP's name.
    pub fn qmp_name(self) -> &'static str {
        match self {
            IoStatus::Ok => "ok",
            IoStatus::Failed => "failed",
            IoStatus::NoSpace => "nospace",
        }
    }
}

/// The data of a `BLOCK_IO_ERROR` event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockIoError {
    /// The device (QEMU: the block backend's name, `""` if anonymous).
    pub device: String,
    /// The node name.
    pub node_name: String,
    /// `"read"` or `"write"`.
    pub operation: &'static str,
    /// What was done.
    pub action: TakenAction,
    /// Whether the error was `ENOSPC`.
    pub nospace: bool,
    /// The error's text (`strerror`).
    pub reason: String,
}

type EventHook = Arc<dyn Fn(&BlockIoError) + Send + Sync>;

/// What a parked request needs to run again.
struct Parked {
    run: Box<dyn FnOnce()>,
}

/// One context's parked requests and the BH that restarts them.
struct ContextSlot {
    thread: ThreadId,
    bh: Bh,
    token: Token,
}

struct Shared {
    device: String,
    node_name: String,
    backend: Arc<dyn BlockBackend>,
    policy: ErrorPolicy,
    io_status: Mutex<IoStatus>,
    hook: Mutex<Option<EventHook>>,
    vm: Option<RunStateMachine>,
    handler: Mutex<Option<HandlerId>>,
    slots: Mutex<Vec<ContextSlot>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Drop for Shared {
    fn drop(&mut self) {
        if let (Some(vm), Some(id)) = (&self.vm, lock(&self.handler).take()) {
            vm.remove_handler(id);
        }
        for slot in lock(&self.slots).drain(..) {
            slot.bh.delete();
        }
    }
}

/// A block backend as a device sees it: DMA and the other operations, with the error
/// policy applied. Cheap to clone; usable from several `AioContext`s (each request
/// stays in the context that submitted it).
#[derive(Clone)]
pub struct Drive {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Drive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Drive")
            .field("device", &self.shared.device)
            .field("policy", &self.shared.policy)
            .field("io_status", &self.io_status())
            .finish()
    }
}

/// A request submitted through a [`Drive`], for cancelling it.
#[derive(Clone)]
pub struct DriveRequest {
    req: Rc<RefCell<DriveReq>>,
}

struct DriveReq {
    drive: Drive,
    ctx: AioContext,
    work: Rc<Work>,
    is_read: bool,
    /// The DMA running now, if any.
    dma: Option<DmaRequest>,
    /// The backend ticket of a non-DMA op running now.
    op: Option<crate::backend::Ticket>,
    /// Parked: where (to cancel it).
    parked: bool,
    canceled: bool,
    done: Option<crate::DmaDone>,
}

impl Drive {
    /// A drive named `device` (node `node_name`) over `backend`. With `vm`, the `stop`
    /// actions stop it and its resume restarts parked requests; without one (a storage
    /// daemon), `stop` behaves as `report`.
    pub fn new(
        device: impl Into<String>,
        node_name: impl Into<String>,
        backend: Arc<dyn BlockBackend>,
        policy: ErrorPolicy,
        vm: Option<RunStateMachine>,
    ) -> Drive {
        let shared = Arc::new(Shared {
            device: device.into(),
            node_name: node_name.into(),
            backend,
            policy,
            io_status: Mutex::new(IoStatus::Ok),
            hook: Mutex::new(None),
            vm,
            handler: Mutex::new(None),
            slots: Mutex::new(Vec::new()),
        });
        if let Some(vm) = &shared.vm {
            let weak: Weak<Shared> = Arc::downgrade(&shared);
            // QEMU's virtio_blk_dma_restart_cb: the handler only schedules the BHs.
            let id = vm.add_handler(0, move |running, _| {
                if let (true, Some(shared)) = (running, weak.upgrade()) {
                    *lock(&shared.io_status) = IoStatus::Ok;
                    for slot in lock(&shared.slots).iter() {
                        slot.bh.schedule();
                    }
                }
            });
            *lock(&shared.handler) = Some(id);
        }
        Drive { shared }
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn BlockBackend> {
        &self.shared.backend
    }

    /// The policy.
    pub fn policy(&self) -> ErrorPolicy {
        self.shared.policy
    }

    /// The io-status (QMP `query-block`'s `io-status`).
    pub fn io_status(&self) -> IoStatus {
        *lock(&self.shared.io_status)
    }

    /// Resets the io-status to ok (QMP `block_set_io_status`... and `cont`).
    pub fn reset_io_status(&self) {
        *lock(&self.shared.io_status) = IoStatus::Ok;
    }

    /// Sets where `BLOCK_IO_ERROR` events go (the monitor).
    pub fn set_event_hook(&self, hook: impl Fn(&BlockIoError) + Send + Sync + 'static) {
        *lock(&self.shared.hook) = Some(Arc::new(hook));
    }

    /// Parked requests of the calling thread's context.
    pub fn parked(&self) -> usize {
        self.local_queue().map_or(0, |q| q.borrow().len())
    }

    /// Starts a DMA transfer (see [`dma_rw`]) under the policy; `done` runs once in
    /// `ctx`, with the transferred length or the error the policy reports.
    pub fn dma(
        &self,
        ctx: &AioContext,
        mem: &DmaMemory,
        dir: DmaDirection,
        offset: u64,
        sg: SgList,
        done: crate::DmaDone,
    ) -> DriveRequest {
        let work = Work::Dma {
            mem: mem.clone(),
            dir,
            offset,
            sg,
        };
        self.start_new(ctx, work, dir == DmaDirection::Read, done)
    }

    /// Flush, discard or write-zeroes (reads and writes go through [`Drive::dma`])
    /// under the policy. `make` builds the operation (again, on a restart).
    pub fn op(
        &self,
        ctx: &AioContext,
        make: impl Fn() -> BlockOp + 'static,
        done: crate::DmaDone,
    ) -> DriveRequest {
        self.start_new(ctx, Work::Op(Box::new(make)), false, done)
    }

    fn start_new(
        &self,
        ctx: &AioContext,
        work: Work,
        is_read: bool,
        done: crate::DmaDone,
    ) -> DriveRequest {
        let req = Rc::new(RefCell::new(DriveReq {
            drive: self.clone(),
            ctx: ctx.clone(),
            work: Rc::new(work),
            is_read,
            dma: None,
            op: None,
            parked: false,
            canceled: false,
            done: Some(done),
        }));
        start(&req);
        DriveRequest { req }
    }

    /// A request finished (or failed): apply the policy.
    fn complete(&self, req: &Rc<RefCell<DriveReq>>, res: Result<u64, Errno>) {
        let (is_read, len, canceled) = {
            let mut r = req.borrow_mut();
            r.dma = None;
            r.op = None;
            let len = match &*r.work {
                Work::Dma { sg, .. } => sg.len(),
                Work::Op(_) => 0,
            };
            (r.is_read, len, r.canceled)
        };
        let result = match res {
            // A buffer outside guest memory is the guest's error, not the image's: it
            // is reported to the guest and never stops the VM (QEMU fails such a
            // request before it reaches the block layer).
            Err(errno) if errno == Errno::EFAULT => Err(errno),
            Err(errno) if errno != Errno::ECANCELED && !canceled => {
                let action = match self.shared.policy.action(is_read, errno) {
                    TakenAction::Stop if self.shared.vm.is_none() => TakenAction::Report,
                    a => a,
                };
                let event = BlockIoError {
                    device: self.shared.device.clone(),
                    node_name: self.shared.node_name.clone(),
                    operation: if is_read { "read" } else { "write" },
                    action,
                    nospace: errno == Errno::ENOSPC,
                    reason: errno.to_string(),
                };
                match action {
                    TakenAction::Report => {
                        self.emit(&event);
                        Err(errno)
                    }
                    TakenAction::Ignore => {
                        self.emit(&event);
                        Ok(len)
                    }
                    TakenAction::Stop => return self.park(req, errno, event),
                }
            }
            Err(_) if canceled => Err(Errno::ECANCELED),
            other => other,
        };
        let done = req.borrow_mut().done.take();
        if let Some(done) = done {
            done(result);
        }
    }

    fn emit(&self, event: &BlockIoError) {
        let hook = lock(&self.shared.hook).clone();
        if let Some(hook) = hook {
            hook(event);
        }
    }

    /// The `stop` action: io-status, BLOCK_IO_ERROR, then the stop request; the request
    /// waits in this context for the resume.
    fn park(&self, req: &Rc<RefCell<DriveReq>>, errno: Errno, event: BlockIoError) {
        // The first error sticks until the status is reset (QEMU's
        // `blk_iostatus_set_err` only changes an ok status).
        let mut status = lock(&self.shared.io_status);
        if *status == IoStatus::Ok {
            *status = if errno == Errno::ENOSPC {
                IoStatus::NoSpace
            } else {
                IoStatus::Failed
            };
        }
        drop(status);
        req.borrow_mut().parked = true;
        let r = req.clone();
        let queue = self.queue_for_current();
        queue.borrow_mut().push_back(Parked {
            run: Box::new(move || {
                let go = {
                    let mut r = r.borrow_mut();
                    r.parked = false;
                    !r.canceled
                };
                if go {
                    start(&r);
                }
            }),
        });
        let vm = self.shared.vm.as_ref().expect("stop needs a VM");
        vm.request_stop_with(RunState::IoError, || self.emit(&event));
    }

    /// The calling thread's queue, if it has one.
    fn local_queue(&self) -> Option<Rc<RefCell<VecDeque<Parked>>>> {
        let me = std::thread::current().id();
        let slots = lock(&self.shared.slots);
        let slot = slots.iter().find(|s| s.thread == me)?;
        local::get::<RefCell<VecDeque<Parked>>>(slot.token)
    }

    /// The calling thread's queue, created with its restart BH on first use.
    fn queue_for_current(&self) -> Rc<RefCell<VecDeque<Parked>>> {
        if let Some(q) = self.local_queue() {
            return q;
        }
        let queue = Rc::new(RefCell::new(VecDeque::new()));
        let token = local::insert(queue.clone());
        let ctx = AioContext::current().expect("requests run in an AioContext");
        let bh = ctx.new_bh(move || {
            let Some(queue) = local::get::<RefCell<VecDeque<Parked>>>(token) else {
                return;
            };
            // In order; a request that fails again parks at the back of a fresh round.
            let round: Vec<Parked> = queue.borrow_mut().drain(..).collect();
            for parked in round {
                (parked.run)();
            }
        });
        lock(&self.shared.slots).push(ContextSlot {
            thread: std::thread::current().id(),
            bh,
            token,
        });
        queue
    }

    /// Restarts this context's parked requests now (what the resume BH does); for a
    /// drive without a VM, or tests.
    pub fn restart_parked(&self) {
        let me = std::thread::current().id();
        if let Some(slot) = lock(&self.shared.slots).iter().find(|s| s.thread == me) {
            slot.bh.schedule();
        }
    }
}

/// What a drive request does (kept to run it again after a stop).
enum Work {
    Dma {
        mem: DmaMemory,
        dir: DmaDirection,
        offset: u64,
        sg: SgList,
    },
    Op(Box<dyn Fn() -> BlockOp>),
}

/// Runs (or re-runs) a drive request.
fn start(req: &Rc<RefCell<DriveReq>>) {
    let (drive, ctx, work) = {
        let r = req.borrow();
        (r.drive.clone(), r.ctx.clone(), r.work.clone())
    };
    let r2 = req.clone();
    let d2 = drive.clone();
    match &*work {
        Work::Dma {
            mem,
            dir,
            offset,
            sg,
        } => {
            let dma = dma_rw(
                &ctx,
                mem,
                drive.shared.backend.clone(),
                *dir,
                *offset,
                sg.clone(),
                Box::new(move |res| d2.complete(&r2, res)),
            );
            // A DMA that already finished (it failed at once, and may even have parked
            // the request) is not kept: cancel must then see the parked request.
            if !dma.is_done() {
                req.borrow_mut().dma = Some(dma);
            }
        }
        Work::Op(make) => {
            let cb: Done = Box::new(move |res, _| d2.complete(&r2, res));
            match drive.shared.backend.submit(&ctx, make(), cb) {
                Ok(ticket) => req.borrow_mut().op = Some(ticket),
                Err(errno) => {
                    // Not queued: report through the event loop, never inline.
                    let r3 = req.clone();
                    local::defer(&ctx, move || drive.complete(&r3, Err(errno)));
                }
            }
        }
    }
}

impl DriveRequest {
    /// Cancels the request: a running DMA or operation is cancelled (completing with
    /// `ECANCELED`); a parked one completes with `ECANCELED` from the event loop;
    /// a completed one is left alone.
    pub fn cancel(&self) {
        let mut r = self.req.borrow_mut();
        let (ctx, drive) = (r.ctx.clone(), r.drive.clone());
        if r.canceled || r.done.is_none() {
            return;
        }
        r.canceled = true;
        // Parked first: a parked request has nothing running, whatever handles linger.
        if r.parked {
            let done = r.done.take();
            drop(r);
            if let Some(done) = done {
                local::defer(&ctx, move || done(Err(Errno::ECANCELED)));
            }
            return;
        }
        if let Some(dma) = r.dma.clone() {
            drop(r);
            return dma.cancel();
        }
        if let Some(ticket) = r.op {
            drop(r);
            drive.shared.backend.cancel(&ctx, ticket);
        }
    }

    /// Whether the request has completed.
    pub fn is_done(&self) -> bool {
        self.req.borrow().done.is_none()
    }

    /// Whether it is parked, waiting for the VM to resume.
    pub fn is_parked(&self) -> bool {
        self.req.borrow().parked
    }
}
