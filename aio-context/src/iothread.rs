//! `IoThread`: a named thread running its own `AioContext` (QEMU's `-object iothread`).

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};

use crate::context::{AioContext, AioHandle, PollParams};

/// A thread that runs an [`AioContext`] until stopped. Busy polling starts at QEMU's
/// iothread default ([`PollParams::IOTHREAD`]).
pub struct IoThread {
    name: String,
    /// The iothread's `std` thread id, to refuse `run`/`stop` from the thread itself.
    std_id: std::thread::ThreadId,
    handle: AioHandle,
    stop: Arc<AtomicBool>,
    thread_id: i32,
    thread: Option<JoinHandle<()>>,
    /// The busy-polling parameters last given to the loop (read without asking it).
    poll: Mutex<PollParams>,
}

impl IoThread {
    /// Starts a thread named `name` and its context.
    ///
    /// # Errors
    ///
    /// If the thread or its context cannot be created.
    pub fn spawn(name: &str) -> io::Result<IoThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = mpsc::channel();
        let stopping = stop.clone();
        let thread = thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let ctx = match AioContext::new() {
                    Ok(ctx) => ctx,
                    Err(e) => {
                        let _ = tx.send(Err(io::Error::other(e)));
                        return;
                    }
                };
                ctx.set_poll_params(PollParams::IOTHREAD);
                let tid = nix::unistd::gettid().as_raw();
                let _ = tx.send(Ok((ctx.handle(), tid)));
                while !stopping.load(Ordering::Acquire) {
                    ctx.poll(true);
                }
                // Finish what was already scheduled (e.g. the BH that stopped us).
                while ctx.poll(false) {}
            })?;
        match rx.recv() {
            Ok(Ok((handle, thread_id))) => Ok(IoThread {
                name: name.to_owned(),
                std_id: thread.thread().id(),
                handle,
                stop,
                thread_id,
                thread: Some(thread),
                poll: Mutex::new(PollParams::IOTHREAD),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err(io::Error::other("the iothread exited during start-up")),
        }
    }

    /// The thread's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The kernel thread id (for QMP `query-iothreads`).
    pub fn thread_id(&self) -> i32 {
        self.thread_id
    }

    /// Sets the loop's busy-polling parameters (QEMU's `poll-max-ns`, `poll-grow`,
    /// `poll-shrink`): recorded at once, applied by the loop at its next iteration.
    pub fn set_poll_params(&self, params: PollParams) {
        *self.poll.lock().unwrap_or_else(|e| e.into_inner()) = params;
        self.handle.schedule_oneshot(move || {
            if let Some(ctx) = AioContext::current() {
                ctx.set_poll_params(params);
            }
        });
    }

    /// The busy-polling parameters the loop runs with (for QMP `query-iothreads`),
    /// without a round trip to the thread.
    pub fn poll_params(&self) -> PollParams {
        *self.poll.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A handle to the thread's context.
    pub fn handle(&self) -> &AioHandle {
        &self.handle
    }

    /// Runs `f` on the iothread, in its context, and returns its result.
    ///
    /// # Panics
    ///
    /// If `f` panics (the iothread keeps running), if the iothread has stopped, or if
    /// called on the iothread itself (it would wait for itself).
    pub fn run<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> R {
        assert_ne!(
            std::thread::current().id(),
            self.std_id,
            "IoThread::run called on iothread {} itself: it would wait for itself",
            self.name
        );
        rcu::assert_may_block("IoThread::run (waits for the iothread)");
        let (tx, rx) = mpsc::sync_channel(1);
        self.handle.schedule_oneshot(move || {
            let _ = tx.send(f());
        });
        rx.recv()
            .expect("the closure panicked or the iothread has stopped")
    }

    /// Stops the loop and joins the thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        if std::thread::current().id() == self.std_id {
            // Stopped from inside its own loop: set the flag (the loop ends after this
            // iteration) and detach, since a thread cannot join itself.
            self.stop.store(true, Ordering::Release);
            drop(thread);
            return;
        }
        let stop = self.stop.clone();
        // Set from inside the loop, so the flag is seen by the iteration it ends.
        self.handle
            .schedule_oneshot(move || stop.store(true, Ordering::Release));
        if thread.join().is_err() {
            tracing::error!("aio-context: iothread {} panicked", self.name);
        }
    }
}

impl Drop for IoThread {
    fn drop(&mut self) {
        self.shutdown();
    }
}

impl std::fmt::Debug for IoThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoThread")
            .field("name", &self.name)
            .field("thread_id", &self.thread_id)
            .finish()
    }
}
