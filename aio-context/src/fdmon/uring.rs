//! io_uring: [`Ring`] runs operations (shared by both backends), [`UringMonitor`] also polls fds.
//!
//! `user_data` layout: `[tag:2][generation:30][key:32]`. The tag tells a poll registration
//! (key into `UringMonitor::regs`), an operation (key into `Ring::ops`) and internal entries
//! (timeouts, cancels, poll removals: tag 0, ignored). Every arm/submit takes a fresh generation,
//! and a poll CQE counts only if its `user_data` is the one its registration is armed with, so
//! late CQEs of a removed or changed poll are ignored even when the key or fd is reused.
//!
//! Polls are one-shot and re-armed at the start of the next `wait()` (after the handler ran):
//! POLL_ADD checks readiness when armed, so a still-ready fd is reported again (level-triggered).
//! Multishot polls only fire on wake-ups, i.e. are edge-triggered, which QEMU's handlers don't
//! expect.
//!
//! Task work (how the kernel finishes most completions in the submitting thread's context):
//! rings are set up with `COOP_TASKRUN | TASKRUN_FLAG | SINGLE_ISSUER` (no IPI to interrupt a
//! running thread; one submitting thread, which every ring here has: a monitor is `!Send` and
//! created, used and dropped by its context's thread), and [`UringMonitor`]'s ring also with
//! `DEFER_TASKRUN` (as fio does): completions then wait as task work until the owner enters
//! with `GETEVENTS`, which the blocking wait always does. A non-blocking poll still skips the
//! syscall when idle, which stays correct because `TASKRUN_FLAG` makes the kernel raise
//! `IORING_SQ_TASKRUN` in the SQ flags while task work is pending, and [`Ring::idle`] reads it.
//! The epoll backend's side ring gets no `DEFER_TASKRUN`: its completions are noticed through
//! the eventfd, and with deferred task work the CQE would only be posted by an enter that the
//! eventfd wake-up path does not make. Each flag is dropped again if the kernel refuses it
//! (`EINVAL`: older than 6.1, 6.0, 5.19, 5.18); `AIO_URING_DEFER_TASKRUN=0` turns
//! `DEFER_TASKRUN` off.

use std::collections::HashMap;
use std::io;
use std::mem;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use slab::Slab;

use super::fixed::{FixedBuffers, Region};
use super::fixed_files::{FixedFiles, Slot};
use super::{Completion, Interest, Readiness, deadline, is_errno, remaining};
use crate::fixed_file::Shared;

/// Submission queue size (QEMU uses 128 too); the CQ is larger so bursts rarely overflow.
const SQ_ENTRIES: u32 = 128;
const CQ_ENTRIES: u32 = 512;

const TAG_INTERNAL: u64 = 0;
const TAG_POLL: u64 = 1;
const TAG_OP: u64 = 2;
const GEN_MASK: u32 = (1 << 30) - 1;
/// `user_data` of internal entries, whose CQEs are ignored.
const UD_INTERNAL: u64 = TAG_INTERNAL << 62;

fn encode(tag: u64, generation: u32, key: usize) -> u64 {
    debug_assert!(key <= u32::MAX as usize);
    (tag << 62) | (u64::from(generation & GEN_MASK) << 32) | key as u64
}

/// `(tag, generation, key)`.
fn decode(user_data: u64) -> (u64, u32, usize) {
    let generation = (user_data >> 32) as u32 & GEN_MASK;
    (
        user_data >> 62,
        generation,
        (user_data & 0xffff_ffff) as usize,
    )
}

struct Op {
    generation: u32,
    callback: Box<dyn FnOnce(i32)>,
}

/// An io_uring plus the callbacks of the operations in flight on it.
pub(super) struct Ring {
    ring: IoUring,
    /// Registered buffers and their owners; after `ring`, so the ring is closed before an
    /// owner is dropped.
    fixed: FixedBuffers,
    /// Registered files (weak references only).
    files: FixedFiles,
    ops: Slab<Op>,
    generation: u32,
    /// `IORING_FEAT_EXT_ARG`: `io_uring_enter` takes a timeout.
    ext_arg: bool,
    /// CQEs already taken off the CQ (to make room), for `reap` to handle first.
    backlog: Vec<cqueue::Entry>,
    /// The fallback `IORING_OP_TIMEOUT`'s timespec, at a stable address until submitted.
    timeout: Box<types::Timespec>,
    /// The opcodes this kernel supports.
    probe: io_uring::Probe,
    /// Set up with `DEFER_TASKRUN`.
    defer_taskrun: bool,
    /// `io_uring_enter` calls made so far (for tests of the submission policy).
    #[cfg(test)]
    enters: u64,
}

/// Ring setups to try, most capable first; each drops what the previous one added.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    /// `DEFER_TASKRUN | SINGLE_ISSUER | COOP_TASKRUN | TASKRUN_FLAG | SUBMIT_ALL` (6.1).
    Defer,
    /// `SINGLE_ISSUER | COOP_TASKRUN | TASKRUN_FLAG | SUBMIT_ALL` (6.0).
    SingleIssuer,
    /// `COOP_TASKRUN | TASKRUN_FLAG | SUBMIT_ALL` (5.19).
    Coop,
    /// `SUBMIT_ALL` (5.18): keeps submitting past an SQE that fails to start.
    SubmitAll,
    /// Only the CQ size.
    Plain,
}

impl Setup {
    const ALL: [Setup; 5] = [
        Setup::Defer,
        Setup::SingleIssuer,
        Setup::Coop,
        Setup::SubmitAll,
        Setup::Plain,
    ];

    fn build(self, sq: u32, cq: u32, sqpoll: Option<u32>) -> io::Result<IoUring> {
        let mut builder = IoUring::builder();
        builder.setup_cqsize(cq);
        if let Some(idle_ms) = sqpoll {
            builder.setup_sqpoll(idle_ms);
        }
        if self != Setup::Plain {
            builder.setup_submit_all();
        }
        if matches!(self, Setup::Defer | Setup::SingleIssuer | Setup::Coop) {
            // TASKRUN_FLAG is what keeps `Ring::idle` honest (see the module docs).
            builder.setup_coop_taskrun().setup_taskrun_flag();
        }
        if matches!(self, Setup::Defer | Setup::SingleIssuer) {
            builder.setup_single_issuer();
        }
        if self == Setup::Defer {
            builder.setup_defer_taskrun();
        }
        builder.build(sq)
    }
}

/// Whether `AIO_URING_DEFER_TASKRUN` leaves `DEFER_TASKRUN` on (anything but `0`/`off`).
fn defer_taskrun_allowed() -> bool {
    !matches!(
        std::env::var("AIO_URING_DEFER_TASKRUN").as_deref(),
        Ok("0" | "off" | "no" | "false")
    )
}

impl Ring {
    /// A ring with `sq`/`cq` entries that supports `ASYNC_CANCEL`, the `extra` opcodes and, if
    /// `io_uring_enter` can't time out by itself, `IORING_OP_TIMEOUT`; with `DEFER_TASKRUN` if
    /// `defer_taskrun` and the kernel has it. Must be called on the thread that will use it
    /// (`SINGLE_ISSUER` binds the ring to it).
    ///
    /// `sqpoll: Some(idle_ms)` gives the ring a kernel submission thread
    /// (`IORING_SETUP_SQPOLL`) that sleeps after `idle_ms` without work: submitting is
    /// then a store to the SQ (no syscall while the thread is awake). The kernel refuses
    /// the task-work flags with it, so such a ring gets `SUBMIT_ALL` only. Not for a ring
    /// that watches fds (see `epoll`'s side ring).
    pub(super) fn new(
        sq: u32,
        cq: u32,
        extra: &[u8],
        defer_taskrun: bool,
        sqpoll: Option<u32>,
    ) -> io::Result<Ring> {
        let mut refused = None;
        let mut built = None;
        for setup in Setup::ALL {
            if setup == Setup::Defer && !defer_taskrun {
                continue;
            }
            match setup.build(sq, cq, sqpoll) {
                // A flag this kernel does not know: try with fewer.
                Err(e) if is_errno(&e, libc::EINVAL) => refused = Some(e),
                Err(e) => return Err(e),
                Ok(ring) => {
                    built = Some((ring, setup));
                    break;
                }
            }
        }
        let Some((ring, setup)) = built else {
            return Err(refused.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EINVAL)));
        };
        let unsupported = |what: String| io::Error::new(io::ErrorKind::Unsupported, what);
        if !ring.params().is_feature_nodrop() {
            return Err(unsupported("io_uring lacks IORING_FEAT_NODROP".into()));
        }
        let ext_arg = ring.params().is_feature_ext_arg();
        let mut probe = io_uring::Probe::new();
        ring.submitter().register_probe(&mut probe)?;
        let timeout = (!ext_arg).then_some(opcode::Timeout::CODE);
        for &code in extra
            .iter()
            .chain(&[opcode::AsyncCancel::CODE])
            .chain(&timeout)
        {
            if !probe.is_supported(code) {
                return Err(unsupported(format!("io_uring lacks opcode {code}")));
            }
        }
        Ok(Ring {
            ring,
            fixed: FixedBuffers::default(),
            files: FixedFiles::default(),
            ops: Slab::new(),
            generation: 0,
            ext_arg,
            backlog: Vec::new(),
            timeout: Box::new(types::Timespec::new()),
            probe,
            defer_taskrun: setup == Setup::Defer,
            #[cfg(test)]
            enters: 0,
        })
    }

    /// Whether the ring was set up with `DEFER_TASKRUN`.
    #[cfg(test)]
    pub(super) fn defers_task_work(&self) -> bool {
        self.defer_taskrun
    }

    /// Whether the kernel supports `opcode` (from the probe taken when the ring was built).
    pub(super) fn supports_opcode(&self, opcode: u8) -> bool {
        self.probe.is_supported(opcode)
    }

    /// Queues an `ASYNC_CANCEL` of the op submitted as `user_data` if it is still in flight;
    /// its callback then runs with the op's own result (`-ECANCELED` if the cancel won).
    /// Returns whether the op was in flight.
    pub(super) fn cancel(&mut self, user_data: u64) -> io::Result<bool> {
        let (tag, generation, key) = decode(user_data);
        let live = tag == TAG_OP
            && self
                .ops
                .get(key)
                .is_some_and(|op| op.generation == generation);
        if !live {
            return Ok(false);
        }
        let cancel = opcode::AsyncCancel::new(user_data)
            .build()
            .user_data(UD_INTERNAL);
        // SAFETY: an ASYNC_CANCEL references no memory.
        unsafe { self.push(&cancel) }?;
        Ok(true)
    }

    pub(super) fn submitter(&self) -> io_uring::Submitter<'_> {
        self.ring.submitter()
    }

    /// The registered buffer that holds `[ptr, ptr + len)` of `region` (see `fixed`).
    pub(super) fn fixed_buffer(
        &mut self,
        region: &Region<'_>,
        ptr: *const u8,
        len: usize,
    ) -> Option<u16> {
        self.fixed
            .slot_for(&self.ring.submitter(), region, ptr, len)
    }

    /// `file`'s slot in the ring's table of registered files (see `fixed_files`).
    pub(super) fn fixed_file(&mut self, file: &Arc<Shared>) -> Option<Slot> {
        self.files.slot_for(&self.ring.submitter(), file)
    }

    /// Empties the slots of registered files that are gone.
    pub(super) fn release_dead_files(&mut self) {
        self.files.release_dead(&self.ring.submitter());
    }

    /// How many files the ring has registered.
    #[cfg(test)]
    pub(super) fn fixed_files(&self) -> usize {
        self.files.len()
    }

    pub(super) fn in_flight(&self) -> usize {
        self.ops.len()
    }

    /// How many `io_uring_enter` calls this ring has made.
    #[cfg(test)]
    pub(super) fn enters(&self) -> u64 {
        self.enters
    }

    fn next_generation(&mut self) -> u32 {
        self.generation = self.generation.wrapping_add(1) & GEN_MASK;
        self.generation
    }

    /// Queues `entry`, submitting queued entries first if the SQ is full.
    ///
    /// # Safety
    ///
    /// Whatever `entry` references must stay valid until the kernel is done with it.
    unsafe fn push(&mut self, entry: &squeue::Entry) -> io::Result<()> {
        loop {
            // SAFETY: forwarded from the caller.
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return Ok(());
            }
            // Nothing taken and still full: the kernel refuses more for now. (With a
            // submission thread, `submit` takes nothing when the thread emptied the SQ
            // in the meantime: then the push is retried.)
            if self.submit()? == 0 && self.ring.submission().is_full() {
                return Err(io::Error::from_raw_os_error(libc::EBUSY));
            }
        }
    }

    /// Whether a syscall would do nothing: no SQE queued, no CQE held back by the kernel (an
    /// overflowed CQ is only flushed by `io_uring_enter`), and no task work waiting for this
    /// thread (`IORING_SQ_TASKRUN`, raised with `TASKRUN_FLAG` while `COOP_TASKRUN` or
    /// `DEFER_TASKRUN` work is pending; only an enter runs deferred work). In the last two
    /// cases io-uring's `submit` adds `GETEVENTS` itself. A flag raised just after this
    /// check is like a CQE posted just after it: the next poll sees it.
    fn idle(&mut self) -> bool {
        let sq = self.ring.submission();
        sq.is_empty() && !sq.cq_overflow() && !sq.taskrun()
    }

    /// Whether the ring has something for the loop without any waiting: completions on the
    /// CQ, completions held back by the kernel (deferred task work, an overflowed CQ), or
    /// SQEs queued and not yet submitted. A busy poll stops spinning on it.
    pub(super) fn has_work(&mut self) -> bool {
        !self.backlog.is_empty() || !self.idle() || !self.ring.completion().is_empty()
    }

    /// Runs deferred task work now (an enter with `GETEVENTS`), so that the kernel's
    /// completion side of what was just submitted (the removal of a poll, which drops its
    /// reference to the file) is done before this returns. Without `DEFER_TASKRUN` the
    /// submitting syscall already ran it on its way out.
    pub(super) fn run_task_work(&mut self) -> io::Result<()> {
        if self.defer_taskrun && self.ring.submission().taskrun() {
            self.submit()?;
        }
        Ok(())
    }

    /// Hands the queued SQEs to the kernel without waiting; returns how many it took.
    pub(super) fn submit(&mut self) -> io::Result<usize> {
        if self.idle() {
            return Ok(0);
        }
        loop {
            #[cfg(test)]
            {
                self.enters += 1;
            }
            match self.ring.submit() {
                Err(e) if is_errno(&e, libc::EINTR) => {}
                // Completions back up; take them off the CQ and retry.
                Err(e) if (is_errno(&e, libc::EBUSY) || is_errno(&e, libc::EAGAIN)) => {
                    if self.stash() == 0 {
                        return Err(e);
                    }
                }
                res => return res,
            }
        }
    }

    /// Moves the CQ's entries to the backlog; returns how many.
    fn stash(&mut self) -> usize {
        let before = self.backlog.len();
        self.backlog.extend(self.ring.completion());
        self.backlog.len() - before
    }

    /// See [`super::FdMonitor::submit`].
    ///
    /// # Safety
    ///
    /// As [`super::FdMonitor::submit`].
    /// The callback is `on_complete(state, result)`; `state` is boxed only once the entry is
    /// queued, and given back if it cannot be.
    pub(super) unsafe fn submit_op<T: 'static>(
        &mut self,
        entry: squeue::Entry,
        flags: squeue::Flags,
        state: T,
        on_complete: fn(T, i32),
    ) -> Result<u64, (io::Error, T)> {
        let key = self.ops.vacant_key();
        if key > u32::MAX as usize {
            return Err((io::Error::from_raw_os_error(libc::ENOSPC), state));
        }
        let generation = self.next_generation();
        let user_data = encode(TAG_OP, generation, key);
        // The ring owns the SQE flags: a caller's IO_LINK / IO_HARDLINK would chain our
        // own entries (poll re-arms, timeouts) to theirs, SKIP_SUCCESS would lose the one
        // CQE the callback waits for. io-uring's public API can clear the flags but not
        // read them, so they are cleared rather than checked. `flags` are the ones a
        // caller may ask for (`OpOptions`): `ASYNC` changes where the op runs,
        // `FIXED_FILE` what the fd field names, neither which CQEs come back.
        let entry = entry.clear_flags().user_data(user_data).flags(flags);
        // SAFETY: the caller keeps what `entry` references valid until the callback is handed
        // out or dropped, which `reap`/`drop` do only after the op's (single) CQE. `push`
        // only hands entries to the kernel, never reaps, so the op is in `ops` (below)
        // before its CQE can be looked at.
        if let Err(e) = unsafe { self.push(&entry) } {
            return Err((e, state));
        }
        let inserted = self.ops.insert(Op {
            generation,
            callback: Box::new(move |res| on_complete(state, res)),
        });
        debug_assert_eq!(inserted, key);
        Ok(user_data)
    }

    /// Submits and waits up to `timeout` (`None`: no limit) for a CQE. `Ok(true)`: timed out.
    pub(super) fn enter(&mut self, timeout: Option<Duration>) -> io::Result<bool> {
        let res = match timeout {
            _ if !self.backlog.is_empty() => self.ring.submit(),
            // Nothing to hand over, no task work pending (deferred or cooperative: see
            // `idle`) and no wait: completions are read straight from the CQ, so skip the
            // syscall (QEMU's `need_wait` does the same). This is most of a non-blocking
            // poll's cost. Otherwise `submit` enters, with GETEVENTS if task work waits.
            Some(t) if t.is_zero() && self.idle() => return Ok(false),
            Some(t) if t.is_zero() => self.ring.submit(),
            None => self.ring.submit_and_wait(1),
            Some(t) if self.ext_arg => {
                let ts = types::Timespec::from(t);
                let args = types::SubmitArgs::new().timespec(&ts);
                self.ring.submitter().submit_with_args(1, &args)
            }
            Some(t) => {
                // Completes after `t` or the next CQE, whichever is first: never lingers.
                *self.timeout = types::Timespec::from(t);
                let entry = opcode::Timeout::new(&*self.timeout)
                    .count(1)
                    .build()
                    .user_data(UD_INTERNAL);
                // SAFETY: the kernel reads the timespec when the SQE is submitted; it lives in
                // a box owned by this ring, and is only changed before pushing a new timeout.
                unsafe { self.push(&entry) }?;
                self.ring.submit_and_wait(1)
            }
        };
        #[cfg(test)]
        {
            self.enters += 1;
        }
        match res {
            Ok(_) => Ok(false),
            Err(e) if is_errno(&e, libc::ETIME) => Ok(true),
            Err(e) if is_errno(&e, libc::EBUSY) || is_errno(&e, libc::EAGAIN) => {
                self.stash();
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Takes every CQE: finished ops go to `completions`, poll CQEs to `on_poll(user_data, res)`,
    /// internal ones are dropped.
    pub(super) fn reap(
        &mut self,
        completions: &mut Vec<Completion>,
        mut on_poll: impl FnMut(u64, i32),
    ) {
        loop {
            self.stash();
            if self.backlog.is_empty() {
                // With NODROP, CQEs that did not fit wait in the kernel until an enter with
                // GETEVENTS (which `submit` adds while the CQ is marked overflowed).
                if !self.ring.submission().cq_overflow() || self.submit().is_err() {
                    return;
                }
                if self.stash() == 0 {
                    return;
                }
            }
            for cqe in self.backlog.drain(..) {
                let (tag, generation, key) = decode(cqe.user_data());
                let ours = |op: &Op| op.generation == generation;
                match tag {
                    // A multishot op's intermediate CQEs are not supported: only the last counts.
                    TAG_OP if !cqueue::more(cqe.flags()) && self.ops.get(key).is_some_and(ours) => {
                        let callback = self.ops.remove(key).callback;
                        let result = cqe.result();
                        completions.push(Completion { callback, result });
                    }
                    TAG_POLL => on_poll(cqe.user_data(), cqe.result()),
                    _ => {}
                }
            }
        }
    }
}

impl Ring {
    /// Gives up on ops the kernel may still run: their callbacks (and the buffers they
    /// own) and the registered buffers' owners stay allocated and mapped forever.
    fn leak(&mut self) {
        mem::forget(mem::take(&mut self.ops));
        mem::forget(mem::take(&mut self.fixed));
    }
}

impl Drop for Ring {
    /// Closing the ring with ops in flight would let the kernel write to freed buffers: cancel
    /// every op and wait for all their CQEs, then drop the callbacks uncalled. Cancels are sent
    /// again every second while ops remain. If the ring itself fails, the callbacks (and the
    /// buffers they own) are leaked instead.
    fn drop(&mut self) {
        while !self.ops.is_empty() {
            let targets: Vec<u64> = self
                .ops
                .iter()
                .map(|(key, op)| encode(TAG_OP, op.generation, key))
                .collect();
            for target in targets {
                let cancel = opcode::AsyncCancel::new(target)
                    .build()
                    .user_data(UD_INTERNAL);
                // SAFETY: an ASYNC_CANCEL references no memory.
                if unsafe { self.push(&cancel) }.is_err() {
                    return self.leak();
                }
            }
            let until = deadline(Some(Duration::from_secs(1)));
            while !self.ops.is_empty() && remaining(until) != Some(Duration::ZERO) {
                match self.enter(remaining(until)) {
                    Err(e) if !is_errno(&e, libc::EINTR) => return self.leak(),
                    _ => self.reap(&mut Vec::new(), |_, _| {}),
                }
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PollState {
    /// Queued in `to_arm`.
    ToArm,
    /// A POLL_ADD with this `user_data` is in the kernel.
    Armed(u64),
    /// The poll failed (e.g. the fd was closed); `set()` re-arms.
    Failed,
}

struct PollReg {
    fd: RawFd,
    token: u64,
    interest: Interest,
    state: PollState,
}

/// The io_uring backend: one-shot `POLL_ADD` per fd, re-armed on the next `wait()`.
pub(super) struct UringMonitor {
    ring: Ring,
    regs: Slab<PollReg>,
    by_fd: HashMap<RawFd, usize>,
    /// Registrations to arm at the next `wait()` (stale keys are skipped).
    to_arm: Vec<usize>,
}

impl UringMonitor {
    pub(super) fn new() -> io::Result<UringMonitor> {
        UringMonitor::with_sizes(SQ_ENTRIES, CQ_ENTRIES)
    }

    fn with_sizes(sq: u32, cq: u32) -> io::Result<UringMonitor> {
        let polls = [opcode::PollAdd::CODE, opcode::PollRemove::CODE];
        Ok(UringMonitor {
            ring: Ring::new(sq, cq, &polls, defer_taskrun_allowed(), None)?,
            regs: Slab::new(),
            by_fd: HashMap::new(),
            to_arm: Vec::new(),
        })
    }

    pub(super) fn ring(&self) -> &Ring {
        &self.ring
    }

    pub(super) fn ring_mut(&mut self) -> &mut Ring {
        &mut self.ring
    }

    pub(super) fn set(&mut self, fd: RawFd, token: u64, interest: Interest) -> io::Result<()> {
        if interest.is_empty() {
            if let Some(key) = self.by_fd.remove(&fd) {
                if let PollState::Armed(user_data) = self.regs.remove(key).state {
                    self.unarm(user_data)?;
                    // Now, so that the kernel drops its reference to the file before a close().
                    // Under DEFER_TASKRUN the cancelled poll is freed by task work, which only
                    // an enter with GETEVENTS runs.
                    self.ring.submit()?;
                    self.ring.run_task_work()?;
                }
            }
            return Ok(());
        }
        // libc, not nix: this asks whether a bare number is open, and nix's `fcntl` takes
        // an `AsFd`, i.e. an fd already known to be open.
        // SAFETY: F_GETFD takes no argument and only checks that `fd` is open.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let Some(&key) = self.by_fd.get(&fd) else {
            let reg = PollReg {
                fd,
                token,
                interest,
                state: PollState::ToArm,
            };
            let key = self.regs.insert(reg);
            self.by_fd.insert(fd, key);
            self.to_arm.push(key);
            return Ok(());
        };
        let reg = &mut self.regs[key];
        reg.token = token;
        if reg.interest == interest && reg.state != PollState::Failed {
            return Ok(());
        }
        reg.interest = interest;
        match reg.state {
            PollState::ToArm => {}
            PollState::Armed(user_data) => {
                reg.state = PollState::ToArm;
                self.to_arm.push(key);
                self.unarm(user_data)?;
            }
            PollState::Failed => {
                reg.state = PollState::ToArm;
                self.to_arm.push(key);
            }
        }
        Ok(())
    }

    /// Queues the removal of the poll armed with `user_data` (its late CQE will be stale).
    fn unarm(&mut self, user_data: u64) -> io::Result<()> {
        let remove = opcode::PollRemove::new(user_data)
            .build()
            .user_data(UD_INTERNAL);
        // SAFETY: a POLL_REMOVE references no memory.
        unsafe { self.ring.push(&remove) }
    }

    fn arm_pending(&mut self) -> io::Result<()> {
        while let Some(key) = self.to_arm.pop() {
            let Some(reg) = self.regs.get_mut(key) else {
                continue;
            };
            if reg.state != PollState::ToArm {
                continue;
            }
            let mut mask = libc::POLLHUP | libc::POLLERR;
            if reg.interest.read {
                mask |= libc::POLLIN;
            }
            if reg.interest.write {
                mask |= libc::POLLOUT;
            }
            let user_data = encode(TAG_POLL, self.ring.next_generation(), key);
            let fd = types::Fd(reg.fd);
            let entry = opcode::PollAdd::new(fd, u32::from(mask as u16)).build();
            // SAFETY: a POLL_ADD references no memory (a closed fd just fails with EBADF).
            if let Err(e) = unsafe { self.ring.push(&entry.user_data(user_data)) } {
                self.to_arm.push(key);
                return Err(e);
            }
            reg.state = PollState::Armed(user_data);
        }
        Ok(())
    }

    pub(super) fn wait(
        &mut self,
        timeout: Option<Duration>,
        ready: &mut Vec<(u64, Readiness)>,
        completions: &mut Vec<Completion>,
    ) -> io::Result<()> {
        self.arm_pending()?;
        let until = deadline(timeout);
        let (ready_len, completions_len) = (ready.len(), completions.len());
        loop {
            let left = remaining(until);
            let res = self.ring.enter(left);
            let (regs, to_arm) = (&mut self.regs, &mut self.to_arm);
            self.ring.reap(completions, |user_data, res| {
                let key = decode(user_data).2;
                let Some(reg) = regs.get_mut(key) else { return };
                if reg.state != PollState::Armed(user_data) {
                    return; // a removed or replaced poll
                }
                let readiness = if res >= 0 {
                    Readiness::from_poll_bits(res as u32, reg.interest)
                } else if [libc::ECANCELED, libc::EINTR, libc::EAGAIN].contains(&-res) {
                    Readiness::default()
                } else {
                    // Let the handler see the error itself; it stays quiet until set() again.
                    reg.state = PollState::Failed;
                    Readiness::from_poll_bits(libc::POLLERR as u32, reg.interest)
                };
                if reg.state != PollState::Failed {
                    reg.state = PollState::ToArm;
                    to_arm.push(key);
                }
                if readiness.any() {
                    ready.push((reg.token, readiness));
                }
            });
            let timed_out = match res {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return Ok(()),
                res => res?,
            };
            let progress = ready.len() > ready_len || completions.len() > completions_len;
            if progress || timed_out || left == Some(Duration::ZERO) {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::rc::Rc;
    use std::time::Instant;

    use super::*;

    #[test]
    fn user_data_round_trips() {
        for (tag, generation, key) in [(TAG_POLL, 0, 0), (TAG_OP, GEN_MASK, u32::MAX as usize)] {
            let ud = encode(tag, generation, key);
            assert_ne!(ud, UD_INTERNAL);
            assert_eq!(decode(ud), (tag, generation, key));
        }
        assert_eq!(decode(UD_INTERNAL).0, TAG_INTERNAL);
    }

    fn monitor(sq: u32, cq: u32) -> Option<UringMonitor> {
        UringMonitor::with_sizes(sq, cq)
            .map_err(|e| super::super::tests::skip(&format!("io_uring: {e}")))
            .ok()
    }

    fn wait(m: &mut UringMonitor, timeout: Duration) -> (Vec<(u64, Readiness)>, usize) {
        let (mut ready, mut done) = (Vec::new(), Vec::new());
        m.wait(Some(timeout), &mut ready, &mut done).unwrap();
        let n = done.len();
        done.into_iter().for_each(Completion::run);
        (ready, n)
    }

    fn eventfd(count: u32) -> OwnedFd {
        use nix::sys::eventfd::{EfdFlags, EventFd};
        let flags = EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK;
        EventFd::from_value_and_flags(count, flags).unwrap().into()
    }

    const READ: Interest = Interest {
        read: true,
        write: false,
    };
    const WRITE: Interest = Interest {
        read: false,
        write: true,
    };
    const SHORT: Duration = Duration::from_millis(50);

    /// This kernel (6.1 or later) gives the monitor's ring DEFER_TASKRUN, and the epoll side
    /// ring never gets it (its eventfd would not mean "CQEs posted").
    #[test]
    fn defer_taskrun_only_where_correct() {
        let Some(m) = monitor(SQ_ENTRIES, CQ_ENTRIES) else {
            return;
        };
        if !m.ring.defers_task_work() {
            super::super::tests::skip("DEFER_TASKRUN: refused by this kernel or turned off");
        }
        let side = Ring::new(8, 16, &[], false, None).unwrap();
        assert!(!side.defers_task_work());
    }

    /// The IORING_OP_TIMEOUT fallback for kernels without IORING_FEAT_EXT_ARG.
    #[test]
    fn timeout_without_ext_arg() {
        let Some(mut m) = monitor(SQ_ENTRIES, CQ_ENTRIES) else {
            return;
        };
        m.ring.ext_arg = false;
        let efd = eventfd(0);
        m.set(efd.as_raw_fd(), 1, READ).unwrap();
        for _ in 0..3 {
            let start = Instant::now();
            assert_eq!(wait(&mut m, SHORT), (vec![], 0));
            assert!(start.elapsed() >= SHORT, "{:?}", start.elapsed());
        }
        // An event ends the wait early, and the timeout left behind doesn't end the next one.
        m.set(efd.as_raw_fd(), 2, WRITE).unwrap();
        assert_eq!(wait(&mut m, Duration::from_secs(5)).0.len(), 1);
        m.set(efd.as_raw_fd(), 3, READ).unwrap();
        let start = Instant::now();
        assert_eq!(wait(&mut m, SHORT), (vec![], 0));
        assert!(start.elapsed() >= SHORT, "{:?}", start.elapsed());
        assert_eq!(wait(&mut m, Duration::ZERO), (vec![], 0));
    }

    /// Far more completions than the CQ holds: the kernel keeps the rest (NODROP) until reaped.
    #[test]
    fn tiny_ring_overflows() {
        let Some(mut m) = monitor(4, 8) else { return };
        let done = Rc::new(Cell::new(0));
        for _ in 0..1000 {
            let done = done.clone();
            let entry = opcode::Nop::new().build();
            let on_complete: fn(Rc<Cell<i32>>, i32) = |done, _| done.set(done.get() + 1);
            let none = squeue::Flags::empty();
            // SAFETY: a NOP references no memory.
            assert!(unsafe { m.ring.submit_op(entry, none, done, on_complete) }.is_ok());
        }
        let fds: Vec<_> = (0..20).map(|_| eventfd(1)).collect();
        for (i, fd) in fds.iter().enumerate() {
            m.set(fd.as_raw_fd(), i as u64, READ).unwrap();
        }
        let (start, mut tokens) = (Instant::now(), std::collections::HashSet::new());
        while done.get() < 1000 || tokens.len() < 20 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "{} done",
                done.get()
            );
            let (ready, _) = wait(&mut m, Duration::from_secs(5));
            tokens.extend(ready.into_iter().map(|(token, _)| token));
        }
        assert_eq!(
            (done.get(), tokens.len(), m.ring.in_flight()),
            (1000, 20, 0)
        );
    }

    /// Interest flips while polls are armed and firing: only the current registration reports.
    #[test]
    fn interest_churn_ignores_stale_polls() {
        let Some(mut m) = monitor(SQ_ENTRIES, CQ_ENTRIES) else {
            return;
        };
        let efd = eventfd(1); // readable and writable
        let fd = efd.as_raw_fd();
        for token in 0..200u64 {
            let interest = if token % 2 == 0 { READ } else { WRITE };
            m.set(fd, token, interest).unwrap();
            if token % 3 == 0 {
                m.set(fd, token, Interest::default()).unwrap();
                m.set(fd, token, interest).unwrap();
            }
            let (ready, _) = wait(&mut m, Duration::from_secs(5));
            let expected = Readiness {
                readable: interest.read,
                writable: interest.write,
            };
            assert_eq!(ready, [(token, expected)]);
        }
    }
}
