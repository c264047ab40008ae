//! The VMM's QMP monitor: the [`qmp`] crate's [`qmp::Server`] (QEMU's wire protocol,
//! served on the main thread's [`AioContext`] from a unix socket, `-qmp
//! unix:PATH,server=on,wait=off`) with this VMM's commands and events registered.
//!
//! - Wire format, framing, negotiation, the command table, event delivery and the
//!   socket (with its bounds and threat model) are the [`qmp`] crate's.
//! - Run state: `stop`, `cont`, `system_reset`, `quit` act on the
//!   [`RunStateMachine`]; the monitor installs runstate's event hook, so STOP, RESUME,
//!   SHUTDOWN and RESET reach clients in the order runstate emits them.
//! - The machine's devices add commands through [`Monitor::commands`] and emit events
//!   (BLOCK_IO_ERROR, DEVICE_DELETED, see [`VmEvents`]) from any thread through
//!   [`Monitor::events`].
//!
//! # Wiring (main)
//!
//! ```no_run
//! use std::rc::Rc;
//! use aio_context::AioContext;
//! use runstate::RunStateMachine;
//! use pc_devices::monitor::{MachineHooks, Monitor, QmpOption};
//!
//! let ctx = AioContext::new()?;
//! let vm = RunStateMachine::new(ctx.handle().bh_scheduler());
//! // The machine's vCPUs follow the run state through a runstate change handler
//! // (`vm.add_handler`); reset and quit come through these hooks.
//! let quit = Rc::new(std::cell::Cell::new(false));
//! let q = quit.clone();
//! let hooks = MachineHooks::new(|| { /* reset devices and vCPUs */ }, move || q.set(true));
//! let monitor = Monitor::new(&ctx, &vm, Rc::new(hooks))?;
//! monitor.commands().register("query-iothreads", |_args| Ok(serde_json::json!([])))?;
//! let events = monitor.events(); // Send + Sync: give it to the block layer, qdev-bus
//! monitor.listen(&"unix:/tmp/qmp.sock,server=on,wait=off".parse::<QmpOption>()?)?;
//! vm.start()?;
//! while !quit.get() {
//!     ctx.poll(true);
//! }
//! drop(monitor); // closes clients and removes the socket file
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The integration test `tests/qmp_monitor.rs` is a complete, running setup with a fake
//! machine whose "vCPU" thread follows the run state.

mod builtins;
mod events;
mod options;

use std::path::PathBuf;
use std::rc::Rc;

use aio_context::AioContext;
use runstate::RunStateMachine;

pub use events::{BlockErrorAction, BlockIoError, IoOperation, VmEvents};
pub use options::QmpOption;

/// What the monitor asks of the machine. Called on the monitor's (main) thread.
pub trait MachineControl {
    /// Resets the machine: devices and vCPUs (QMP `system_reset`). The monitor then
    /// emits RESET through runstate, and puts a VM that was not running in prelaunch,
    /// as QEMU does.
    fn system_reset(&self);
    /// Makes the VMM exit (QMP `quit`), after the SHUTDOWN event and the reply were
    /// queued; typically sets the flag the main loop checks.
    fn quit(&self);
}

/// A [`MachineControl`] made of two closures.
pub struct MachineHooks {
    reset: Box<dyn Fn()>,
    quit: Box<dyn Fn()>,
}

impl MachineHooks {
    /// Hooks calling `reset` for `system_reset` and `quit` for `quit`.
    pub fn new(reset: impl Fn() + 'static, quit: impl Fn() + 'static) -> MachineHooks {
        MachineHooks {
            reset: Box::new(reset),
            quit: Box::new(quit),
        }
    }
}

impl MachineControl for MachineHooks {
    fn system_reset(&self) {
        (self.reset)();
    }
    fn quit(&self) {
        (self.quit)();
    }
}

impl std::fmt::Debug for MachineHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MachineHooks").finish_non_exhaustive()
    }
}

/// Errors of the monitor's setup (protocol errors go to the client, never here).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// The `-qmp` option is malformed or unsupported.
    #[error("invalid -qmp option: {0}")]
    Option(String),
    /// The server could not be set up (socket, event notifier, command table).
    #[error(transparent)]
    Qmp(#[from] qmp::Error),
}

/// `Result` with [`MonitorError`].
pub type Result<T> = std::result::Result<T, MonitorError>;

/// The VMM's QMP monitor on the calling thread's [`AioContext`]: a [`qmp::Server`]
/// with the run state commands. Dropping the last handle closes every client and
/// removes the socket file. Not `Send`: it lives on the main thread; other threads use
/// [`qmp::QmpEvents`].
#[derive(Clone, Debug)]
pub struct Monitor {
    server: qmp::Server,
}

impl Monitor {
    /// A monitor with the built-in commands, driving `vm` and `machine`. It installs
    /// `vm`'s event hook (replacing any other): components emit run state related
    /// events with `RunStateMachine::emit_event` / `request_stop_with`, and they reach
    /// QMP clients in runstate's order.
    ///
    /// # Errors
    ///
    /// [`MonitorError::Qmp`] if the event notifier cannot be created or watched.
    pub fn new(
        ctx: &AioContext,
        vm: &RunStateMachine,
        machine: Rc<dyn MachineControl>,
    ) -> Result<Monitor> {
        let server = qmp::Server::new(ctx)?;
        builtins::register_builtins(server.commands(), vm, &machine, &server.after_reply())?;
        let hook = server.events();
        vm.set_event_hook(move |event| hook.runstate_event(&event));
        Ok(Monitor { server })
    }

    /// The command table: register more commands here.
    pub fn commands(&self) -> &qmp::Commands {
        self.server.commands()
    }

    /// The event emitter (clone it into other threads).
    pub fn events(&self) -> qmp::QmpEvents {
        self.server.events()
    }

    /// Sets the version of the greeting and `query-version`.
    pub fn set_version(&self, version: qmp::Version) {
        self.server.set_version(version);
    }

    /// Bounds one message's length for clients that connect from now on.
    pub fn set_max_message_len(&self, len: usize) {
        self.server.set_max_message_len(len);
    }

    /// Listens on the option's socket. With `wait=on`, runs the context until the first
    /// client connects (QEMU's startup behaviour) and serves it from then on.
    ///
    /// # Errors
    ///
    /// [`MonitorError::Qmp`]: the path is unusable (too long, not a socket, in use by a
    /// live server, no permission), or the monitor already listens.
    pub fn listen(&self, option: &QmpOption) -> Result<()> {
        self.listen_until(option, || false)
    }

    /// [`Monitor::listen`], where a `wait=on` wait also ends when `give_up` says so
    /// (checked after each round of the context: the VMM passes "a termination signal
    /// was read", so SIGTERM during the wait ends the process).
    ///
    /// # Errors
    ///
    /// As [`Monitor::listen`].
    pub fn listen_until(&self, option: &QmpOption, give_up: impl Fn() -> bool) -> Result<()> {
        self.server.listen(&option.path)?;
        if option.wait {
            // The main loop runs meanwhile, so its signal handler can end the wait.
            self.server.wait_for_client(give_up);
        }
        Ok(())
    }

    /// The socket's path, while listening.
    pub fn socket_path(&self) -> Option<PathBuf> {
        self.server.socket_path()
    }

    /// How many clients are connected.
    pub fn client_count(&self) -> usize {
        self.server.client_count()
    }
}
