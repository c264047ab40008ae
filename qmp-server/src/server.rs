//! The server: a listening unix socket and its clients on one [`AioContext`], the
//! command table, the event queue and the greeting's version.

use std::cell::{Cell, RefCell};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use aio_context::{AioContext, FdHandler};

use crate::client::{self, Client};
use crate::commands::Commands;
use crate::events::QmpEvents;
use crate::protocol::Version;
use crate::{DEFAULT_MAX_MESSAGE_LEN, Error, Result, session, socket};

/// A deferred action.
type Action = Box<dyn FnOnce()>;

/// Actions that run once the reply of the command being handled has been queued and
/// handed to the socket (cheap to clone; clones share the list). A `quit` command
/// defers the VMM's exit here, so its reply reaches the client first.
#[derive(Clone, Default)]
pub struct AfterReply {
    actions: Rc<RefCell<Vec<Action>>>,
}

impl AfterReply {
    /// Runs `action` after the reply of the command now running (or, called outside
    /// a command, after the next reply the server sends).
    pub fn push(&self, action: impl FnOnce() + 'static) {
        self.actions.borrow_mut().push(Box::new(action));
    }

    /// Runs the pending actions, oldest first, and forgets them. The [`Server`] calls
    /// this once a reply is handed to the socket; a transport of one's own calls it
    /// after sending each reply.
    pub fn run(&self) {
        let actions = std::mem::take(&mut *self.actions.borrow_mut());
        for action in actions {
            action();
        }
    }

    /// Whether actions are waiting.
    pub fn is_pending(&self) -> bool {
        !self.actions.borrow().is_empty()
    }
}

impl std::fmt::Debug for AfterReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AfterReply")
            .field("pending", &self.actions.borrow().len())
            .finish()
    }
}

pub(crate) struct Inner {
    pub(crate) ctx: AioContext,
    pub(crate) commands: Commands,
    pub(crate) events: QmpEvents,
    pub(crate) version: Rc<RefCell<Version>>,
    pub(crate) listener: RefCell<Option<socket::Listener>>,
    pub(crate) clients: RefCell<Vec<Rc<Client>>>,
    /// Clients accepted since the server started (ends a [`Server::wait_for_client`]).
    pub(crate) accepted: Cell<u64>,
    pub(crate) max_message_len: Cell<usize>,
    pub(crate) after_reply: AfterReply,
}

/// A QMP server on the calling thread's [`AioContext`]. Dropping the last handle
/// closes every client and removes the socket file. Not `Send`: it lives on its
/// context's thread; other threads emit events through [`QmpEvents`].
///
/// It answers `qmp_capabilities`, `query-version` and `query-commands` itself; every
/// other command is registered by its owner in [`Server::commands`].
#[derive(Clone)]
pub struct Server {
    inner: Rc<Inner>,
}

impl Server {
    /// A server with the protocol's own commands, not yet listening.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the event notifier cannot be created or watched.
    pub fn new(ctx: &AioContext) -> Result<Server> {
        let events = QmpEvents::new()?;
        let commands = Commands::new();
        let version = Rc::new(RefCell::new(Version::default()));
        session::register_builtins(&commands, &version)?;
        let inner = Rc::new(Inner {
            ctx: ctx.clone(),
            commands,
            events: events.clone(),
            version,
            listener: RefCell::new(None),
            clients: RefCell::new(Vec::new()),
            accepted: Cell::new(0),
            max_message_len: Cell::new(DEFAULT_MAX_MESSAGE_LEN),
            after_reply: AfterReply::default(),
        });
        let weak = Rc::downgrade(&inner);
        ctx.set_event_notifier(
            &events.shared().notifier,
            Some(Box::new(move || {
                if let Some(inner) = weak.upgrade() {
                    client::flush_events(&inner);
                }
            })),
        )?;
        Ok(Server { inner })
    }

    /// The command table: register commands here.
    pub fn commands(&self) -> &Commands {
        &self.inner.commands
    }

    /// The event emitter (clone it into other threads).
    pub fn events(&self) -> QmpEvents {
        self.inner.events.clone()
    }

    /// The list of actions to run after the current reply (clone it into a handler).
    pub fn after_reply(&self) -> AfterReply {
        self.inner.after_reply.clone()
    }

    /// Sets the version of the greeting and `query-version`.
    pub fn set_version(&self, version: Version) {
        *self.inner.version.borrow_mut() = version;
    }

    /// Bounds one message's length for clients that connect from now on (at least 64
    /// bytes).
    pub fn set_max_message_len(&self, len: usize) {
        self.inner.max_message_len.set(len.max(64));
    }

    /// Listens on a unix socket at `path`: mode 0600 before anyone can connect, a
    /// stale socket file replaced, the file removed when the server goes.
    ///
    /// # Errors
    ///
    /// [`Error::Socket`] if the path is unusable (too long, not a socket, in use by a
    /// live server, no permission); [`Error::AlreadyListening`].
    pub fn listen(&self, path: &Path) -> Result<()> {
        if let Some(l) = self.inner.listener.borrow().as_ref() {
            return Err(Error::AlreadyListening(l.path().to_owned()));
        }
        let listener = socket::Listener::bind(path)?;
        let fd = listener.listener.as_raw_fd();
        *self.inner.listener.borrow_mut() = Some(listener);
        let weak = Rc::downgrade(&self.inner);
        let handler = FdHandler::new().on_read(move || {
            if let Some(inner) = weak.upgrade() {
                client::accept_all(&inner);
            }
        });
        if let Err(e) = self.inner.ctx.set_fd_handler(fd, handler) {
            *self.inner.listener.borrow_mut() = None;
            return Err(e.into());
        }
        Ok(())
    }

    /// Runs the context until a first client has connected (QEMU's `wait=on`), or
    /// until `give_up` returns true (checked after every poll: a termination signal).
    /// Returns at once if a client has connected before.
    pub fn wait_for_client(&self, give_up: impl Fn() -> bool) {
        while self.inner.accepted.get() == 0 && !give_up() {
            self.inner.ctx.poll(true);
        }
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
        client::final_flush(self);
        self.events.close();
        self.ctx
            .remove_fd_handler(self.events.shared().notifier.as_raw_fd());
        if let Some(l) = self.listener.get_mut().take() {
            self.ctx.remove_fd_handler(l.listener.as_raw_fd());
        }
        for client in self.clients.get_mut().drain(..) {
            client.detach(&self.ctx);
        }
    }
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("socket", &self.socket_path())
            .field("clients", &self.client_count())
            .finish_non_exhaustive()
    }
}
