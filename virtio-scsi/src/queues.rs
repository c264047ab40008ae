//! The three kinds of queue on virtio-core's runner: request queues (SCSI commands to
//! the bus), the control queue (task management, asynchronous notification) and the
//! event queue.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use aio_context::AioContext;
use block_dma::{DmaMemory, SgList};
use ram_block::{RamBlocks, RamList};
use scsi::{
    DataBuffer, DataDirection, HostStatus, ScsiBus, ScsiDone, ScsiInFlight, ScsiRequest,
    ScsiResponse, ScsiSink,
};
use slab::Slab;
use virtio_bindings::virtio_scsi::*;
use virtio_core::{Completion, Desc, InFlight, QueueHandler};

use crate::chain;
use crate::events::{EventBuffer, Events};
use crate::wire::{self, CmdResponse, CtrlRequest, EVENT_SIZE};

/// A command in flight on this thread: what its response needs, and what task
/// management finds it by.
struct Pending {
    /// The chain to return.
    done: Completion,
    /// The response buffer.
    resp: SgList,
    /// The data buffer's length, and whether it is data-in.
    data: (u64, bool),
    sense_size: usize,
    /// (device, target, lun).
    key: (u64, u16, u16),
    /// The driver's tag.
    tag: u64,
    /// Tells this command's slot from a later command's that reuses it.
    seq: u64,
    /// The handle, once the command is running (`None` while it starts).
    flight: Option<ScsiInFlight>,
}

thread_local! {
    /// Commands in flight in this iothread (every queue of a device is served by one
    /// thread, so task management on the control queue finds them all here). A slab:
    /// slots are reused, so a command allocates nothing here in steady state.
    static TASKS: RefCell<Slab<Pending>> = const { RefCell::new(Slab::new()) };
    static SEQ: Cell<u64> = const { Cell::new(0) };
}

/// Completes commands from [`TASKS`]: the bus gets a token, not a boxed closure.
struct CmdSink;

static CMD_SINK: CmdSink = CmdSink;

/// Takes command `token` out of the table (the borrow ends before the caller goes on).
/// `try_with`: a command abandoned while the thread's locals are torn down (its
/// context dropped with I/O in flight) finds no table.
fn take(token: usize) -> Option<Pending> {
    TASKS
        .try_with(|t| t.try_borrow_mut().ok()?.try_remove(token))
        .ok()
        .flatten()
}

impl ScsiSink for CmdSink {
    fn complete(&self, token: usize, r: ScsiResponse) {
        if let Some(p) = take(token) {
            finish(p.done, &p.resp, &r, p.data, None, p.sense_size);
        }
    }

    fn abandon(&self, token: usize) {
        drop(take(token));
    }
}

/// The handles of the commands in flight for `key` whose tag `tag` accepts.
fn tasks(key: (u64, u16, u16), tag: impl Fn(u64) -> bool) -> Vec<ScsiInFlight> {
    TASKS.with(|t| {
        t.borrow()
            .iter()
            .filter(|(_, p)| p.key == key && tag(p.tag))
            .filter_map(|(_, p)| p.flight.clone())
            .collect()
    })
}

/// What every queue of a device shares.
pub(crate) struct Shared {
    pub(crate) device: u64,
    pub(crate) bus: Arc<ScsiBus>,
    pub(crate) events: Arc<Events>,
    pub(crate) cdb_size: usize,
    pub(crate) sense_size: usize,
}

fn response_code(host: HostStatus) -> u8 {
    (match host {
        HostStatus::Ok => VIRTIO_SCSI_S_OK,
        HostStatus::Overrun => VIRTIO_SCSI_S_OVERRUN,
        HostStatus::Aborted => VIRTIO_SCSI_S_ABORTED,
        HostStatus::Reset => VIRTIO_SCSI_S_RESET,
        HostStatus::BadTarget => VIRTIO_SCSI_S_BAD_TARGET,
        HostStatus::Failure => VIRTIO_SCSI_S_FAILURE,
    }) as u8
}

/// A parsed command chain.
pub(crate) enum CmdReq {
    /// Malformed: returned with nothing written.
    Bad,
    /// Complete at once with this response code (no SCSI status).
    Fail { resp: SgList, code: u32 },
    /// A command.
    Cmd {
        hdr: wire::CmdHeader,
        data: DataBuffer,
        resp: SgList,
    },
}

/// A request queue.
pub(crate) struct CmdQueue {
    pub(crate) shared: Arc<Shared>,
    pub(crate) dma: DmaMemory,
}

impl CmdQueue {
    pub(crate) fn new(shared: Arc<Shared>, memory: &RamList) -> CmdQueue {
        CmdQueue {
            shared,
            dma: DmaMemory::new(memory.clone()),
        }
    }
}

/// A command in flight, as the runner tracks it.
#[derive(Clone)]
pub(crate) struct CmdInFlight(ScsiInFlight);

impl InFlight for CmdInFlight {
    fn is_parked(&self) -> bool {
        self.0.is_parked()
    }
    fn cancel(&self) {
        self.0.cancel(HostStatus::Aborted);
    }
}

impl QueueHandler for CmdQueue {
    type Request = CmdReq;
    type InFlight = CmdInFlight;

    fn parse(&self, mem: &RamBlocks, descs: &[Desc]) -> CmdReq {
        let c = chain::split(descs);
        let hdr_len = wire::CMD_HDR + self.shared.cdb_size;
        let resp_len = (wire::CMD_RESP_FIXED + self.shared.sense_size) as u64;
        if !c.ordered || c.inn.len() < resp_len {
            tracing::warn!("virtio-scsi: malformed command chain");
            return CmdReq::Bad;
        }
        let (resp, data_in) = chain::split_at(&c.inn, resp_len);
        let mut buf = [0u8; wire::CMD_HDR + scsi::MAX_CDB];
        let hdr = match buf.get_mut(..hdr_len) {
            // The usual case: read onto the stack.
            Some(b) => chain::read_into(mem, &c.out, b)
                .then(|| wire::parse_cmd(b, self.shared.cdb_size).ok())
                .flatten(),
            None => chain::read(mem, &c.out, hdr_len)
                .and_then(|b| wire::parse_cmd(&b, self.shared.cdb_size).ok()),
        };
        let Some(hdr) = hdr else {
            tracing::warn!("virtio-scsi: command request header too short");
            return CmdReq::Bad;
        };
        let (_, data_out) = chain::split_at(&c.out, hdr_len as u64);
        let (sg, dir) = match (data_out.is_empty(), data_in.is_empty()) {
            (true, true) => (SgList::new(), DataDirection::None),
            (false, true) => (data_out, DataDirection::ToDevice),
            (true, false) => (data_in, DataDirection::FromDevice),
            // Bidirectional commands are not offered (no VIRTIO_SCSI_F_INOUT).
            (false, false) => {
                return CmdReq::Fail {
                    resp,
                    code: VIRTIO_SCSI_S_FAILURE,
                };
            }
        };
        CmdReq::Cmd {
            hdr,
            data: DataBuffer {
                mem: self.dma.clone(),
                sg,
                dir,
            },
            resp,
        }
    }

    fn start(&self, ctx: &AioContext, req: CmdReq, done: Completion) -> Option<CmdInFlight> {
        let sense_size = self.shared.sense_size;
        let (hdr, data, resp) = match req {
            CmdReq::Bad => {
                done.complete(0);
                return None;
            }
            CmdReq::Fail { resp, code } => {
                let r = ScsiResponse::host(HostStatus::Failure);
                finish(done, &resp, &r, (0, false), Some(code as u8), sense_size);
                return None;
            }
            CmdReq::Cmd { hdr, data, resp } => (hdr, data, resp),
        };
        let Some((target, lun)) = wire::decode_lun(&hdr.lun) else {
            let r = ScsiResponse::host(HostStatus::BadTarget);
            finish(done, &resp, &r, (data.len(), false), None, sense_size);
            return None;
        };
        let seq = SEQ.with(|s| {
            s.set(s.get().wrapping_add(1));
            s.get()
        });
        let pending = Pending {
            done,
            resp,
            data: (data.len(), data.dir == DataDirection::FromDevice),
            sense_size,
            key: (self.shared.device, target, lun),
            tag: hdr.tag,
            seq,
            flight: None,
        };
        let token = TASKS.with(|t| t.borrow_mut().insert(pending));
        let request = ScsiRequest { cdb: hdr.cdb, data };
        let flight =
            self.shared
                .bus
                .execute(ctx, target, lun, request, ScsiDone::sink(&CMD_SINK, token))?;
        if flight.is_finished() {
            // Completed inside `execute`: the slot may hold another command by now.
            return None;
        }
        TASKS.with(|t| {
            if let Some(p) = t.borrow_mut().get_mut(token).filter(|p| p.seq == seq) {
                p.flight = Some(flight.clone());
            }
        });
        Some(CmdInFlight(flight))
    }
}

/// Writes a command's response and returns the chain. `data`: the data buffer's
/// length and whether it is data-in (device-written, so counted in the used length).
fn finish(
    done: Completion,
    resp_sg: &SgList,
    r: &ScsiResponse,
    data: (u64, bool),
    code: Option<u8>,
    sense_size: usize,
) {
    let (data_len, data_in) = data;
    let resid = data_len
        .saturating_sub(r.transferred)
        .min(u64::from(u32::MAX)) as u32;
    let resp = CmdResponse {
        sense_len: r.sense.len() as u32,
        resid,
        status: r.status,
        response: code.unwrap_or_else(|| response_code(r.host)),
        sense: r.sense.clone(),
    };
    let bytes = resp.encode(sense_size);
    let used = if !chain::write(&done.memory(), resp_sg, &bytes) {
        0
    } else if data_in {
        (bytes.len() as u64 + r.transferred).min(u64::from(u32::MAX)) as u32
    } else {
        bytes.len() as u32
    };
    done.complete(used);
}

/// The control queue.
pub(crate) struct CtrlQueue {
    pub(crate) shared: Arc<Shared>,
}

/// A parsed control chain.
pub(crate) enum CtrlReq {
    Bad,
    Ok { req: CtrlRequest, resp: SgList },
}

/// Control requests complete at once.
#[derive(Clone)]
pub(crate) struct NoFlight;

impl InFlight for NoFlight {
    fn is_parked(&self) -> bool {
        false
    }
    fn cancel(&self) {}
}

impl QueueHandler for CtrlQueue {
    type Request = CtrlReq;
    type InFlight = NoFlight;

    fn parse(&self, mem: &RamBlocks, descs: &[Desc]) -> CtrlReq {
        let c = chain::split(descs);
        let bytes = chain::read(
            mem,
            &c.out,
            (c.out.len() as usize).min(wire::TMF_REQ.max(wire::AN_REQ)),
        );
        match bytes.as_deref().map(wire::parse_ctrl) {
            Some(Ok(req)) if c.ordered && c.inn.len() >= req.response_len() as u64 => {
                CtrlReq::Ok { req, resp: c.inn }
            }
            _ => {
                tracing::warn!("virtio-scsi: malformed control request");
                CtrlReq::Bad
            }
        }
    }

    fn start(&self, _ctx: &AioContext, req: CtrlReq, done: Completion) -> Option<NoFlight> {
        let CtrlReq::Ok { req, resp } = req else {
            done.complete(0);
            return None;
        };
        let bytes: Vec<u8> = match req {
            CtrlRequest::Tmf { subtype, lun, tag } => vec![self.tmf(subtype, &lun, tag)],
            CtrlRequest::An { .. } => {
                // No asynchronous notification is offered: event_actual 0, OK.
                vec![0, 0, 0, 0, VIRTIO_SCSI_S_OK as u8]
            }
        };
        let ok = chain::write(&done.memory(), &resp, &bytes);
        done.complete(if ok { bytes.len() as u32 } else { 0 });
        None
    }
}

impl CtrlQueue {
    /// Runs a task management function; returns its response code.
    fn tmf(&self, subtype: u32, lun: &[u8; 8], tag: u64) -> u8 {
        let Some((target, lun)) = wire::decode_lun(lun) else {
            return VIRTIO_SCSI_S_BAD_TARGET as u8;
        };
        let bus = &self.shared.bus;
        if !bus.has_target(target) {
            return VIRTIO_SCSI_S_BAD_TARGET as u8;
        }
        let exists = {
            let guard = rcu::read();
            bus.bus()
                .get(&guard, qdev_bus::ScsiAddress::new(target, lun))
                .is_some()
        };
        let dev = self.shared.device;
        let key = (dev, target, lun);
        let any = |_| true;
        let code = match subtype {
            VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET => {
                let flights: Vec<ScsiInFlight> = TASKS.with(|t| {
                    t.borrow()
                        .iter()
                        .filter(|(_, p)| p.key.0 == dev && p.key.1 == target)
                        .filter_map(|(_, p)| p.flight.clone())
                        .collect()
                });
                for f in flights {
                    f.cancel(HostStatus::Reset);
                }
                reset_target(bus, target);
                VIRTIO_SCSI_S_OK
            }
            _ if !exists => VIRTIO_SCSI_S_INCORRECT_LUN,
            VIRTIO_SCSI_T_TMF_ABORT_TASK => {
                for f in tasks(key, |g| g == tag) {
                    f.cancel(HostStatus::Aborted);
                }
                VIRTIO_SCSI_S_OK
            }
            VIRTIO_SCSI_T_TMF_ABORT_TASK_SET | VIRTIO_SCSI_T_TMF_CLEAR_TASK_SET => {
                for f in tasks(key, any) {
                    f.cancel(HostStatus::Aborted);
                }
                VIRTIO_SCSI_S_OK
            }
            VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET => {
                for f in tasks(key, any) {
                    f.cancel(HostStatus::Reset);
                }
                let guard = rcu::read();
                if let Some(d) = bus
                    .bus()
                    .get(&guard, qdev_bus::ScsiAddress::new(target, lun))
                {
                    qdev_bus::reset_device(&guard, d.as_device());
                }
                VIRTIO_SCSI_S_OK
            }
            VIRTIO_SCSI_T_TMF_QUERY_TASK => {
                if !tasks(key, |g| g == tag).is_empty() {
                    VIRTIO_SCSI_S_FUNCTION_SUCCEEDED
                } else {
                    VIRTIO_SCSI_S_OK
                }
            }
            VIRTIO_SCSI_T_TMF_QUERY_TASK_SET => {
                if tasks(key, any).is_empty() {
                    VIRTIO_SCSI_S_OK
                } else {
                    VIRTIO_SCSI_S_FUNCTION_SUCCEEDED
                }
            }
            _ => VIRTIO_SCSI_S_FUNCTION_REJECTED,
        };
        code as u8
    }
}

/// Resets every LUN of `target`.
fn reset_target(bus: &ScsiBus, target: u16) {
    let guard = rcu::read();
    for child in bus.bus().iter(&guard) {
        if child.address().target == target {
            qdev_bus::reset_device(&guard, child.device().as_device());
        }
    }
}

/// The event queue.
pub(crate) struct EventQueue {
    pub(crate) shared: Arc<Shared>,
}

impl QueueHandler for EventQueue {
    type Request = Option<SgList>;
    type InFlight = EventBuffer;

    fn parse(&self, _mem: &RamBlocks, descs: &[Desc]) -> Option<SgList> {
        let c = chain::split(descs);
        (c.out.is_empty() && c.inn.len() >= EVENT_SIZE as u64).then_some(c.inn)
    }

    fn start(
        &self,
        _ctx: &AioContext,
        sg: Option<SgList>,
        done: Completion,
    ) -> Option<EventBuffer> {
        let Some(sg) = sg else {
            tracing::warn!("virtio-scsi: malformed event buffer");
            done.complete(0);
            return None;
        };
        Some(self.shared.events.buffer(sg, done))
    }
}
