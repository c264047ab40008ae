//! `scsi-hd`: a SCSI disk over a block-dma [`Drive`], with no knowledge of its
//! transport. Emulated commands (INQUIRY, MODE SENSE, READ CAPACITY, ...) complete
//! inside [`ScsiDevice::execute`]; I/O commands run on the drive in the caller's
//! `AioContext` and complete from its event loop, so `rerror`/`werror` (report, ignore,
//! stop with a restart on resume) apply exactly as for virtio-blk.

pub(crate) mod pages;

use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use aio_context::AioContext;
use block_dma::{AlignedBuf, BlockOp, DmaDirection, DmaMemory, Drive, Errno, IoBuffers, SgList};
use qdev_bus::Device;
use smallvec::SmallVec;

use crate::cdb::{self, Command};
use crate::request::{
    DataDirection, HostStatus, InFlightCounter, ScsiDone, ScsiInFlight, ScsiRequest, ScsiResponse,
    data_in,
};
use crate::sense::{Sense, UnitAttention};
use crate::{Error, Result, ScsiDevice};

use self::pages::{DiskView, MAX_UNMAP_BLOCKS, MAX_UNMAP_DESCRIPTORS, MAX_WRITE_SAME_BLOCKS};

/// The largest WRITE SAME with a non-zero pattern, in bytes (written from one buffer).
const MAX_PATTERN_BYTES: u64 = 32 << 20;

/// Options of a scsi-hd (QEMU's property names in the docs).
#[derive(Clone, Debug)]
pub struct HdOptions {
    /// `serial=`: VPD page 80h (at most 36 printable ASCII bytes; empty: no page 80h).
    pub serial: String,
    /// `vendor=` (8 bytes of INQUIRY data).
    pub vendor: String,
    /// `product=` (16 bytes).
    pub product: String,
    /// `ver=` (4 bytes).
    pub revision: String,
    /// `logical_block_size=`: 512 or 4096.
    pub block_size: u32,
    /// The write cache is enabled at power-on (`write-cache=on`, the default).
    pub write_cache: bool,
}

impl Default for HdOptions {
    fn default() -> Self {
        HdOptions {
            serial: String::new(),
            vendor: "QEMU".into(),
            product: "QEMU HARDDISK".into(),
            revision: "2.5+".into(),
            block_size: 512,
            write_cache: true,
        }
    }
}

/// The state the device's requests share (kept alive by requests in flight after an
/// unplug, as QEMU's requests hold a reference to their device).
struct HdState {
    drive: Drive,
    options: HdOptions,
    device_id: String,
    blocks: AtomicU64,
    read_only: bool,
    discard: bool,
    write_zeroes: bool,
    memory_alignment: usize,
    wce: AtomicBool,
    d_sense: AtomicBool,
    unit_attention: UnitAttention,
    in_flight: InFlightCounter,
}

/// A SCSI disk (QEMU's `scsi-hd`).
pub struct ScsiHd {
    id: String,
    state: Arc<HdState>,
}

impl std::fmt::Debug for ScsiHd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScsiHd")
            .field("id", &self.id)
            .field("blocks", &self.state.blocks.load(Ordering::Relaxed))
            .finish()
    }
}

impl ScsiHd {
    /// A disk `id` over `drive`. It powers on with a POWER ON/RESET unit attention
    /// pending, as a real disk does.
    ///
    /// # Errors
    ///
    /// [`Error::Option`] for a block size other than 512 or 4096, or a serial longer
    /// than 36 bytes or not printable ASCII.
    pub fn new(id: impl Into<String>, drive: Drive, options: HdOptions) -> Result<ScsiHd> {
        let id = id.into();
        if ![512, 4096].contains(&options.block_size) {
            return Err(Error::Option {
                device: id,
                reason: format!(
                    "logical_block_size {} must be 512 or 4096",
                    options.block_size
                ),
            });
        }
        if options.serial.len() > 36 || !options.serial.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(Error::Option {
                device: id,
                reason: format!(
                    "serial {:?} must be at most 36 printable ASCII characters",
                    options.serial
                ),
            });
        }
        let info = drive.backend().info().clone();
        let device_id = if options.serial.is_empty() {
            id.clone()
        } else {
            options.serial.clone()
        };
        let state = HdState {
            blocks: AtomicU64::new(info.size / u64::from(options.block_size)),
            read_only: info.read_only,
            discard: info.discard,
            write_zeroes: info.write_zeroes,
            memory_alignment: usize::try_from(info.memory_alignment.max(1)).unwrap_or(4096),
            wce: AtomicBool::new(options.write_cache),
            d_sense: AtomicBool::new(false),
            unit_attention: UnitAttention::with(Sense::POWER_ON_RESET),
            in_flight: InFlightCounter::default(),
            drive,
            options,
            device_id,
        };
        Ok(ScsiHd {
            id,
            state: Arc::new(state),
        })
    }

    /// The drive.
    pub fn drive(&self) -> &Drive {
        &self.state.drive
    }

    /// The capacity in logical blocks.
    pub fn blocks(&self) -> u64 {
        self.state.blocks.load(Ordering::Acquire)
    }

    /// Whether the write cache is enabled (MODE SELECT's WCE bit).
    pub fn write_cache(&self) -> bool {
        self.state.wce.load(Ordering::Acquire)
    }

    /// The image was resized to `bytes` (`block_resize`): see [`HdControl::set_capacity`].
    pub fn set_capacity(&self, bytes: u64) {
        self.control().set_capacity(bytes);
    }

    /// A handle on the disk's state that outlives the borrow of the disk (the bus owns
    /// the disk once plugged): for `block_resize`.
    pub fn control(&self) -> HdControl {
        HdControl(self.state.clone())
    }
}

/// A handle on a scsi-hd's state, kept by whoever resizes the image.
#[derive(Clone)]
pub struct HdControl(Arc<HdState>);

impl std::fmt::Debug for HdControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HdControl")
            .field("device", &self.0.device_id)
            .finish()
    }
}

impl HdControl {
    /// The image was resized to `bytes`: the new capacity takes effect and a CAPACITY
    /// DATA HAS CHANGED unit attention is raised.
    pub fn set_capacity(&self, bytes: u64) {
        let blocks = bytes / u64::from(self.0.options.block_size);
        self.0.blocks.store(blocks, Ordering::Release);
        self.0.set_unit_attention(Sense::CAPACITY_CHANGED);
    }
}

impl HdState {
    /// Delivers a counted command's response, then drops the count: the response is
    /// delivered first, so a drain callback (hot-unplug) never runs ahead of the last
    /// response.
    fn respond(&self, done: ScsiDone, resp: ScsiResponse) {
        done.complete(resp);
        self.in_flight.leave();
    }

    fn set_unit_attention(&self, sense: Sense) {
        self.unit_attention.set(sense);
    }

    fn view(&self) -> DiskView<'_> {
        DiskView {
            blocks: self.blocks.load(Ordering::Acquire),
            block_size: self.options.block_size,
            read_only: self.read_only,
            discard: self.discard,
            wce: self.wce.load(Ordering::Acquire),
            d_sense: self.d_sense.load(Ordering::Acquire),
            vendor: &self.options.vendor,
            product: &self.options.product,
            revision: &self.options.revision,
            serial: &self.options.serial,
            device_id: &self.device_id,
        }
    }

    fn check(&self, sense: Sense) -> ScsiResponse {
        ScsiResponse::check(sense, self.d_sense.load(Ordering::Acquire))
    }

    /// `lba`..`lba + blocks` lies within the disk.
    fn in_range(&self, lba: u64, blocks: u64) -> bool {
        lba.checked_add(blocks)
            .is_some_and(|end| end <= self.blocks.load(Ordering::Acquire))
    }

    fn bytes(&self, blocks: u64) -> u64 {
        blocks * u64::from(self.options.block_size)
    }
}

impl Device for ScsiHd {
    fn id(&self) -> &str {
        &self.id
    }

    /// A device reset (LUN reset, bus reset): POWER ON/RESET unit attention. Commands
    /// in flight are the transport's to abort (it tracks them).
    fn reset(&self) {
        self.state.set_unit_attention(Sense::POWER_ON_RESET);
        self.state.d_sense.store(false, Ordering::Release);
        self.state
            .wce
            .store(self.state.options.write_cache, Ordering::Release);
    }
}

impl ScsiDevice for ScsiHd {
    fn execute(&self, ctx: &AioContext, req: ScsiRequest, done: ScsiDone) -> Option<ScsiInFlight> {
        let st = &self.state;
        if !st.in_flight.try_enter() {
            done.complete(ScsiResponse::host(HostStatus::BadTarget));
            return None;
        }
        let cmd = match cdb::parse(&req.cdb) {
            Ok(cmd) => cmd,
            Err(sense) => {
                st.respond(done, st.check(sense));
                return None;
            }
        };
        match emulate(st, &req, cmd) {
            Emulated::Done(resp) => {
                st.respond(done, resp);
                None
            }
            Emulated::Io(steps) => Some(Job::start(ctx, st.clone(), steps, done)),
        }
    }

    fn take_unit_attention(&self) -> Option<Sense> {
        self.state.unit_attention.take()
    }

    fn descriptor_sense(&self) -> bool {
        self.state.d_sense.load(Ordering::Acquire)
    }

    fn in_flight(&self) -> &InFlightCounter {
        &self.state.in_flight
    }
}

/// What a command turns into.
enum Emulated {
    /// Complete with this now.
    Done(ScsiResponse),
    /// Run these block operations in order, then GOOD.
    Io(Steps),
}

/// A command's block operations: `list` stored last first (the next one is popped off
/// the end), then a FLUSH if `then_flush`. Inline for every common command (one
/// operation, maybe a flush), and small, since it moves with its job.
struct Steps {
    list: SmallVec<[Step; 1]>,
    then_flush: bool,
}

impl Steps {
    /// `step`, then a FLUSH if `then_flush`.
    fn one(step: Step, then_flush: bool) -> Emulated {
        Emulated::Io(Steps {
            list: smallvec::smallvec![step],
            then_flush,
        })
    }

    /// `list` in order of execution.
    fn in_order(mut list: SmallVec<[Step; 1]>) -> Emulated {
        list.reverse();
        Emulated::Io(Steps {
            list,
            then_flush: false,
        })
    }

    fn pop(&mut self) -> Option<Step> {
        self.list
            .pop()
            .or_else(|| std::mem::take(&mut self.then_flush).then_some(Step::Flush))
    }
}

/// One block operation of a command.
enum Step {
    Dma {
        mem: DmaMemory,
        dir: DmaDirection,
        offset: u64,
        sg: SgList,
    },
    Flush,
    Op(Rc<dyn Fn() -> BlockOp>),
}

/// Runs `cmd`: emulated commands to a response, I/O commands to their steps.
fn emulate(st: &HdState, req: &ScsiRequest, cmd: Command) -> Emulated {
    use Emulated::Done;
    let result = |r: std::result::Result<Vec<u8>, Sense>, alloc: u32| match r {
        Ok(data) => Done(data_in(req, &data, alloc)),
        Err(sense) => Done(st.check(sense)),
    };
    match cmd {
        Command::TestUnitReady | Command::StartStopUnit { .. } => Done(ScsiResponse::good(0)),
        Command::RequestSense { desc, alloc } => {
            // A unit attention is reported (and cleared) by the bus before we get here;
            // with autosense nothing else is kept.
            Done(data_in(req, &Sense::NO_SENSE.encode(desc), alloc))
        }
        Command::Inquiry { evpd, page, alloc } => {
            result(pages::inquiry(&st.view(), evpd, page), alloc)
        }
        Command::ReportLuns { alloc, .. } => {
            // Alone (no bus), the disk reports itself as LUN 0.
            result(Ok(pages::report_luns(std::iter::once(0))), alloc)
        }
        Command::ReadCapacity10 => result(Ok(pages::read_capacity_10(&st.view())), 8),
        Command::ReadCapacity16 { alloc } => result(Ok(pages::read_capacity_16(&st.view())), alloc),
        Command::ModeSense {
            ten,
            dbd,
            pc,
            page,
            alloc,
        } => result(pages::mode_sense(&st.view(), ten, dbd, pc, page), alloc),
        Command::ModeSelect { ten, len } => {
            let Some(data) = req.data.read_out(len as usize) else {
                return Done(ScsiResponse::host(HostStatus::Overrun));
            };
            match pages::mode_select(&st.view(), ten, &data) {
                Ok(sel) => {
                    st.wce.store(sel.wce, Ordering::Release);
                    st.d_sense.store(sel.d_sense, Ordering::Release);
                    Done(ScsiResponse::good(u64::from(len)))
                }
                Err(sense) => Done(st.check(sense)),
            }
        }
        Command::Read { lba, blocks, .. } | Command::Write { lba, blocks, .. } => {
            let write = matches!(cmd, Command::Write { .. });
            let fua = matches!(cmd, Command::Write { fua: true, .. });
            if !st.in_range(lba, u64::from(blocks)) {
                return Done(st.check(Sense::LBA_OUT_OF_RANGE));
            }
            if write && st.read_only {
                return Done(st.check(Sense::WRITE_PROTECTED));
            }
            let bytes = st.bytes(u64::from(blocks));
            if bytes == 0 {
                return Done(ScsiResponse::good(0));
            }
            let want = if write {
                DataDirection::ToDevice
            } else {
                DataDirection::FromDevice
            };
            if req.data.dir != want || req.data.len() < bytes {
                return Done(ScsiResponse::host(HostStatus::Overrun));
            }
            let dir = if write {
                DmaDirection::Write
            } else {
                DmaDirection::Read
            };
            let dma = Step::Dma {
                mem: req.data.mem.clone(),
                dir,
                offset: st.bytes(lba),
                sg: req.data.prefix(bytes),
            };
            // Write-through (WCE off) and FUA writes are durable before GOOD.
            Steps::one(dma, write && (fua || !st.wce.load(Ordering::Acquire)))
        }
        Command::Verify { lba, blocks } => {
            if !st.in_range(lba, u64::from(blocks)) {
                return Done(st.check(Sense::LBA_OUT_OF_RANGE));
            }
            Done(ScsiResponse::good(0))
        }
        Command::SynchronizeCache { lba, blocks } => {
            if !st.in_range(lba, u64::from(blocks)) {
                return Done(st.check(Sense::LBA_OUT_OF_RANGE));
            }
            Steps::one(Step::Flush, false)
        }
        Command::Unmap { len } => unmap(st, req, len),
        Command::WriteSame {
            lba,
            blocks,
            unmap,
            ndob,
        } => write_same(st, req, lba, blocks, unmap, ndob),
    }
}

/// UNMAP: checks the whole parameter list, then discards each range in order.
fn unmap(st: &HdState, req: &ScsiRequest, len: u32) -> Emulated {
    use Emulated::Done;
    if st.read_only {
        return Done(st.check(Sense::WRITE_PROTECTED));
    }
    if len == 0 {
        return Done(ScsiResponse::good(0));
    }
    if len < 8 {
        return Done(st.check(Sense::INVALID_PARAM_LEN));
    }
    let Some(p) = req.data.read_out(len as usize) else {
        return Done(ScsiResponse::host(HostStatus::Overrun));
    };
    let data_len = usize::from(u16::from_be_bytes([p[0], p[1]]));
    let desc_len = usize::from(u16::from_be_bytes([p[2], p[3]]));
    if data_len + 2 > p.len() || desc_len % 16 != 0 || desc_len > p.len() - 8 {
        return Done(st.check(Sense::INVALID_PARAM_LEN));
    }
    if desc_len / 16 > MAX_UNMAP_DESCRIPTORS as usize {
        return Done(st.check(Sense::INVALID_PARAM));
    }
    let mut steps = SmallVec::new();
    for d in p[8..8 + desc_len].chunks_exact(16) {
        let mut lba = [0u8; 8];
        lba.copy_from_slice(&d[0..8]);
        let lba = u64::from_be_bytes(lba);
        let n = u32::from_be_bytes([d[8], d[9], d[10], d[11]]);
        if !st.in_range(lba, u64::from(n)) {
            return Done(st.check(Sense::LBA_OUT_OF_RANGE));
        }
        if n > MAX_UNMAP_BLOCKS {
            return Done(st.check(Sense::INVALID_PARAM));
        }
        if n == 0 || !st.discard {
            // UNMAP is advisory: without discard support the data simply stays.
            continue;
        }
        let (offset, len) = (st.bytes(lba), st.bytes(u64::from(n)));
        steps.push(Step::Op(Rc::new(move || BlockOp::Discard { offset, len })));
    }
    if steps.is_empty() {
        return Done(ScsiResponse::good(u64::from(len)));
    }
    Steps::in_order(steps)
}

/// WRITE SAME: zeroes (punching holes when UNMAP is set and the backend can), or a
/// repeated non-zero block.
fn write_same(
    st: &HdState,
    req: &ScsiRequest,
    lba: u64,
    blocks: u32,
    unmap: bool,
    ndob: bool,
) -> Emulated {
    use Emulated::Done;
    if st.read_only {
        return Done(st.check(Sense::WRITE_PROTECTED));
    }
    if blocks > MAX_WRITE_SAME_BLOCKS {
        return Done(st.check(Sense::INVALID_FIELD));
    }
    if !st.in_range(lba, u64::from(blocks)) {
        return Done(st.check(Sense::LBA_OUT_OF_RANGE));
    }
    let bs = st.options.block_size as usize;
    let pattern = if ndob {
        vec![0u8; bs]
    } else {
        match req.data.read_out(bs) {
            Some(p) => p,
            None => return Done(ScsiResponse::host(HostStatus::Overrun)),
        }
    };
    let (offset, len) = (st.bytes(lba), st.bytes(u64::from(blocks)));
    let zero = pattern.iter().all(|&b| b == 0);
    let step = if zero && st.write_zeroes {
        Step::Op(Rc::new(move || BlockOp::WriteZeroes { offset, len, unmap }))
    } else {
        if len > MAX_PATTERN_BYTES {
            return Done(st.check(Sense::INVALID_FIELD));
        }
        let align = st.memory_alignment;
        Step::Op(Rc::new(move || {
            let mut buf = AlignedBuf::zeroed(len as usize, align);
            for chunk in buf.chunks_exact_mut(pattern.len()) {
                chunk.copy_from_slice(&pattern);
            }
            BlockOp::Write {
                offset,
                bufs: IoBuffers::from_owned(buf),
            }
        }))
    };
    Steps::one(step, !st.wce.load(Ordering::Acquire))
}

/// The sense for a failed block operation (QEMU's `scsi_sense_from_errno`).
fn sense_from_errno(errno: Errno) -> Sense {
    match errno {
        Errno::ENOSPC => Sense::SPACE_ALLOC_FAILED,
        Errno::EROFS => Sense::WRITE_PROTECTED,
        Errno::EINVAL => Sense::INVALID_FIELD,
        Errno::EOPNOTSUPP => Sense::INVALID_FIELD,
        Errno(libc::ENOMEM) => Sense::TARGET_FAILURE,
        _ => Sense::IO_ERROR,
    }
}

/// An I/O command running its steps in order. It moves into each step's completion
/// closure (one allocation per block operation, as for virtio-blk), so it has no box
/// of its own.
struct Job {
    ctx: AioContext,
    state: Arc<HdState>,
    flight: ScsiInFlight,
    steps: Steps,
    transferred: u64,
    done: ScsiDone,
}

impl Job {
    fn start(ctx: &AioContext, state: Arc<HdState>, steps: Steps, done: ScsiDone) -> ScsiInFlight {
        let flight = ScsiInFlight::default();
        let job = Job {
            ctx: ctx.clone(),
            state,
            flight: flight.clone(),
            steps,
            transferred: 0,
            done,
        };
        job.next();
        flight
    }

    /// Starts the next step, or completes.
    fn next(mut self) {
        if let Some(host) = self.flight.canceled() {
            return self.finish(ScsiResponse::host(host));
        }
        let Some(step) = self.steps.pop() else {
            let moved = self.transferred;
            return self.finish(ScsiResponse::good(moved));
        };
        let drive = self.state.drive.clone();
        let ctx = self.ctx.clone();
        let flight = self.flight.clone();
        let req = match step {
            Step::Dma {
                mem,
                dir,
                offset,
                sg,
            } => drive.dma(
                &ctx,
                &mem,
                dir,
                offset,
                sg,
                Box::new(move |res| self.step_done(res, true)),
            ),
            Step::Flush => drive.op(
                &ctx,
                || BlockOp::Flush,
                Box::new(move |res| self.step_done(res, false)),
            ),
            Step::Op(make) => drive.op(
                &ctx,
                move || make(),
                Box::new(move |res| self.step_done(res, false)),
            ),
        };
        flight.started(req);
    }

    fn step_done(mut self, res: std::result::Result<u64, Errno>, is_dma: bool) {
        self.flight.step_done();
        match res {
            Ok(n) => {
                if is_dma {
                    self.transferred += n;
                }
                self.next()
            }
            Err(e) if e == Errno::ECANCELED => {
                let host = self.flight.canceled().unwrap_or(HostStatus::Aborted);
                self.finish(ScsiResponse::host(host))
            }
            Err(e) => {
                tracing::debug!(device = %self.state.device_id, error = %e, "scsi-hd I/O failed");
                let resp = self.state.check(sense_from_errno(e));
                self.finish(resp)
            }
        }
    }

    fn finish(self, resp: ScsiResponse) {
        let Job {
            state,
            flight,
            done,
            ..
        } = self;
        state.respond(done, resp);
        flight.finish();
    }
}
