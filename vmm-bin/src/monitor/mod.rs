//! The QMP monitor: QEMU's machine protocol, byte-compatible on the wire, served on the
//! main thread's [`AioContext`] from a unix socket (`-qmp unix:PATH,server=on,wait=off`).
//!
//! - Wire format: QEMU 10's greeting, `qmp_capabilities` negotiation (with `oob`),
//!   `execute`/`exec-oob`, `return`/`error` with the request's `id`, timestamped events,
//!   `\r\n` line ends, QEMU's key order, separators and escapes. Messages need no
//!   newline (QEMU's brace-counting framer; the `qemu.qmp` client sends none). Errors
//!   use QEMU's classes and texts (qapi/qmp-dispatch.c, monitor/qmp.c).
//! - Run state: `stop`, `cont`, `system_reset`, `quit` act on the
//!   [`RunStateMachine`]; the monitor installs runstate's event hook, so STOP, RESUME,
//!   SHUTDOWN and RESET reach clients in the order runstate emits them.
//! - Other parts of vmm-bin add commands through [`Monitor::commands`] and emit events
//!   (BLOCK_IO_ERROR, DEVICE_DELETED) from any thread through [`Monitor::events`].
//!
//! # Wiring (main)
//!
//! ```no_run
//! use std::rc::Rc;
//! use aio_context::AioContext;
//! use runstate::RunStateMachine;
//! use vmm_bin::monitor::{MachineHooks, Monitor, QmpOption};
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
//!
//! # Threat model
//!
//! | input | parsed by | bounds |
//! | --- | --- | --- |
//! | client bytes | [`lexer`](self) framer | message ≤ `max_message_len` (8 MiB default; over it: error reply, disconnect); nesting ≤ 120; skipped garbage is not buffered |
//! | a framed message | `serde_json` | duplicate keys refused; numbers as serde_json reads them |
//! | a request | envelope checks, then the handler | unknown members, wrong types: QEMU's errors, never a panic |
//! | output to a client that does not read | output buffer | 16 MiB, then disconnect |
//! | clients | accept | 16 at once; more are closed on accept |
//! | events while the main loop is busy | event queue | 4096, oldest dropped (counted, logged) |

mod commands;
mod dispatch;
mod events;
mod json;
mod lexer;
mod options;
mod protocol;
mod server;
mod socket;

use std::cell::{Cell, RefCell};
use std::path::PathBuf;
use std::rc::Rc;

use aio_context::{AioContext, FdHandler};
use runstate::RunStateMachine;

pub use commands::{CommandFn, Commands, no_arguments, parse_args};
pub use events::{BlockErrorAction, BlockIoError, IoOperation, QmpEvents};
pub use options::QmpOption;
pub use protocol::{ErrorClass, QmpError, QmpResult, Version};

/// The default bound on one message's length.
pub const DEFAULT_MAX_MESSAGE_LEN: usize = 8 << 20;

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
    /// The socket could not be set up.
    #[error("QMP socket: {0}")]
    Socket(String),
    /// A command name was registered twice.
    #[error("QMP command '{0}' is already registered")]
    DuplicateCommand(String),
    /// The monitor already listens (one socket per monitor).
    #[error("the QMP monitor already listens on {0}")]
    AlreadyListening(PathBuf),
    /// A system call failed.
    #[error("QMP monitor: {0}")]
    Io(#[from] std::io::Error),
}

/// `Result` with [`MonitorError`].
pub type Result<T> = std::result::Result<T, MonitorError>;

struct Inner {
    ctx: AioContext,
    machine: Rc<dyn MachineControl>,
    commands: Commands,
    events: QmpEvents,
    version: Rc<RefCell<Version>>,
    listener: RefCell<Option<socket::Listener>>,
    clients: RefCell<Vec<Rc<server::Client>>>,
    /// Clients accepted since the monitor started (ends a `wait=on` wait).
    accepted: Cell<u64>,
    max_message_len: Cell<usize>,
    quit_requested: Rc<Cell<bool>>,
}

/// A QMP monitor on the calling thread's [`AioContext`]. Dropping the last handle closes
/// every client and removes the socket file. Not `Send`: it lives on the main thread;
/// other threads use [`QmpEvents`].
#[derive(Clone)]
pub struct Monitor {
    inner: Rc<Inner>,
}

impl Monitor {
    /// A monitor with the built-in commands, driving `vm` and `machine`. It installs
    /// `vm`'s event hook (replacing any other): components emit run state related
    /// events with `RunStateMachine::emit_event` / `request_stop_with`, and they reach
    /// QMP clients in runstate's order.
    ///
    /// # Errors
    ///
    /// [`MonitorError::Io`] if the event notifier cannot be created or watched.
    pub fn new(
        ctx: &AioContext,
        vm: &RunStateMachine,
        machine: Rc<dyn MachineControl>,
    ) -> Result<Monitor> {
        let events = QmpEvents::new()?;
        let commands = Commands::new();
        let version = Rc::new(RefCell::new(Version::default()));
        let quit_requested = Rc::new(Cell::new(false));
        dispatch::register_builtins(&commands, vm, &machine, &version, &quit_requested)?;
        let inner = Rc::new(Inner {
            ctx: ctx.clone(),
            machine,
            commands,
            events: events.clone(),
            version,
            listener: RefCell::new(None),
            clients: RefCell::new(Vec::new()),
            accepted: Cell::new(0),
            max_message_len: Cell::new(DEFAULT_MAX_MESSAGE_LEN),
            quit_requested,
        });
        let weak = Rc::downgrade(&inner);
        ctx.set_event_notifier(
            &events.shared().notifier,
            Some(Box::new(move || {
                if let Some(inner) = weak.upgrade() {
                    server::flush_events(&inner);
                }
            })),
        )?;
        let hook = events.clone();
        vm.set_event_hook(move |event| hook.runstate_event(&event));
        Ok(Monitor { inner })
    }

    /// The command table: register more commands here.
    pub fn commands(&self) -> &Commands {
        &self.inner.commands
    }

    /// The event emitter (clone it into other threads).
    pub fn events(&self) -> QmpEvents {
        self.inner.events.clone()
    }

    /// Sets the version of the greeting and `query-version`.
    pub fn set_version(&self, version: Version) {
        *self.inner.version.borrow_mut() = version;
    }

    /// Bounds one message's length for clients that connect from now on.
    pub fn set_max_message_len(&self, len: usize) {
        self.inner.max_message_len.set(len.max(64));
    }

    /// Listens on the option's socket. With `wait=on`, runs the context until the first
    /// client connects (QEMU's startup behaviour) and serves it from then on; a
    /// termination signal read meanwhile ([`crate::signals`]) ends the wait early.
    ///
    /// # Errors
    ///
    /// [`MonitorError::Socket`] if the path is unusable (too long, not a socket, in use
    /// by a live server, no permission); [`MonitorError::AlreadyListening`].
    pub fn listen(&self, option: &QmpOption) -> Result<()> {
        if let Some(l) = self.inner.listener.borrow().as_ref() {
            return Err(MonitorError::AlreadyListening(l.path().to_owned()));
        }
        let listener = socket::Listener::bind(&option.path)?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener.listener);
        *self.inner.listener.borrow_mut() = Some(listener);
        let weak = Rc::downgrade(&self.inner);
        let handler = FdHandler::new().on_read(move || {
            if let Some(inner) = weak.upgrade() {
                server::accept_all(&inner);
            }
        });
        if let Err(e) = self.inner.ctx.set_fd_handler(fd, handler) {
            *self.inner.listener.borrow_mut() = None;
            return Err(e.into());
        }
        if option.wait {
            // The main loop runs meanwhile, so its signal handler can end the wait.
            while self.inner.accepted.get() == 0 && !crate::signals::terminating() {
                self.inner.ctx.poll(true);
            }
        }
        Ok(())
    }

    /// The socket's path, while listening.
    pub fn socket_path(&self) -> Option<PathBuf> {
        self.inner
            .listener
            .borrow()
            .as_ref()
            .map(|l| l.path().to_owned())
    }

    /// How many clients are connected.
    pub fn client_count(&self) -> usize {
        self.inner.clients.borrow().len()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // What is owed (a SHUTDOWN event of the exit under way, replies) goes out if
        // the socket takes it now; the process does not wait for slow readers.
        server::final_flush(self);
        self.events.close();
        self.ctx.remove_fd_handler(std::os::fd::AsRawFd::as_raw_fd(
            &self.events.shared().notifier,
        ));
        if let Some(l) = self.listener.get_mut().take() {
            self.ctx
                .remove_fd_handler(std::os::fd::AsRawFd::as_raw_fd(&l.listener));
        }
        for client in self.clients.get_mut().drain(..) {
            client.detach(&self.ctx);
        }
    }
}

impl std::fmt::Debug for Monitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Monitor")
            .field("socket", &self.socket_path())
            .field("clients", &self.client_count())
            .finish_non_exhaustive()
    }
}
