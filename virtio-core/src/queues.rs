//! A device's queues, each served on its iothread; starts and stops run there, one at
//! a time in submission order (`ops.rs`). The waiting calls ([`QueueSet::start`],
//! [`QueueSet::stop`], for vhost-user's `GET_VRING_BASE`) and the non-waiting ones
//! ([`QueueSet::start_async`], [`QueueSet::reset_async`], `Drop`) share the order: a
//! vCPU's reset or the reclaim thread never waits for a drain.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use aio_context::IoThread;
use virtio_queue::{Queue, QueueT};

use crate::ops::OpChain;
use crate::runner::{self, QueueHandler, StartArgs};
use crate::{QueueError, QueueSetup};

static NEXT_WORKER: AtomicU64 = AtomicU64::new(1);

struct Running {
    id: u64,
    iothread: Arc<IoThread>,
}

/// The running queues of one device. Dropping it schedules the drain of every
/// running queue in its iothread and returns: a device dropped after a grace period
/// (`device_del`) is dropped on the `call_rcu` thread, which must never wait for I/O.
pub struct QueueSet {
    /// Names the device in messages ("virtio-blk").
    name: &'static str,
    queues: Vec<Option<Running>>,
    /// Starts and stops, in order, in the queues' iothreads.
    ops: Arc<OpChain>,
}

impl QueueSet {
    /// `num_queues` stopped queues of the device `name` ("virtio-blk", for messages).
    pub fn new(name: &'static str, num_queues: u16) -> QueueSet {
        QueueSet {
            name,
            queues: (0..num_queues).map(|_| None).collect(),
            ops: Arc::default(),
        }
    }

    /// Starts serving queue `index` with `handler`, and waits until it serves (the
    /// start runs on the queue's iothread after any stop submitted before it).
    /// `event_idx`: the driver accepted `VIRTIO_RING_F_EVENT_IDX`.
    ///
    /// # Errors
    ///
    /// [`QueueError::NoSuchQueue`], [`QueueError::Invalid`], or [`QueueError::Io`] when
    /// the kick cannot be watched or the iothread has stopped.
    ///
    /// # Panics
    ///
    /// Called on the queue's iothread itself (it would wait for itself), or where
    /// blocking is forbidden (an RCU read section).
    pub fn start<H: QueueHandler>(
        &mut self,
        index: u16,
        setup: QueueSetup,
        event_idx: bool,
        handler: H,
    ) -> Result<(), QueueError> {
        rcu::assert_may_block(&format!(
            "{} start_queue (waits for its iothread)",
            self.name
        ));
        self.assert_not_on(&setup.iothread);
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit_start(index, setup, event_idx, handler, move |result| {
            let _ = tx.send(result);
        })?;
        // The iothread gone (the operation dropped unrun) reads as an I/O error.
        let result = rx
            .recv()
            .unwrap_or_else(|_| Err(std::io::Error::other("the iothread has stopped")));
        result.map_err(|source| QueueError::Io { index, source })
    }

    /// Starts serving queue `index` without waiting for the queue's context; a failure
    /// found there is reported through `setup.interrupt`'s
    /// [`device_error`](crate::VirtioInterrupt::device_error).
    ///
    /// # Errors
    ///
    /// What can be checked at once: [`QueueError::NoSuchQueue`], [`QueueError::Invalid`].
    pub fn start_async<H: QueueHandler>(
        &mut self,
        index: u16,
        setup: QueueSetup,
        event_idx: bool,
        handler: H,
    ) -> Result<(), QueueError> {
        let interrupt = setup.interrupt.clone();
        let name = self.name;
        self.submit_start(index, setup, event_idx, handler, move |result| {
            if let Err(e) = result {
                tracing::error!("{name}: cannot start queue {index}: {e}");
                interrupt.device_error();
            }
        })
    }

    /// Stops queue `index` after its in-flight requests completed, and returns the
    /// queue (its `next_avail`/`next_used` are the vhost-user vring base). `None` if
    /// not started.
    ///
    /// # Panics
    ///
    /// Called on the queue's iothread itself, or where blocking is forbidden.
    pub fn stop(&mut self, index: u16) -> Option<Queue> {
        rcu::assert_may_block(&format!("{} stop_queue (drains its I/O)", self.name));
        let running = self.queues.get_mut(usize::from(index))?.take()?;
        self.assert_not_on(&running.iothread);
        let (tx, rx) = mpsc::sync_channel(1);
        self.submit_stop(running, move |queue| {
            let _ = tx.send(queue);
        });
        rx.recv().ok().flatten()
    }

    /// A handle that pops queue `index`'s available chains on demand (see
    /// [`QueuePoller`]); `None` if the queue is not started.
    pub fn poller(&self, index: u16) -> Option<QueuePoller> {
        let running = self.queues.get(usize::from(index))?.as_ref()?;
        Some(QueuePoller { id: running.id })
    }

    /// Stops every queue without waiting: each drains in its own context, then `done`
    /// runs (on whichever thread finished last; `done` must not block).
    pub fn reset_async(&mut self, done: Box<dyn FnOnce() + Send>) {
        self.stop_all_async();
        // Runs after every stop submitted above has drained.
        self.ops.submit(None, done);
    }

    /// Panics on `iothread` itself: a call that waits for an operation there would wait
    /// for itself (as `IoThread::run` refuses to).
    fn assert_not_on(&self, iothread: &IoThread) {
        assert!(
            std::thread::current().name() != Some(iothread.name()),
            "{}: a waiting queue operation called on iothread {} itself",
            self.name,
            iothread.name()
        );
    }

    /// Checks `setup` and submits the start of queue `index` (after a stop of what ran
    /// there before); `report` gets the worker's start result, on the iothread.
    fn submit_start<H: QueueHandler>(
        &mut self,
        index: u16,
        setup: QueueSetup,
        event_idx: bool,
        handler: H,
        report: impl FnOnce(std::io::Result<()>) + Send + 'static,
    ) -> Result<(), QueueError> {
        let old = self
            .queues
            .get_mut(usize::from(index))
            .ok_or(QueueError::NoSuchQueue(index))?
            .take();
        if let Some(old) = old {
            self.submit_stop(old, drop);
        }
        let mut queue = setup.queue;
        queue.set_event_idx(event_idx);
        if !queue.is_valid(&*setup.memory.memory()) {
            return Err(QueueError::Invalid(index));
        }
        let id = NEXT_WORKER.fetch_add(1, Ordering::Relaxed);
        let args = StartArgs {
            name: self.name,
            id,
            index,
            queue,
            kick: setup.kick,
            memory: setup.memory,
            interrupt: setup.interrupt,
        };
        self.ops.submit(Some(setup.iothread.handle()), move || {
            report(runner::start(args, handler))
        });
        self.queues[usize::from(index)] = Some(Running {
            id,
            iothread: setup.iothread,
        });
        Ok(())
    }

    /// Submits the stop (drain) of `running` in its iothread; `report` gets its queue
    /// there. The iothread reference travels with the operation, so a last reference
    /// is dropped on the iothread itself, never joined by the submitter.
    fn submit_stop(&self, running: Running, report: impl FnOnce(Option<Queue>) + Send + 'static) {
        let handle = running.iothread.handle().clone();
        self.ops.submit(Some(&handle), move || {
            let queue = runner::stop(running.id);
            report(queue);
            drop(running);
        });
    }

    /// Submits the stop of every running queue, without waiting.
    fn stop_all_async(&mut self) {
        for slot in &mut self.queues {
            if let Some(running) = slot.take() {
                self.ops
                    .submit(Some(&running.iothread.handle().clone()), move || {
                        runner::stop(running.id);
                        drop(running);
                    });
            }
        }
    }
}

/// Pops a running queue's available chains on demand, from its own iothread: a device
/// that needs a buffer now (virtio-scsi posting an event, as QEMU's
/// `virtio_scsi_push_event` pops the event queue) need not wait for the driver's kick.
/// It names one start of the queue: after a stop or restart, it does nothing.
#[derive(Clone, Copy, Debug)]
pub struct QueuePoller {
    id: u64,
}

impl QueuePoller {
    /// Pops and starts every available chain now, as a kick would (the handler's
    /// `start` runs inside this call). Does nothing off the queue's iothread or once
    /// the queue stopped. Must not be called from inside that queue's own `parse`.
    pub fn pop_now(&self) {
        runner::process_now(self.id);
    }
}

impl Drop for QueueSet {
    fn drop(&mut self) {
        self.stop_all_async();
    }
}
