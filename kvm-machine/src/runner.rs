//! The main loop of a VMM process: an `AioContext` on the main thread, the run state
//! machine whose change handler pauses and resumes the vCPUs, and the handling of the
//! [`SystemEvent`]s devices post (reset, power-off, debug exit, vCPU failure).
//!
//! The QMP monitor plugs in here: it registers its socket on [`Runner::context`],
//! drives [`Runner::runstate`] (`stop`/`cont`), calls [`MachineControl::system_reset`]
//! (`system_reset`) and [`Runner::request_quit`] (`quit`), and sets the run state
//! machine's event hook to send STOP/RESUME/SHUTDOWN/RESET events.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::mpsc::Receiver;

use aio_context::AioContext;
use bottom_half::BhList;
use runstate::{Event, RunState, RunStateMachine};

use super::{Machine, MachineControl, Result, event_channel};
use crate::config::MachineConfig;
use crate::events::SystemEvent;

/// What [`Runner::on_device_deleted`] installs.
type DeletedHook = Box<dyn Fn(qdev_bus::DeviceDeleted)>;

/// The main thread's loop around one [`Machine`].
pub struct Runner {
    ctx: AioContext,
    bhs: BhList,
    runstate: RunStateMachine,
    machine: Machine,
    events: Receiver<SystemEvent>,
    exit: Rc<Cell<Option<i32>>>,
    no_reboot: bool,
    /// Whether a monitor is attached: a vCPU failure then stops the VM (for the user
    /// to inspect) instead of ending the process.
    monitor_attached: bool,
    /// Where [`SystemEvent::DeviceDeleted`] goes (the VMM's device layer, then QMP).
    device_deleted: RefCell<Option<DeletedHook>>,
}

impl Runner {
    /// Creates the main context (this thread must not have one), builds the machine and
    /// registers the vCPU pause/resume handler. The vCPUs stay parked until
    /// [`run`](Self::run) starts the VM (unless `-S`).
    ///
    /// # Errors
    ///
    /// The machine's errors; a context that cannot be created is [`super::Error::Thread`].
    pub fn new(config: &MachineConfig) -> Result<Runner> {
        let ctx = AioContext::new()
            .map_err(|e| super::Error::Thread(std::io::Error::other(e.to_string())))?;
        let handle = ctx.handle();
        let (sink, events) = event_channel(move || handle.notify());
        let machine = Machine::new(config, sink, ctx.handle())?;
        if let Some(console) = &machine.platform().console {
            let writer = pc_platform::serial::ConsoleWriter::stdout()
                .map_err(|e| super::Error::io("-serial stdio", e))?;
            console
                .attach(&ctx, writer)
                .map_err(|e| super::Error::io("-serial stdio", e))?;
        }
        let handle = ctx.handle();
        // The run state machine defers through BHs of its own list, polled by `run`
        // after each iteration; scheduling one wakes the context.
        let bhs = BhList::new(move || handle.notify());
        let runstate = RunStateMachine::new(&bhs.scheduler());
        let control = machine.control();
        runstate.add_handler(0, move |running, _| {
            if running {
                control.resume_all();
            } else if let Err(e) = control.pause_all() {
                tracing::error!("{e}");
            }
        });
        Ok(Runner {
            ctx,
            bhs,
            runstate,
            machine,
            events,
            exit: Rc::new(Cell::new(None)),
            no_reboot: config.no_reboot,
            monitor_attached: config.stop_on_internal_error,
            device_deleted: RefCell::new(None),
        })
    }

    /// The main `AioContext` (register fd handlers, BHs, timers here).
    pub fn context(&self) -> &AioContext {
        &self.ctx
    }

    /// The run state machine (`stop` = `stop(RunState::Paused)`, `cont` = `start()`).
    pub fn runstate(&self) -> &RunStateMachine {
        &self.runstate
    }

    /// The machine.
    pub fn machine(&self) -> &Machine {
        &self.machine
    }

    /// The vCPU and reset control handle.
    pub fn control(&self) -> MachineControl {
        self.machine.control()
    }

    /// A closure that ends [`run`](Self::run) with `status` (the monitor's `quit`; call
    /// on the main thread).
    pub fn quit_handle(&self) -> impl Fn(i32) + 'static {
        let exit = self.exit.clone();
        move |status| exit.set(Some(status))
    }

    /// Sets where the PCI tree's `DEVICE_DELETED` events go: `hook` runs on the main
    /// thread, in the loop of [`run`](Self::run), once per unplugged device after its
    /// grace period (replacing an earlier hook; without one they are dropped).
    pub fn on_device_deleted(&self, hook: impl Fn(qdev_bus::DeviceDeleted) + 'static) {
        *self.device_deleted.borrow_mut() = Some(Box::new(hook));
    }

    /// Ends [`run`](Self::run) with `status` after the current iteration.
    pub fn request_quit(&self, status: i32) {
        self.exit.set(Some(status));
    }

    /// Starts the VM unless `start_paused`, then loops until something ends it; stops
    /// and joins the vCPUs and returns the process exit status.
    pub fn run(self, start_paused: bool) -> i32 {
        qemu_log::boot_time::mark("run");
        if !start_paused {
            if let Err(e) = self.runstate.start() {
                tracing::error!("cannot start: {e}");
                return 1;
            }
        }
        let status = loop {
            if let Some(status) = self.exit.get() {
                break status;
            }
            self.ctx.poll(true);
            self.bhs.poll();
            while let Ok(event) = self.events.try_recv() {
                self.handle(event);
            }
        };
        self.machine.control().shutdown_vcpus();
        if let Some(console) = &self.machine.platform().console {
            console.flush_at_exit();
        }
        status
    }

    fn handle(&self, event: SystemEvent) {
        if self.exit.get().is_some() && !matches!(event, SystemEvent::Fatal(_)) {
            // The first request to end the process decides its status (as QEMU's).
            return;
        }
        match event {
            SystemEvent::DeviceDeleted(deleted) => {
                if let Some(hook) = &*self.device_deleted.borrow() {
                    hook(deleted);
                }
            }
            SystemEvent::Exit(status) => self.exit.set(Some(status)),
            SystemEvent::Shutdown => {
                self.runstate.emit_event(Event::Shutdown {
                    guest: true,
                    reason: "guest-shutdown".into(),
                });
                self.exit.set(Some(0));
            }
            SystemEvent::Reset if self.no_reboot => {
                self.runstate.emit_event(Event::Shutdown {
                    guest: true,
                    reason: "guest-reset".into(),
                });
                self.exit.set(Some(0));
            }
            SystemEvent::Reset => {
                if let Err(e) = self.machine.control().system_reset() {
                    tracing::error!("reset: {e}");
                }
                self.runstate.emit_event(Event::Reset { guest: true });
            }
            SystemEvent::Fatal(message) => {
                tracing::error!("{message}; terminating");
                self.exit.set(Some(1));
            }
            SystemEvent::InternalError(message) => {
                tracing::error!("{message}");
                if self.monitor_attached {
                    let _ = self.runstate.stop(RunState::InternalError);
                } else {
                    self.exit.set(Some(1));
                }
            }
        }
    }
}
