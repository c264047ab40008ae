//! Clients on the server's `AioContext`: accept, non-blocking reads into the framer,
//! replies and events into a bounded output buffer flushed on write readiness.
//!
//! No `RefCell` borrow is held while a command runs, so a handler may poll the context
//! (nested), and other clients' callbacks may run meanwhile. A client's callbacks hold
//! it weakly; the monitor's list holds it strongly until it disconnects.
//!
//! End of input (a client that half-closes, as `socat` and `nc -N` do) is not the end
//! of the connection: every command read before it has run, and its reply (and the
//! events queued meanwhile) is still owed. The client stops being read, and is closed
//! once its output has gone out, as QEMU does.

use std::cell::RefCell;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::rc::Rc;

use aio_context::FdHandler;
use nix::sys::socket::{self, MsgFlags};

use crate::lexer::{Frame, Framer};
use crate::protocol::greeting;
use crate::server::Inner;
use crate::session::Session;

/// Clients served at once; more are closed at once (QEMU serves one per `-qmp`).
pub(crate) const MAX_CLIENTS: usize = 16;
/// Unsent output a client may have before it is disconnected (it stopped reading).
const MAX_OUTPUT: usize = 16 << 20;
/// Bytes read per readiness callback, for fairness between clients.
const READ_BUDGET: usize = 1 << 20;

pub(crate) struct Client {
    stream: UnixStream,
    state: RefCell<ClientState>,
}

struct ClientState {
    framer: Framer,
    out: Vec<u8>,
    /// Bytes of `out` already sent.
    sent: usize,
    session: Session,
    /// The fd handler includes a write callback.
    watching_write: bool,
    /// The client half-closed: no more reads; close once the output is sent.
    eof: bool,
    closed: bool,
}

impl Client {
    /// Unregisters and shuts down the connection (the monitor is going away).
    pub(crate) fn detach(&self, ctx: &aio_context::AioContext) {
        self.state.borrow_mut().closed = true;
        ctx.remove_fd_handler(self.stream.as_raw_fd());
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
    }

    fn pending(&self) -> usize {
        let s = self.state.borrow();
        s.out.len() - s.sent
    }
}

/// Accepts every waiting connection.
pub(crate) fn accept_all(inner: &Rc<Inner>) {
    loop {
        let accepted = match inner.listener.borrow().as_ref() {
            Some(l) => l.listener.accept(),
            None => return,
        };
        match accepted {
            Ok((stream, _)) => add_client(inner, stream),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) => {
                // EMFILE and friends: report, and try again on the next readiness.
                tracing::error!("qmp: accept failed: {e}");
                return;
            }
        }
    }
}

pub(crate) fn add_client(inner: &Rc<Inner>, stream: UnixStream) {
    let full = inner.clients.borrow().len() >= MAX_CLIENTS;
    if full || stream.set_nonblocking(true).is_err() {
        let _ = stream.shutdown(std::net::Shutdown::Both);
        // Debug, not warn: a local process could fill the log by connecting in a loop.
        tracing::debug!(
            full,
            max = MAX_CLIENTS,
            "qmp: client refused (too many clients, or its socket cannot be non-blocking)"
        );
        return; // dropped: closed
    }
    let client = Rc::new(Client {
        stream,
        state: RefCell::new(ClientState {
            framer: Framer::new(inner.max_message_len.get()),
            out: greeting(&inner.version.borrow()),
            sent: 0,
            session: Session::default(),
            watching_write: true, // forces the first `watch`
            eof: false,
            closed: false,
        }),
    });
    inner.clients.borrow_mut().push(client.clone());
    inner.accepted.set(inner.accepted.get() + 1);
    tracing::debug!(
        clients = inner.clients.borrow().len(),
        "qmp: client connected"
    );
    watch(inner, &client, false);
    flush(inner, &client);
}

/// (Re)registers the client's fd handler: read until end of input, write while output
/// is pending.
fn watch(inner: &Rc<Inner>, client: &Rc<Client>, write: bool) {
    let read = {
        let mut s = client.state.borrow_mut();
        if s.closed || s.watching_write == write {
            return;
        }
        s.watching_write = write;
        !s.eof
    };
    let mut handler = FdHandler::new();
    if read {
        let (wi, wc) = (Rc::downgrade(inner), Rc::downgrade(client));
        handler = handler.on_read(move || {
            if let (Some(inner), Some(client)) = (wi.upgrade(), wc.upgrade()) {
                on_readable(&inner, &client);
            }
        });
    }
    if write {
        let (wi, wc) = (Rc::downgrade(inner), Rc::downgrade(client));
        handler = handler.on_write(move || {
            if let (Some(inner), Some(client)) = (wi.upgrade(), wc.upgrade()) {
                flush(&inner, &client);
            }
        });
    }
    if let Err(e) = inner.ctx.set_fd_handler(client.stream.as_raw_fd(), handler) {
        tracing::error!("qmp: cannot watch client: {e}");
        close(inner, client);
    }
}

/// Disconnects a client (idempotent).
pub(crate) fn close(inner: &Inner, client: &Rc<Client>) {
    {
        let mut s = client.state.borrow_mut();
        if s.closed {
            return;
        }
        s.closed = true;
        s.out = Vec::new();
    }
    inner.ctx.remove_fd_handler(client.stream.as_raw_fd());
    let _ = client.stream.shutdown(std::net::Shutdown::Both);
    tracing::debug!("qmp: client disconnected");
    inner
        .clients
        .borrow_mut()
        .retain(|c| !Rc::ptr_eq(c, client));
}

fn on_readable(inner: &Rc<Inner>, client: &Rc<Client>) {
    let mut buf = vec![0u8; 64 << 10];
    let mut budget = READ_BUDGET;
    let mut frames = Vec::new();
    while budget > 0 {
        let n = match (&client.stream).read(&mut buf) {
            Ok(0) => {
                end_of_input(inner, client);
                return;
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => {
                close(inner, client);
                return;
            }
        };
        budget = budget.saturating_sub(n);
        client
            .state
            .borrow_mut()
            .framer
            .feed(&buf[..n], &mut frames);
        for frame in frames.drain(..) {
            if client.state.borrow().closed {
                return;
            }
            handle_frame(inner, client, frame);
        }
        if client.state.borrow().closed {
            return;
        }
    }
    flush(inner, client);
}

/// The client will send nothing more: stop reading, deliver what is owed, then close.
fn end_of_input(inner: &Rc<Inner>, client: &Rc<Client>) {
    {
        let mut s = client.state.borrow_mut();
        if s.closed || s.eof {
            return;
        }
        s.eof = true;
        // Re-register below without the read callback (a readable EOF would spin).
        s.watching_write = false;
    }
    inner.ctx.remove_fd_handler(client.stream.as_raw_fd());
    flush(inner, client);
}

fn handle_frame(inner: &Rc<Inner>, client: &Rc<Client>, frame: Frame) {
    // Events emitted before this command go out before its reply (and before a
    // negotiation it completes); events it causes, too.
    flush_events(inner);
    let mut session = client.state.borrow().session;
    let response = session.respond(&inner.commands, frame);
    client.state.borrow_mut().session = session;
    flush_events(inner);
    queue(inner, client, &response.line);
    if response.disconnect {
        flush(inner, client);
        close(inner, client);
        return;
    }
    if inner.after_reply.is_pending() {
        flush(inner, client); // the reply goes out before the actions (a VMM's exit)
        inner.after_reply.run();
    }
}

/// Appends output; a client that lets too much pile up is disconnected.
fn queue(inner: &Inner, client: &Rc<Client>, bytes: &[u8]) {
    let overflow = {
        let mut s = client.state.borrow_mut();
        if s.closed {
            return;
        }
        s.out.extend_from_slice(bytes);
        s.out.len() - s.sent > MAX_OUTPUT
    };
    if overflow {
        tracing::warn!("qmp: client does not read its replies; disconnecting it");
        close(inner, client);
    }
}

/// Sends what the socket takes; watches for write readiness while output remains.
pub(crate) fn flush(inner: &Rc<Inner>, client: &Rc<Client>) {
    loop {
        let result = {
            let s = client.state.borrow();
            if s.closed {
                return;
            }
            if s.sent == s.out.len() {
                break;
            }
            send(&client.stream, &s.out[s.sent..])
        };
        match result {
            Ok(n) => client.state.borrow_mut().sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => {
                close(inner, client);
                return;
            }
        }
    }
    {
        let mut s = client.state.borrow_mut();
        if s.sent == s.out.len() {
            s.out.clear();
            s.sent = 0;
        } else if s.sent > (1 << 16) {
            let sent = s.sent;
            s.out.drain(..sent);
            s.sent = 0;
        }
    }
    let pending = client.pending() > 0;
    if !pending && client.state.borrow().eof {
        close(inner, client); // everything owed has gone out
        return;
    }
    watch(inner, client, pending);
}

/// Delivers queued events and pending output once, without blocking or watching (the
/// monitor is going away).
pub(crate) fn final_flush(inner: &Inner) {
    let (lines, _) = inner.events.drain();
    for client in inner.clients.borrow().iter() {
        let mut s = client.state.borrow_mut();
        if s.closed {
            continue;
        }
        if s.session.negotiated() {
            for line in &lines {
                s.out.extend_from_slice(line);
            }
        }
        while s.sent < s.out.len() {
            match send(&client.stream, &s.out[s.sent..]) {
                Ok(n) => s.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
    }
}

/// `send` with MSG_NOSIGNAL: a vanished client is an error, not a SIGPIPE.
fn send(stream: &UnixStream, bytes: &[u8]) -> io::Result<usize> {
    Ok(socket::send(
        stream.as_raw_fd(),
        bytes,
        MsgFlags::MSG_NOSIGNAL,
    )?)
}

/// Delivers queued events to every negotiated client.
pub(crate) fn flush_events(inner: &Rc<Inner>) {
    let (lines, dropped) = inner.events.drain();
    if dropped > 0 {
        tracing::warn!("qmp: {dropped} events dropped (the monitor's thread was busy)");
    }
    if lines.is_empty() {
        return;
    }
    let clients: Vec<Rc<Client>> = inner.clients.borrow().clone();
    for client in &clients {
        if !client.state.borrow().session.negotiated() {
            continue;
        }
        for line in &lines {
            queue(inner, client, line);
        }
        flush(inner, client);
    }
}
