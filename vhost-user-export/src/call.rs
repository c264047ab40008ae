//! The call fds: how the export tells the frontend that a queue has used buffers,
//! without ever blocking its iothread.
//!
//! A call fd is the frontend's eventfd, and `O_NONBLOCK` lives on the open file
//! description that the frontend shares: it can clear the flag and fill the counter
//! (`0xffff_ffff_ffff_fffe`), and a plain `write(2)` then sleeps until the frontend
//! reads, which a hostile one never does. Eventfds take no `RWF_NOWAIT` writes
//! (`EOPNOTSUPP`, Linux 6.18), so each signal is an io_uring `IORING_OP_WRITE`: the
//! kernel tries it without blocking and, if the counter is full, waits with a poll of
//! its own, which blocks no thread. At most one write per queue is in flight; signals
//! that arrive meanwhile are merged into one more write when it completes (the
//! frontend reads the used ring after each wakeup, so one signal covers them all).
//! Replacing or dropping a call fd cancels its write.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};

use aio_context::{AioContext, IoThread, OpId};

use virtio_core::VirtioInterrupt;

/// One queue's call fd.
#[derive(Default)]
struct Slot {
    fd: Option<Arc<OwnedFd>>,
    /// Bumped whenever `fd` changes: a write for an older fd finds its slot moved on.
    generation: u64,
    /// The write in flight, if any.
    in_flight: Option<OpId>,
    /// A signal came while `in_flight` was set.
    again: bool,
}

type Slots = Arc<Mutex<Vec<Slot>>>;

fn lock(slots: &Slots) -> MutexGuard<'_, Vec<Slot>> {
    slots.lock().unwrap_or_else(|e| e.into_inner())
}

/// The call fds of one export's queues.
pub(super) struct CallFds {
    slots: Slots,
    iothread: Arc<IoThread>,
}

impl CallFds {
    /// `queues` queues without call fds, signalled from `iothread`.
    pub(super) fn new(queues: usize, iothread: Arc<IoThread>) -> CallFds {
        CallFds {
            slots: Arc::new(Mutex::new((0..queues).map(|_| Slot::default()).collect())),
            iothread,
        }
    }

    /// Replaces queue `index`'s call fd (`None`: no signals), cancelling a write to the
    /// old one.
    pub(super) fn set(&self, index: usize, fd: Option<OwnedFd>) {
        let cancel = {
            let mut slots = lock(&self.slots);
            let Some(slot) = slots.get_mut(index) else {
                return;
            };
            slot.generation += 1;
            slot.fd = fd.map(Arc::new);
            slot.again = false;
            slot.in_flight.take()
        };
        if let Some(id) = cancel {
            // Operations are cancelled in the context that submitted them. The write
            // completes (cancelled) later, finds a newer generation and drops its fd.
            self.iothread.run(move || {
                if let Some(ctx) = AioContext::current() {
                    let _ = ctx.cancel_op(id);
                }
            });
        }
    }

    /// Drops every call fd (the frontend is gone).
    pub(super) fn clear(&self) {
        let n = lock(&self.slots).len();
        for i in 0..n {
            self.set(i, None);
        }
    }
}

impl VirtioInterrupt for CallFds {
    fn notify_queue(&self, index: u16) {
        signal(&self.slots, usize::from(index));
    }
}

/// A write in flight: the fd and the 8 bytes stay alive until it completes.
struct CallWrite {
    slots: Slots,
    index: usize,
    generation: u64,
    _fd: Arc<OwnedFd>,
    _value: Box<[u8; 8]>,
}

/// Signals queue `index`, on the current (iothread) context.
fn signal(slots: &Slots, index: usize) {
    let mut guard = lock(slots);
    let Some(slot) = guard.get_mut(index) else {
        return;
    };
    let Some(fd) = slot.fd.clone() else {
        return;
    };
    if slot.in_flight.is_some() {
        slot.again = true;
        return;
    }
    let ctx = AioContext::current().filter(AioContext::supports_io_uring_ops);
    let Some(ctx) = ctx else {
        // Without io_uring the export cannot do block I/O either; keep the signal
        // best effort (a frontend that clears O_NONBLOCK again can still block it).
        drop(guard);
        return write_nonblocking(&fd);
    };
    let value = Box::new(1u64.to_ne_bytes());
    let entry = io_uring::opcode::Write::new(
        io_uring::types::Fd(fd.as_raw_fd()),
        value.as_ptr(),
        value.len() as u32,
    )
    // -1: the file position (an eventfd has none to speak of).
    .offset(u64::MAX)
    .build();
    let write = CallWrite {
        slots: slots.clone(),
        index,
        generation: slot.generation,
        _fd: fd,
        _value: value,
    };
    // SAFETY: the entry points at the fd and the heap bytes that `write` owns (moving
    // `write` does not move the boxed bytes); the context keeps `write` until the
    // operation completes.
    match unsafe { ctx.submit_with(entry, write, written) } {
        Ok(id) => slot.in_flight = Some(id),
        Err((e, _)) => tracing::error!("vhost-user: queue {index}: cannot signal the call fd: {e}"),
    }
}

/// A call-fd write completed: sends the signals merged meanwhile.
fn written(write: CallWrite, result: i32) {
    let mut guard = lock(&write.slots);
    let Some(slot) = guard.get_mut(write.index) else {
        return;
    };
    if slot.generation != write.generation {
        return; // the fd was replaced or dropped; this write was cancelled
    }
    slot.in_flight = None;
    if result < 0 && result != -libc::ECANCELED {
        let e = std::io::Error::from_raw_os_error(-result);
        tracing::warn!(
            "vhost-user: queue {}: writing the call fd: {e}",
            write.index
        );
    }
    if std::mem::take(&mut slot.again) {
        drop(guard);
        signal(&write.slots, write.index);
    }
}

/// The fallback without io_uring: `O_NONBLOCK` set again, then one write.
fn write_nonblocking(fd: &OwnedFd) {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let _ = fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
    let _ = nix::unistd::write(fd, &1u64.to_ne_bytes());
}
