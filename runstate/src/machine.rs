//! The run state machine and its change handlers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use bottom_half::{Bh, BhScheduler};

use crate::{Error, Event, Result, RunState};

/// A change handler: `(running, new_state)` (QEMU's `VMChangeStateHandler`).
pub type Handler = Box<dyn FnMut(bool, RunState) + Send>;

/// Where monitor events go.
type EventHook = Box<dyn FnMut(Event) + Send>;

/// Identifies a registered handler, for [`RunStateMachine::remove_handler`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct HandlerId(u64);

/// What happened to a start or stop request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The transition happened and every handler was notified before the call returned.
    Done,
    /// Nothing to do (already running, or already stopped).
    Unchanged,
    /// A notification round was in progress (the caller is a handler, or raced one):
    /// the request runs from a bottom half after the round completes.
    Deferred,
}

struct Entry {
    id: HandlerId,
    priority: i32,
    /// Both are taken out while they run, and put back only if the entry still exists.
    prepare: Option<Handler>,
    handler: Option<Handler>,
}

#[derive(Clone, Copy, Debug)]
enum Request {
    Start,
    Stop(RunState),
}

struct Core {
    state: RunState,
    /// Sorted by `(priority, id)`.
    entries: Vec<Entry>,
    next_id: u64,
    /// A notification round is running (on some thread).
    in_round: bool,
    /// Requests made during a round, in order.
    deferred: VecDeque<Request>,
}

struct Inner {
    core: Mutex<Core>,
    /// A stop posted from another thread (QEMU's `vmstop_requested`), under its own lock
    /// so that the poster's event (BLOCK_IO_ERROR) is emitted while holding it.
    stop_request: Mutex<Option<RunState>>,
    /// Runs deferred and posted requests in the owner's event loop.
    deferral: Bh,
    events: Mutex<Option<EventHook>>,
}

/// The VM's run state, its change handlers, and the rule that makes them safe: every
/// handler sees every transition, in order, even when a handler itself changes the run
/// state (seed 2075200b, "Fix VM state change handlers running out of order").
///
/// Handlers run on the thread that performs the transition (the main loop's, for the
/// VMM). A start or stop requested while a round of notifications is running is
/// deferred to a bottom half of the owner's context and performed after the round.
/// Other threads (vCPUs, iothreads) post stops with [`RunStateMachine::request_stop`].
///
/// Cheap to clone; all clones are the same machine.
#[derive(Clone)]
pub struct RunStateMachine {
    inner: Arc<Inner>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl RunStateMachine {
    /// A machine in [`RunState::Prelaunch`] whose deferred work runs as a BH of the list
    /// behind `bhs` (the main `AioContext`'s).
    pub fn new(bhs: &BhScheduler) -> RunStateMachine {
        let inner = Arc::new_cyclic(|weak: &Weak<Inner>| {
            let weak = weak.clone();
            Inner {
                core: Mutex::new(Core {
                    state: RunState::Prelaunch,
                    entries: Vec::new(),
                    next_id: 0,
                    in_round: false,
                    deferred: VecDeque::new(),
                }),
                stop_request: Mutex::new(None),
                deferral: bhs.new_bh(move || {
                    if let Some(inner) = weak.upgrade() {
                        RunStateMachine { inner }.run_pending();
                    }
                }),
                events: Mutex::new(None),
            }
        });
        RunStateMachine { inner }
    }

    /// The current state.
    pub fn state(&self) -> RunState {
        lock(&self.inner.core).state
    }

    /// Whether the VM is running (QEMU's `runstate_is_running`).
    pub fn is_running(&self) -> bool {
        self.state() == RunState::Running
    }

    /// Sets where monitor events (STOP, RESUME, SHUTDOWN, RESET) go.
    pub fn set_event_hook(&self, hook: impl FnMut(Event) + Send + 'static) {
        *lock(&self.inner.events) = Some(Box::new(hook));
    }

    /// Calls the hook outside its lock (taken out and put back), so a hook may read the
    /// state or emit further events without deadlock.
    fn emit(&self, event: Event) {
        let Some(mut hook) = lock(&self.inner.events).take() else {
            return;
        };
        hook(event);
        let mut slot = lock(&self.inner.events);
        if slot.is_none() {
            *slot = Some(hook); // unless the hook was replaced meanwhile
        }
    }

    /// Emits a monitor event through the hook (RESET, SHUTDOWN, or an error event).
    pub fn emit_event(&self, event: Event) {
        self.emit(event);
    }

    /// Changes the state without notifying handlers (QEMU's `runstate_set`), for states
    /// that are not a start or a stop (e.g. prelaunch -> inmigrate).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTransition`] if the table does not allow it.
    pub fn set_state(&self, to: RunState) -> Result<()> {
        let mut core = lock(&self.inner.core);
        if !core.state.can_transition_to(to) {
            return Err(Error::InvalidTransition {
                from: core.state,
                to,
            });
        }
        core.state = to;
        Ok(())
    }

    /// Registers a handler. On start, handlers run in ascending `priority` order; on
    /// stop, in descending order (QEMU's rule for devices: a controller, lower priority,
    /// starts before its children and stops after them). Equal priorities run in
    /// registration order (reversed on stop).
    pub fn add_handler(
        &self,
        priority: i32,
        handler: impl FnMut(bool, RunState) + Send + 'static,
    ) -> HandlerId {
        self.add(priority, None, Box::new(handler))
    }

    /// Like [`RunStateMachine::add_handler`], with a `prepare` callback that runs for
    /// every handler before any handler runs (QEMU's `prepare_cb`).
    pub fn add_handler_with_prepare(
        &self,
        priority: i32,
        prepare: impl FnMut(bool, RunState) + Send + 'static,
        handler: impl FnMut(bool, RunState) + Send + 'static,
    ) -> HandlerId {
        self.add(priority, Some(Box::new(prepare)), Box::new(handler))
    }

    fn add(&self, priority: i32, prepare: Option<Handler>, handler: Handler) -> HandlerId {
        let mut core = lock(&self.inner.core);
        let id = HandlerId(core.next_id);
        core.next_id += 1;
        let pos = core
            .entries
            .partition_point(|e| (e.priority, e.id.0) < (priority, id.0));
        core.entries.insert(
            pos,
            Entry {
                id,
                priority,
                prepare,
                handler: Some(handler),
            },
        );
        id
    }

    /// Removes a handler; allowed at any time, including from inside the handler itself
    /// during a notification (its current call finishes; it is not called again).
    pub fn remove_handler(&self, id: HandlerId) -> bool {
        let removed = {
            let mut core = lock(&self.inner.core);
            core.entries
                .iter()
                .position(|e| e.id == id)
                .map(|pos| core.entries.remove(pos))
        };
        removed.is_some() // dropped here, outside the lock
    }

    /// Starts the VM (QEMU's `vm_start`, the monitor's `cont`): emits RESUME, enters
    /// [`RunState::Running`] and notifies every handler with `running = true`.
    ///
    /// A stop posted by another thread and not yet performed is consumed: if the VM is
    /// running, STOP then RESUME are emitted (so a BLOCK_IO_ERROR is always followed by
    /// a STOP), and it keeps running.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTransition`] if the current state cannot go to running (e.g.
    /// `inmigrate` or `shutdown` without a reset).
    pub fn start(&self) -> Result<Outcome> {
        self.start_request(false)
    }

    /// `from_queue`: performed by the deferral BH for a queued request (which must not
    /// queue behind later ones).
    fn start_request(&self, from_queue: bool) -> Result<Outcome> {
        // Lock order: stop_request, then core (request_stop_with holds stop_request while
        // its `before` emits an event whose hook may read the state).
        let mut posted = lock(&self.inner.stop_request);
        let mut core = lock(&self.inner.core);
        if core.in_round || (!from_queue && !core.deferred.is_empty()) {
            drop(posted);
            // Requests stay in order: a start may not overtake one deferred earlier.
            return Ok(self.defer(&mut core, Request::Start));
        }
        let posted = posted.take();
        if core.state == RunState::Running {
            drop(core);
            if posted.is_some() {
                self.emit(Event::Stop);
                self.emit(Event::Resume);
            }
            return Ok(Outcome::Unchanged);
        }
        if !core.state.can_transition_to(RunState::Running) {
            return Err(Error::InvalidTransition {
                from: core.state,
                to: RunState::Running,
            });
        }
        core.state = RunState::Running;
        core.in_round = true;
        drop(core);
        let _round = Round(self);
        self.emit(Event::Resume);
        self.notify(true, RunState::Running);
        Ok(Outcome::Done)
    }

    /// Stops the VM into `to` (QEMU's `vm_stop`): enters `to`, notifies every handler
    /// with `running = false` (descending priority), then emits STOP. A VM that is not
    /// live is left alone.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidTransition`] if `to` is not a state a running VM can stop into.
    pub fn stop(&self, to: RunState) -> Result<Outcome> {
        self.stop_request(to, false)
    }

    fn stop_request(&self, to: RunState, from_queue: bool) -> Result<Outcome> {
        let mut core = lock(&self.inner.core);
        if core.in_round || (!from_queue && !core.deferred.is_empty()) {
            return Ok(self.defer(&mut core, Request::Stop(to)));
        }
        if !core.state.is_live() {
            return Ok(Outcome::Unchanged);
        }
        if to.is_live() || !core.state.can_transition_to(to) {
            return Err(Error::InvalidTransition {
                from: core.state,
                to,
            });
        }
        core.state = to;
        core.in_round = true;
        drop(core);
        let _round = Round(self);
        self.notify(false, to);
        self.emit(Event::Stop);
        Ok(Outcome::Done)
    }

    /// Posts a stop from any thread (QEMU's `qemu_system_vmstop_request`); the owner's
    /// event loop performs it.
    pub fn request_stop(&self, to: RunState) {
        self.request_stop_with(to, || {});
    }

    /// Posts a stop, running `before` (typically: emit BLOCK_IO_ERROR) under the request
    /// lock, so that the event precedes the STOP that the request causes, even if a
    /// `cont` races it (QEMU's `qemu_system_vmstop_request_prepare`).
    pub fn request_stop_with(&self, to: RunState, before: impl FnOnce()) {
        {
            let mut request = lock(&self.inner.stop_request);
            before();
            // The first request wins, as in QEMU.
            request.get_or_insert(to);
        }
        self.inner.deferral.schedule();
    }

    fn defer(&self, core: &mut Core, request: Request) -> Outcome {
        core.deferred.push_back(request);
        self.inner.deferral.schedule();
        Outcome::Deferred
    }

    /// Runs the prepare callbacks, then the handlers, in priority order (ascending when
    /// starting, descending when stopping). Callbacks are taken out of the table while
    /// they run, so they may add or remove handlers (their own included) and request
    /// transitions (deferred) without deadlock or aliasing.
    fn notify(&self, running: bool, state: RunState) {
        let mut order: Vec<HandlerId> = lock(&self.inner.core)
            .entries
            .iter()
            .map(|e| e.id)
            .collect();
        if !running {
            order.reverse();
        }
        for prepare in [true, false] {
            for &id in &order {
                let taken = {
                    let mut core = lock(&self.inner.core);
                    core.entries.iter_mut().find(|e| e.id == id).and_then(|e| {
                        if prepare {
                            e.prepare.take()
                        } else {
                            e.handler.take()
                        }
                    })
                };
                let Some(mut callback) = taken else { continue };
                callback(running, state);
                let mut core = lock(&self.inner.core);
                if let Some(e) = core.entries.iter_mut().find(|e| e.id == id) {
                    let slot = if prepare {
                        &mut e.prepare
                    } else {
                        &mut e.handler
                    };
                    *slot = Some(callback);
                } else {
                    drop(core);
                    drop(callback); // removed during its own call
                }
            }
        }
    }

    fn finish_round(&self) {
        let mut core = lock(&self.inner.core);
        core.in_round = false;
        if !core.deferred.is_empty() {
            self.inner.deferral.schedule();
        }
    }
}

/// Ends a notification round when dropped, also if a handler panics (else every later
/// request would be deferred forever).
struct Round<'a>(&'a RunStateMachine);

impl Drop for Round<'_> {
    fn drop(&mut self) {
        self.0.finish_round();
    }
}

impl RunStateMachine {
    /// The deferral BH: posted stops first (QEMU's main loop checks them each
    /// iteration), then the requests deferred during rounds, in order.
    fn run_pending(&self) {
        if lock(&self.inner.core).in_round {
            return; // `finish_round` reschedules us
        }
        let posted = lock(&self.inner.stop_request).take();
        if let Some(to) = posted {
            // A posted stop of a VM that is not live is dropped, as in QEMU. It is
            // performed ahead of requests deferred during rounds: QEMU's main loop checks
            // posted stops first, each iteration.
            let _ = self.stop_request(to, true);
        }
        loop {
            let request = {
                let mut core = lock(&self.inner.core);
                if core.in_round {
                    return;
                }
                match core.deferred.pop_front() {
                    Some(r) => r,
                    None => return,
                }
            };
            // Errors of deferred requests have no caller to return to; an invalid
            // deferred transition is dropped (the state machine stays consistent).
            let _ = match request {
                Request::Start => self.start_request(true),
                Request::Stop(to) => self.stop_request(to, true),
            };
        }
    }
}

impl std::fmt::Debug for RunStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunStateMachine")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}
