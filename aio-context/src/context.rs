//! The event loop: `AioContext` and its `poll`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bottom_half::{Bh, BhList, BhScheduler};
use rcu::{QsbrGuard, QsbrThread};

use crate::event_notifier::EventNotifier;
use crate::fdmon::{Completion, FdMonitor, Interest, Readiness};
use crate::handlers::{Handler, Handlers, IoCallback, PollCallback, Slot};
use crate::task::Tasks;
use crate::timer::{Timer, TimerList};
use crate::wakeup::Wakeup;
use crate::{Error, Result};

/// The token of the context's own notifier in the fd monitor.
const NOTIFIER_TOKEN: u64 = u64::MAX;

/// The shared wake-up state, with the eventfd write as its kick.
pub(crate) type SharedWakeup = Wakeup<Box<dyn Fn() + Send + Sync>>;

/// Busy-polling parameters (QEMU's `poll-max-ns`, `poll-grow`, `poll-shrink`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollParams {
    /// The longest a poll may busy-wait before sleeping; 0 disables busy polling.
    pub max_ns: u64,
    /// Factor to grow a handler's window by (0: QEMU's default, 2).
    pub grow: u64,
    /// Factor to shrink it by (0: drop it to zero at once).
    pub shrink: u64,
}

impl PollParams {
    /// An iothread's default: up to 32 µs of busy polling (QEMU's `poll-max-ns`), doubling
    /// and halving. QEMU's `poll-shrink` default drops the window to zero after one wait
    /// longer than `max_ns`; on a loaded host (a wake-up across CPUs takes 30-100 µs here)
    /// that switches polling off after a single hiccup, so the default here halves it.
    pub const IOTHREAD: PollParams = PollParams {
        max_ns: 32_768,
        grow: 2,
        shrink: 2,
    };

    /// QEMU's `adjust_polling_time`: a window that was too short grows, one that would
    /// have to exceed `max_ns` shrinks.
    fn adjust(&self, window_ns: u64, block_ns: u64) -> u64 {
        if block_ns <= window_ns {
            window_ns
        } else if block_ns > self.max_ns {
            window_ns.checked_div(self.shrink).unwrap_or(0)
        } else if window_ns < self.max_ns {
            let grow = if self.grow == 0 { 2 } else { self.grow };
            let grown = if window_ns == 0 {
                4_000
            } else {
                window_ns.saturating_mul(grow)
            };
            grown.min(self.max_ns)
        } else {
            window_ns
        }
    }
}

/// What to run for one fd: read/write callbacks, and an optional busy-poll pair.
///
/// ```
/// # use aio_context::FdHandler;
/// let handler = FdHandler::new().on_read(|| println!("readable"));
/// ```
#[derive(Default)]
pub struct FdHandler {
    read: Option<IoCallback>,
    write: Option<IoCallback>,
    poll: Option<PollCallback>,
    poll_ready: Option<IoCallback>,
}

impl FdHandler {
    /// A handler with no callbacks (registering it removes the fd's handler).
    pub fn new() -> FdHandler {
        FdHandler::default()
    }
    /// Runs `f` while the fd is readable (level-triggered).
    pub fn on_read(mut self, f: impl FnMut() + 'static) -> Self {
        self.read = Some(Box::new(f));
        self
    }
    /// Runs `f` while the fd is writable (level-triggered).
    pub fn on_write(mut self, f: impl FnMut() + 'static) -> Self {
        self.write = Some(Box::new(f));
        self
    }
    /// Busy polling: `poll` checks for work without a syscall (a virtqueue's avail
    /// index, a completion ring) and returns whether there is some; then `ready` runs
    /// (the read callback if `ready` is `None`). Used only while the context's
    /// [`PollParams`] allow it, never from a nested poll.
    pub fn on_poll(
        mut self,
        poll: impl FnMut() -> bool + 'static,
        ready: Option<Box<dyn FnMut()>>,
    ) -> Self {
        self.poll = Some(Box::new(poll));
        self.poll_ready = ready;
        self
    }
    fn is_empty(&self) -> bool {
        self.read.is_none() && self.write.is_none() && self.poll.is_none()
    }
}

pub(crate) struct Inner {
    pub(crate) bhs: BhList,
    pub(crate) wakeup: Arc<SharedWakeup>,
    notifier: Arc<EventNotifier>,
    fdmon: RefCell<FdMonitor>,
    handlers: RefCell<Handlers>,
    /// io_uring completions reaped by some poll and not yet run. Context-wide, not local
    /// to the poll that reaped them, so that a nested poll (a drain from a BH or a
    /// callback) runs every completion an outer poll has already taken off the ring
    /// (invariant 6 of design.md; `tests/nested_poll_completions.rs`).
    completions: RefCell<VecDeque<Completion>>,
    pub(crate) timers: Arc<TimerList>,
    qsbr: RefCell<QsbrThread>,
    depth: Cell<u32>,
    poll_params: Cell<PollParams>,
    /// The adaptive busy-poll window of the context's own notifier (cross-thread BHs).
    notifier_poll_ns: Cell<u64>,
    pub(crate) tasks: Tasks,
}

/// A per-thread event loop (QEMU's `AioContext`): bottom halves, fd handlers, timers,
/// io_uring completions and futures, all run on the thread that owns it.
///
/// One context per thread; it is `!Send`. Other threads reach it through an
/// [`AioHandle`]. The owning thread is a QSBR reader of the `rcu` crate: the outermost
/// `poll` reports a quiescent state, and goes offline while it sleeps, so callbacks
/// read RCU data with [`AioContext::rcu_read`] at no cost.
#[derive(Clone)]
pub struct AioContext {
    pub(crate) inner: Rc<Inner>,
}

/// An io_uring operation submitted with [`AioContext::submit`], for
/// [`AioContext::cancel_op`]. Only meaningful in the context that submitted it; a stale id
/// (the operation completed) is recognised and ignored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct OpId(u64);

/// How the kernel starts an operation ([`AioContext::submit_with_opts`]). The default is
/// io_uring's: try the operation inline in the submitting thread, and hand it to the
/// kernel's io-wq worker threads only if it would block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OpOptions {
    /// `IOSQE_ASYNC`: go straight to an io-wq worker. Worth it for work that would run
    /// inline and long in this thread (a large read or write that is a memory copy: a
    /// page-cache or tmpfs file): forced-async work items may run in several workers at
    /// once, where work punted after a failed inline attempt gets a new worker only when
    /// none is running. Costs a thread hand-off per operation.
    pub force_async: bool,
    /// `IOSQE_FIXED_FILE`: the entry's fd is a slot of this context's table of
    /// registered files ([`AioContext::fixed_file`]), not a descriptor. (The context
    /// replaces an entry's SQE flags, so the flag is asked for here.)
    pub fixed_file: bool,
}

/// Whether the calling thread has an io-wq worker: a kernel thread that runs its
/// io_uring operations which cannot (or, with [`OpOptions::force_async`], may not) run
/// inline. The kernel names it `iou-wrk-<tid>` after the submitting thread, which for a
/// ring with a submission thread (`AIO_URING_SQPOLL`) is that thread, `iou-sqp-<tid>`;
/// this looks for either in `/proc/self/task`. For diagnostics and tests.
pub fn thread_has_io_worker() -> bool {
    let tasks = own_tasks();
    let mut submitters = vec![nix::unistd::gettid().to_string()];
    let sq_thread = format!("iou-sqp-{}", nix::unistd::gettid());
    submitters.extend(
        tasks
            .iter()
            .filter(|(_, comm)| *comm == sq_thread)
            .map(|(tid, _)| tid.clone()),
    );
    tasks.iter().any(|(_, comm)| {
        comm.strip_prefix("iou-wrk-")
            .is_some_and(|tid| submitters.iter().any(|s| s == tid))
    })
}

/// Whether the calling thread created an io_uring with a kernel submission thread
/// (`AIO_URING_SQPOLL`): the kernel names it `iou-sqp-<tid>` after the thread that set
/// the ring up; this looks for that name in `/proc/self/task`. For diagnostics and
/// tests: a context whose SQPOLL ring was refused falls back to a ring without one.
pub fn thread_has_submission_thread() -> bool {
    let name = format!("iou-sqp-{}", nix::unistd::gettid());
    own_tasks().iter().any(|(_, comm)| *comm == name)
}

/// The process's threads: (tid, name), from `/proc/self/task` (empty if unreadable).
fn own_tasks() -> Vec<(String, String)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .filter_map(|t| {
            let t = t.ok()?;
            let comm = std::fs::read_to_string(t.path().join("comm")).ok()?;
            Some((
                t.file_name().to_string_lossy().into_owned(),
                comm.trim_end().to_owned(),
            ))
        })
        .collect()
}

/// A handle to an [`AioContext`] usable from any thread: create and schedule BHs, arm
/// timers, notify, spawn `Send` futures.
#[derive(Clone)]
pub struct AioHandle {
    bhs: BhScheduler,
    wakeup: Arc<SharedWakeup>,
    timers: Arc<TimerList>,
}

thread_local! {
    static CURRENT: RefCell<Weak<Inner>> = const { RefCell::new(Weak::new()) };
}

impl AioContext {
    /// Creates the calling thread's context, with busy polling off (QEMU's main-loop
    /// default). The fd monitor is io_uring if the kernel supports it, else epoll
    /// (`AIO_FDMON=epoll` forces epoll).
    ///
    /// # Errors
    ///
    /// [`Error::ContextExists`] if this thread already has a live context (or is a QSBR
    /// reader through other means); [`Error::Io`] if the eventfd or fd monitor cannot
    /// be created.
    pub fn new() -> Result<AioContext> {
        Self::with_fdmon(FdMonitor::new().map_err(Error::Io)?)
    }

    pub(crate) fn with_fdmon(mut fdmon: FdMonitor) -> Result<AioContext> {
        if CURRENT.with(|c| c.borrow().strong_count() > 0) {
            return Err(Error::ContextExists);
        }
        let qsbr = QsbrThread::register().map_err(|_| Error::ContextExists)?;
        let notifier = Arc::new(EventNotifier::new(false).map_err(Error::Io)?);
        let kick = notifier.clone();
        let wakeup: Arc<SharedWakeup> = Arc::new(Wakeup::new(Box::new(move || {
            // Cannot fail for an eventfd we own (a saturated counter is still "set").
            let _ = kick.set();
        })));
        fdmon
            .set(
                notifier.as_raw_fd(),
                NOTIFIER_TOKEN,
                Interest {
                    read: true,
                    write: false,
                },
            )
            .map_err(Error::Io)?;
        let w = wakeup.clone();
        // The bottom-half crate fences before calling notify (see its `Notify` docs).
        let bhs = BhList::new(move || w.notify(true));
        let w = wakeup.clone();
        let timers = TimerList::new(move || w.notify(false));
        let inner = Rc::new(Inner {
            bhs,
            wakeup,
            notifier,
            fdmon: RefCell::new(fdmon),
            handlers: RefCell::default(),
            completions: RefCell::default(),
            timers,
            qsbr: RefCell::new(qsbr),
            depth: Cell::new(0),
            poll_params: Cell::new(PollParams::default()),
            notifier_poll_ns: Cell::new(0),
            tasks: Tasks::default(),
        });
        CURRENT.with(|c| *c.borrow_mut() = Rc::downgrade(&inner));
        Ok(AioContext { inner })
    }

    /// The calling thread's context, if it has one.
    pub fn current() -> Option<AioContext> {
        CURRENT
            .with(|c| c.borrow().upgrade())
            .map(|inner| AioContext { inner })
    }

    /// A handle for other threads.
    pub fn handle(&self) -> AioHandle {
        AioHandle {
            bhs: self.inner.bhs.scheduler(),
            wakeup: self.inner.wakeup.clone(),
            timers: self.inner.timers.clone(),
        }
    }

    /// Which kernel interface watches fds: io_uring or epoll.
    pub fn fdmon_backend(&self) -> crate::Backend {
        self.inner.fdmon.borrow().backend()
    }

    /// Creates a BH owned by this context (QEMU's `aio_bh_new`).
    pub fn new_bh(&self, callback: impl FnMut() + Send + 'static) -> Bh {
        self.inner.bhs.scheduler().new_bh(callback)
    }

    /// Runs `f` once in this context's next poll (QEMU's `aio_bh_schedule_oneshot`).
    pub fn schedule_oneshot(&self, f: impl FnOnce() + Send + 'static) {
        self.inner.bhs.schedule_oneshot(f);
    }

    /// Creates a disarmed timer whose callback runs in this context.
    pub fn new_timer(&self, callback: impl FnMut() + Send + 'static) -> Timer {
        self.inner.timers.new_timer(callback)
    }

    /// Wakes the context if it sleeps (QEMU's `aio_notify`). The wake-up alone is not
    /// progress.
    pub fn notify(&self) {
        self.inner.wakeup.notify(false);
    }

    /// Sets the busy-polling parameters (QEMU's `aio_context_set_poll_params`).
    pub fn set_poll_params(&self, params: PollParams) {
        self.inner.poll_params.set(params);
        if params.max_ns == 0 {
            self.inner.notifier_poll_ns.set(0);
        }
    }

    /// The busy-polling parameters.
    pub fn poll_params(&self) -> PollParams {
        self.inner.poll_params.get()
    }

    /// Registers (or replaces, or with an empty [`FdHandler`] removes) the handler of
    /// `fd` (QEMU's `aio_set_fd_handler`). May be called from inside any callback,
    /// including the fd's own: a running callback of a replaced handler finishes, then
    /// is dropped.
    ///
    /// # Errors
    ///
    /// The fd monitor's error for a bad fd; the context keeps running.
    pub fn set_fd_handler(&self, fd: RawFd, handler: FdHandler) -> io::Result<()> {
        if handler.is_empty() {
            self.remove_fd_handler(fd);
            return Ok(());
        }
        let handler = Handler {
            fd,
            generation: 0,
            read: handler.read,
            write: handler.write,
            poll: handler.poll,
            poll_ready: handler.poll_ready,
            poll_ns: 0,
        };
        let interest = handler.interest();
        let (token, old) = self.inner.handlers.borrow_mut().insert(handler);
        let result = self.inner.fdmon.borrow_mut().set(fd, token, interest);
        if let Err(e) = result {
            let removed = self.inner.handlers.borrow_mut().remove(fd);
            drop(removed);
            drop(old);
            return Err(e);
        }
        drop(old); // dropped outside the borrows: its destructors may call back in
        Ok(())
    }

    /// Removes the handler of `fd`, if any.
    pub fn remove_fd_handler(&self, fd: RawFd) {
        let removed = self.inner.handlers.borrow_mut().remove(fd);
        if removed.is_some() {
            // The fd may already be closed; the registration is gone either way.
            let _ = self
                .inner
                .fdmon
                .borrow_mut()
                .set(fd, 0, Interest::default());
        }
        drop(removed);
    }

    /// Runs `read` whenever `notifier` is set (QEMU's `aio_set_event_notifier`); `None`
    /// removes the handler.
    pub fn set_event_notifier(
        &self,
        notifier: &EventNotifier,
        read: Option<Box<dyn FnMut()>>,
    ) -> io::Result<()> {
        let mut handler = FdHandler::new();
        handler.read = read;
        self.set_fd_handler(notifier.as_raw_fd(), handler)
    }

    /// Submits an io_uring operation; `callback(result)` runs in this context when it
    /// completes (result: the CQE's `res`, a negative errno on failure). The returned
    /// [`OpId`] cancels it ([`cancel_op`](Self::cancel_op)).
    ///
    /// Entries are queued on the submission ring and handed to the kernel together at the
    /// next poll (or when the ring is full), so the operations one dispatch round submits
    /// cost one `io_uring_enter`.
    ///
    /// # Safety
    ///
    /// Every buffer and fd `entry` refers to must stay valid until `callback` runs or is
    /// dropped (let the callback own them). The context never closes its ring with
    /// operations in flight: dropping it cancels them and waits for their completions.
    ///
    /// # Errors
    ///
    /// `Unsupported` if this kernel has no io_uring; the ring's error otherwise.
    pub unsafe fn submit<F: FnOnce(i32) + 'static>(
        &self,
        entry: io_uring::squeue::Entry,
        callback: F,
    ) -> io::Result<OpId> {
        // SAFETY: forwarded to our caller's contract.
        let submitted = unsafe { self.submit_with(entry, callback, |f: F, res| f(res)) };
        submitted.map_err(|(e, _)| e)
    }

    /// [`submit`](Self::submit) with the callback split in two: `on_complete(state,
    /// result)` runs when the operation completes. `state` is given back, untouched, if the
    /// operation cannot be queued, so that what it owns (a request, its buffers) is not
    /// lost; it is moved into the context's one allocation per operation only once the
    /// entry is queued.
    ///
    /// # Safety
    ///
    /// As [`submit`](Self::submit), with `state` in the callback's place: whatever
    /// `entry` references must stay valid until `on_complete` runs or `state` is dropped.
    /// `state` moves after `entry` is built, so `entry` must not point into `state`
    /// itself, only to memory it owns elsewhere (a heap buffer).
    ///
    /// # Errors
    ///
    /// As [`submit`](Self::submit), with `state`.
    pub unsafe fn submit_with<T: 'static>(
        &self,
        entry: io_uring::squeue::Entry,
        state: T,
        on_complete: fn(T, i32),
    ) -> std::result::Result<OpId, (io::Error, T)> {
        // SAFETY: forwarded to our caller's contract.
        unsafe { self.submit_with_opts(entry, OpOptions::default(), state, on_complete) }
    }

    /// [`submit_with`](Self::submit_with), with [`OpOptions`] for how the kernel starts
    /// the operation.
    ///
    /// # Safety
    ///
    /// As [`submit_with`](Self::submit_with).
    ///
    /// # Errors
    ///
    /// As [`submit_with`](Self::submit_with).
    pub unsafe fn submit_with_opts<T: 'static>(
        &self,
        entry: io_uring::squeue::Entry,
        opts: OpOptions,
        state: T,
        on_complete: fn(T, i32),
    ) -> std::result::Result<OpId, (io::Error, T)> {
        let mut fdmon = self.inner.fdmon.borrow_mut();
        if !fdmon.supports_ops() {
            let e = io::Error::new(io::ErrorKind::Unsupported, "io_uring is not available");
            return Err((e, state));
        }
        let mut flags = io_uring::squeue::Flags::empty();
        if opts.force_async {
            flags |= io_uring::squeue::Flags::ASYNC;
        }
        if opts.fixed_file {
            flags |= io_uring::squeue::Flags::FIXED_FILE;
        }
        // SAFETY: forwarded to our caller's contract (a fixed file's slot names a file
        // the table keeps open while the op runs).
        unsafe { fdmon.submit(entry, flags, state, on_complete) }.map(OpId)
    }

    /// Asks the kernel to cancel the operation `id` (`IORING_OP_ASYNC_CANCEL`). Its
    /// callback still runs exactly once, with the operation's own result: `-ECANCELED`
    /// if the cancel won, the normal result if the operation finished first. Returns
    /// whether the operation was still in flight (false: already completed, or not from
    /// this context).
    ///
    /// # Errors
    ///
    /// The ring's error if the cancel request could not be queued.
    pub fn cancel_op(&self, id: OpId) -> io::Result<bool> {
        self.inner.fdmon.borrow_mut().cancel(id.0)
    }

    /// Whether this kernel's io_uring supports `opcode` (for example
    /// `io_uring::opcode::Fallocate::CODE`); false without io_uring.
    pub fn supports_opcode(&self, opcode: u8) -> bool {
        self.inner.fdmon.borrow().supports_opcode(opcode)
    }

    /// The index of the io_uring registered buffer ("fixed buffer") of this context's
    /// ring that holds `[ptr, ptr + len)`, for `READ_FIXED` / `WRITE_FIXED` (and the
    /// vectored `READV_FIXED` / `WRITEV_FIXED`, all of whose iovecs must lie in it).
    ///
    /// The buffer is `owner`'s whole region `[base, base + size)`, registered (pinned)
    /// on the first call for that owner, in slots of at most 1 GiB; a range across a
    /// 1 GiB boundary of the region gets `None`, as do a ring-less context, a kernel or
    /// `RLIMIT_MEMLOCK` that refuses the region (remembered per owner, logged once) and
    /// a full table: the caller then submits the plain opcode. The ring keeps a counted
    /// reference to `owner` while the region is registered, and unregisters regions
    /// that nothing else holds when it registers the next one or closes.
    ///
    /// # Safety
    ///
    /// `[base, base + size)` must be mapped, readable and writable memory for as long as
    /// `owner` lives (its pages are pinned and written by the kernel for later ops), and
    /// every call with the same `owner` must name the same region.
    pub unsafe fn fixed_buffer<T: std::any::Any + Send + Sync>(
        &self,
        owner: &std::sync::Arc<T>,
        base: *mut u8,
        size: usize,
        ptr: *const u8,
        len: usize,
    ) -> Option<u16> {
        let region = crate::fdmon::Region {
            key: std::sync::Arc::as_ptr(owner).cast(),
            owner: &|| owner.clone(),
            base,
            size,
        };
        self.inner
            .fdmon
            .borrow_mut()
            .fixed_buffer(&region, ptr, len)
    }

    /// `file`'s slot in this context's io_uring table of registered files, registering
    /// it on its first use here: an op on the file may then name the slot with
    /// `IOSQE_FIXED_FILE` (the slot's file is `file` until `file` is dropped, and only
    /// on this context's ring). `None` without io_uring ops, or where the kernel refuses
    /// the registration (logged once per file; use the descriptor then).
    pub fn fixed_file(&self, file: &crate::FixedFile) -> Option<u32> {
        let slot = self.inner.fdmon.borrow_mut().fixed_file(file.shared())?;
        if slot.new {
            file.registered_on(self);
        }
        Some(slot.index)
    }

    /// Empties the ring's slots of registered files whose [`crate::FixedFile`] is gone.
    pub(crate) fn release_dead_fixed_files(&self) {
        self.inner.fdmon.borrow_mut().release_dead_fixed_files();
    }

    /// How many files this context's ring has registered (dead ones not yet released
    /// included).
    #[cfg(test)]
    pub(crate) fn fixed_files(&self) -> usize {
        self.inner.fdmon.borrow_mut().fixed_files()
    }

    /// Whether io_uring operations can be submitted.
    pub fn supports_io_uring_ops(&self) -> bool {
        self.inner.fdmon.borrow().supports_ops()
    }

    /// How many submitted io_uring operations have not completed yet.
    pub fn io_uring_ops_in_flight(&self) -> usize {
        self.inner.fdmon.borrow().in_flight()
    }

    /// Runs `f` with a QSBR read guard of this thread: RCU-protected data read under it
    /// costs nothing, and stays valid until `f` returns.
    pub fn rcu_read<R>(&self, f: impl FnOnce(&QsbrGuard<'_>) -> R) -> R {
        let qsbr = self.inner.qsbr.borrow();
        f(&qsbr.read())
    }

    /// Waits for an RCU grace period from this context's thread (offline meanwhile;
    /// `rcu::synchronize` would wait for this very thread). Panics if called inside
    /// [`AioContext::rcu_read`].
    pub fn synchronize_rcu(&self) {
        self.inner
            .qsbr
            .try_borrow_mut()
            .expect(
                "AioContext::synchronize_rcu() called inside rcu_read: it would wait for itself",
            )
            .synchronize();
    }

    /// Runs one iteration of the loop (QEMU's `aio_poll`): busy polling if enabled,
    /// waiting for events if `blocking` and nothing is pending, then BHs, fd handlers,
    /// io_uring completions and timers. Returns whether any of them made progress (a
    /// wake-up through [`AioContext::notify`] alone does not count).
    ///
    /// A callback may call `poll` again (a nested poll): it runs whatever is ready, but
    /// never busy-polls and never re-enters a running BH. A nested poll also runs the
    /// io_uring completions that an outer poll has reaped but not yet dispatched (and does
    /// not sleep while any are queued), so a drain that polls until its requests complete
    /// never waits for work only the frame below it could finish.
    pub fn poll(&self, blocking: bool) -> bool {
        let inner = &*self.inner;
        let depth = inner.depth.get();
        let outermost = depth == 0;
        inner.depth.set(depth + 1);
        struct Leave<'a>(&'a Cell<u32>, u32);
        impl Drop for Leave<'_> {
            fn drop(&mut self) {
                self.0.set(self.1);
            }
        }
        let _leave = Leave(&inner.depth, depth);
        if outermost {
            // Every reference from earlier iterations is dead: callbacks only got them
            // inside `rcu_read`, which has returned. (If this poll itself runs inside
            // `rcu_read`, the borrow fails and no quiescent state is reported.)
            if let Ok(mut qsbr) = inner.qsbr.try_borrow_mut() {
                qsbr.quiescent_state();
            }
        }

        let params = inner.poll_params.get();
        // Read the clock only when busy polling needs it (a clock read is ~25 ns here).
        let start = (outermost && params.max_ns > 0).then(Instant::now);
        let mut polled = Vec::new();
        let mut notified = false;
        let busy =
            start.is_some_and(|start| self.busy_poll(blocking, start, &mut polled, &mut notified));

        let mut ready = Vec::new();
        let mut completions = Vec::new();
        let mut timeout = Some(Duration::ZERO);
        if blocking && !busy {
            inner.wakeup.prepare_to_sleep();
            // A notification since the last poll means "do not sleep" (QEMU's notifier
            // poll callback reads `notified` for the same reason).
            // Completions reaped by an outer poll and not yet run are work too.
            timeout = if inner.wakeup.is_notified() || !inner.completions.borrow().is_empty() {
                Some(Duration::ZERO)
            } else {
                self.compute_timeout()
            };
        }
        let mut wait = |timeout| {
            inner
                .fdmon
                .borrow_mut()
                .wait(timeout, &mut ready, &mut completions)
        };
        // Sleep offline, also in a nested poll: otherwise a BH that waits (nested) for
        // something that needs a grace period (a call_rcu, an unmap, a DEVICE_DELETED)
        // would deadlock. Offline is sound whenever the QSBR handle can be borrowed
        // mutably: QSBR references only come from `rcu_read`, which holds a shared
        // borrow for as long as any of them lives.
        if timeout != Some(Duration::ZERO) {
            // A poll that may sleep is a blocking wait (design.md invariant 7).
            rcu::assert_may_block("a blocking AioContext::poll");
        }
        let waited = match inner.qsbr.try_borrow_mut() {
            Ok(mut qsbr) if timeout != Some(Duration::ZERO) => qsbr.offline(|| wait(timeout)),
            _ => wait(timeout),
        };
        if let Err(e) = waited {
            // A failing monitor is a bug or a dying process; report it and carry on
            // with whatever else is ready rather than spin silently.
            tracing::error!("aio-context: fd monitor wait failed: {e}");
        }
        // Everything notified so far is looked at below (BHs, fds, timers), so the
        // notifications are consumed here, by every poll, blocking or not.
        if blocking && !busy {
            inner.wakeup.finish_sleep();
        } else {
            inner.wakeup.accept();
        }
        if let Some(start) = start {
            let block_ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
            self.adjust_poll_windows(params, block_ns, notified, &ready, &polled);
        }

        // Into the context's queue before any callback runs: from here on, a nested poll
        // started by a BH, an fd handler or another completion sees these too.
        if !completions.is_empty() {
            inner.completions.borrow_mut().extend(completions);
        }

        let mut progress = inner.bhs.poll();
        progress |= self.dispatch(&ready, &polled);
        progress |= self.run_completions();
        if inner.timers.any_armed() {
            progress |= inner.timers.run_expired(Instant::now());
        }
        progress
    }

    /// Runs queued io_uring completions, one at a time and with the queue unborrowed
    /// while each runs: a callback may submit, cancel or poll (nested), and a nested poll
    /// runs the rest of the queue. Returns whether any ran.
    ///
    /// What a completion callback submits (the refill of a request that just finished, the
    /// next chunk of a DMA) goes to the kernel right after that callback, not at the next
    /// poll: held until the whole round of completions has run, the refills of one round
    /// reached the device together, late, and at queue depth 32 that cost a fifth of the
    /// IOPS (block-dma's DESIGN.md, "Queue depth"). Submissions from fd handlers and BHs
    /// (a virtqueue kick's requests) are still batched into one enter per poll. The last
    /// callback of a round is the exception: its submissions go with the next wait's
    /// enter, which submits and waits in one syscall (the next poll does not busy-poll
    /// while SQEs are queued).
    fn run_completions(&self) -> bool {
        let mut ran = false;
        loop {
            let next = self.inner.completions.borrow_mut().pop_front();
            let Some(completion) = next else { break };
            completion.run();
            ran = true;
            // The last callback's submissions go with the next wait: its `io_uring_enter`
            // submits and waits in one syscall, as fio's loop does (at queue depth 1, one
            // enter per I/O instead of two).
            if !self.inner.completions.borrow().is_empty() {
                self.flush_submissions();
            }
        }
        ran
    }

    /// Submits the io_uring operations queued so far (no syscall if none are). A failure
    /// leaves them queued for the next poll's wait, which reports it.
    fn flush_submissions(&self) {
        // A nested poll inside a callback may hold no borrow here; the monitor is only
        // borrowed inside `wait`, `submit_with` and similar, none of which calls back.
        if let Ok(mut fdmon) = self.inner.fdmon.try_borrow_mut() {
            if let Err(e) = fdmon.flush() {
                tracing::debug!("aio-context: early submit failed, retried at the next poll: {e}");
            }
        }
    }

    /// How long a blocking poll may sleep: zero if a BH is scheduled, else until the
    /// next timer (or an idle BH's 10 ms); `None` for "until an event".
    fn compute_timeout(&self) -> Option<Duration> {
        let bh = self.inner.bhs.timeout();
        let timer = if self.inner.timers.any_armed() {
            self.inner.timers.timeout(Instant::now())
        } else {
            None
        };
        match (bh, timer) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Busy-polls the handlers' poll callbacks and the context's own notification flag
    /// for up to the largest adaptive window. Returns whether something was found.
    fn busy_poll(
        &self,
        blocking: bool,
        start: Instant,
        polled: &mut Vec<u64>,
        notified: &mut bool,
    ) -> bool {
        let inner = &*self.inner;
        let tokens: Vec<(u64, u64)> = {
            let mut handlers = inner.handlers.borrow_mut();
            let tokens: Vec<u64> = handlers.pollable().collect();
            tokens
                .into_iter()
                .map(|t| (t, handlers.get_mut(t).map_or(0, |h| h.poll_ns)))
                .collect()
        };
        let window = tokens
            .iter()
            .map(|&(_, ns)| ns)
            .chain([inner.notifier_poll_ns.get()])
            .max()
            .unwrap_or(0);
        let window = if blocking {
            Duration::from_nanos(window)
        } else {
            Duration::ZERO
        };
        loop {
            // A BH scheduled (or a notify) from anywhere sets the flag: consume it and
            // stop polling, so the BHs run now.
            // A plain load first: the swap and fence of `accept` would make every spin
            // iteration fight the producers for the cache line.
            if inner.wakeup.is_notified() && inner.wakeup.accept() {
                *notified = true;
                return true;
            }
            // io_uring completions (and submissions still queued) are work too: stop
            // spinning and let the wait reap them, as QEMU's io_uring poll handler
            // (`io_uring_cq_ready`) does. Spinning on, a completion would wait out the whole
            // window (block-dma's DESIGN.md, "Busy polling").
            if inner.fdmon.borrow_mut().ops_have_work() {
                return true;
            }
            for &(token, _) in &tokens {
                let cb = inner.handlers.borrow_mut().take_poll(token);
                let Some(mut cb) = cb else { continue };
                let found = cb();
                let leftover = inner.handlers.borrow_mut().put_back_poll(token, cb);
                drop(leftover);
                if found {
                    polled.push(token);
                }
            }
            if !polled.is_empty() {
                return true;
            }
            if start.elapsed() >= window {
                return false;
            }
            std::hint::spin_loop();
        }
    }

    /// Grows or shrinks the windows of what woke this poll (and of the notifier when
    /// nothing did, so idle polling decays).
    fn adjust_poll_windows(
        &self,
        params: PollParams,
        block_ns: u64,
        notified: bool,
        ready: &[(u64, Readiness)],
        polled: &[u64],
    ) {
        let inner = &*self.inner;
        let notified = notified || ready.iter().any(|&(t, _)| t == NOTIFIER_TOKEN);
        if notified || ready.is_empty() && polled.is_empty() {
            inner
                .notifier_poll_ns
                .set(params.adjust(inner.notifier_poll_ns.get(), block_ns));
        }
        let mut handlers = inner.handlers.borrow_mut();
        for &token in polled.iter().chain(ready.iter().map(|(t, _)| t)) {
            if let Some(h) = handlers.get_mut(token) {
                if h.poll.is_some() {
                    h.poll_ns = params.adjust(h.poll_ns, block_ns);
                }
            }
        }
    }

    /// Runs the callbacks of ready fds and of handlers whose busy poll found work.
    fn dispatch(&self, ready: &[(u64, Readiness)], polled: &[u64]) -> bool {
        let mut progress = false;
        for &(token, readiness) in ready {
            if token == NOTIFIER_TOKEN {
                // The wake-up itself: drain it; not progress.
                self.inner.notifier.test_and_clear();
                continue;
            }
            if readiness.readable {
                progress |= self.call(token, Slot::Read);
            }
            if readiness.writable {
                progress |= self.call(token, Slot::Write);
            }
        }
        for &token in polled {
            let has_ready_cb = self
                .inner
                .handlers
                .borrow_mut()
                .get_mut(token)
                .is_some_and(|h| h.poll_ready.is_some());
            progress |= self.call(
                token,
                if has_ready_cb {
                    Slot::PollReady
                } else {
                    Slot::Read
                },
            );
        }
        progress
    }

    /// Calls one handler callback, taken out of the table for the call (so the
    /// callback may change any handler, its own included) and put back afterwards,
    /// also on unwind.
    fn call(&self, token: u64, slot: Slot) -> bool {
        let cb = self.inner.handlers.borrow_mut().take(token, slot);
        let Some(cb) = cb else { return false };
        struct PutBack<'a> {
            handlers: &'a RefCell<Handlers>,
            token: u64,
            slot: Slot,
            cb: Option<IoCallback>,
        }
        impl Drop for PutBack<'_> {
            fn drop(&mut self) {
                if let Some(cb) = self.cb.take() {
                    let leftover = self
                        .handlers
                        .borrow_mut()
                        .put_back(self.token, self.slot, cb);
                    drop(leftover);
                }
            }
        }
        let mut guard = PutBack {
            handlers: &self.inner.handlers,
            token,
            slot,
            cb: Some(cb),
        };
        if let Some(cb) = guard.cb.as_mut() {
            cb();
        }
        true
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // `try_with`: a context kept in a thread-local may be dropped after CURRENT's own
        // destructor ran, at thread exit.
        let _ = CURRENT.try_with(|c| {
            if let Ok(mut c) = c.try_borrow_mut() {
                *c = Weak::new();
            }
        });
        self.timers.clear();
        self.tasks.clear();
    }
}

impl AioHandle {
    /// The context's BH scheduler, for components that take one (for example
    /// `runstate::RunStateMachine::new`, whose deferred transitions then run in this
    /// context).
    pub fn bh_scheduler(&self) -> &BhScheduler {
        &self.bhs
    }

    /// Creates a BH owned by the handle's context.
    pub fn new_bh(&self, callback: impl FnMut() + Send + 'static) -> Bh {
        self.bhs.new_bh(callback)
    }

    /// Runs `f` once in the context's next poll, on its thread.
    pub fn schedule_oneshot(&self, f: impl FnOnce() + Send + 'static) {
        self.bhs.schedule_oneshot(f);
    }

    /// Creates a disarmed timer whose callback runs in the handle's context.
    pub fn new_timer(&self, callback: impl FnMut() + Send + 'static) -> Timer {
        self.timers.new_timer(callback)
    }

    /// Wakes the context if it sleeps.
    pub fn notify(&self) {
        self.wakeup.notify(false);
    }
}

impl std::fmt::Debug for AioContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AioContext")
            .field("depth", &self.inner.depth.get())
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for AioHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AioHandle").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for FdHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FdHandler")
            .field("read", &self.read.is_some())
            .field("write", &self.write.is_some())
            .field("poll", &self.poll.is_some())
            .finish()
    }
}

#[cfg(test)]
mod submission_tests {
    use std::cell::Cell;
    use std::rc::Rc;
    use std::time::{Duration, Instant};

    use io_uring::opcode;

    use super::{AioContext, PollParams};
    use crate::Backend;
    use crate::refill_tests::context_with_ops;

    /// The busy-poll window of this test: long enough that waiting it out is unmistakable.
    const WINDOW: Duration = Duration::from_secs(15);

    /// A completion ends a busy poll at once: with a window of 15 s, a NOP's callback runs
    /// well before it would end (the deadline is generous: this checks for a wait of the
    /// whole window, not for speed).
    fn check(backend: Backend) {
        std::thread::spawn(move || {
            let Some(ctx) = context_with_ops(backend, "busy poll") else {
                return;
            };
            let ns = WINDOW.as_nanos() as u64;
            ctx.set_poll_params(PollParams {
                max_ns: ns,
                grow: 2,
                shrink: 2,
            });
            ctx.inner.notifier_poll_ns.set(ns);
            let done = Rc::new(Cell::new(false));
            let d = done.clone();
            // SAFETY: a NOP references no memory.
            unsafe { ctx.submit(opcode::Nop::new().build(), move |_| d.set(true)) }.unwrap();
            let start = Instant::now();
            while !done.get() {
                ctx.poll(true);
                assert!(
                    start.elapsed() < WINDOW / 3,
                    "{backend:?}: a completion waited out the busy-poll window"
                );
            }
        })
        .join()
        .unwrap();
    }

    /// A chain of NOPs at queue depth 1 (each callback submits the next): the last (here
    /// the only) callback of a round leaves its NOP to the next wait, which submits and
    /// waits in one `io_uring_enter`: about one enter per NOP, not two.
    #[test]
    fn last_refill_of_a_round_goes_with_the_wait() {
        const N: u64 = 1000;
        std::thread::spawn(|| {
            let Some(ctx) = context_with_ops(Backend::IoUring, "last refill") else {
                return;
            };
            fn next(ctx: AioContext, left: Rc<Cell<u64>>) {
                if left.get() == 0 {
                    return;
                }
                left.set(left.get() - 1);
                let c = ctx.clone();
                // SAFETY: a NOP references no memory.
                let submitted =
                    unsafe { ctx.submit(opcode::Nop::new().build(), move |_| next(c, left)) };
                submitted.unwrap();
            }
            let left = Rc::new(Cell::new(N));
            next(ctx.clone(), left.clone());
            let before = ctx.inner.fdmon.borrow().enters();
            let start = Instant::now();
            while left.get() > 0 || ctx.io_uring_ops_in_flight() > 0 {
                assert!(start.elapsed() < Duration::from_secs(30), "NOPs hang");
                ctx.poll(true);
            }
            let enters = ctx.inner.fdmon.borrow().enters() - before;
            assert!(
                enters <= N + N / 4,
                "{enters} io_uring_enter calls for {N} NOPs at queue depth 1"
            );
        })
        .join()
        .unwrap();
    }

    #[test]
    fn completion_ends_busy_poll_io_uring() {
        check(Backend::IoUring);
    }

    #[test]
    fn completion_ends_busy_poll_epoll() {
        check(Backend::Epoll);
    }
}
