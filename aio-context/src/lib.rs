//! QEMU's `AioContext` for Rust: a per-thread event loop that owns its bottom halves, fd
//! handlers, timers, io_uring completions and futures.
//!
//! - [`AioContext::poll`] is `aio_poll`: busy polling (adaptive, per handler, off by
//!   default on a plain context), then waiting for fds and timers if `blocking`, then
//!   BHs, fd handlers, io_uring completions and timers; it returns whether any made
//!   progress (a bare wake-up does not).
//! - BHs come from the `bottom-half` crate; other threads schedule them through an
//!   [`AioHandle`], and the context sleeps on an eventfd only when it may (the
//!   `notify_me` protocol, [`wakeup`]).
//! - fds are watched with io_uring `POLL_ADD`, or epoll where io_uring is missing, chosen
//!   at run time; io_uring operations ([`AioContext::submit`]) complete as callbacks in
//!   the submitting context, and the ring is never closed with operations in flight.
//! - The owning thread is a QSBR reader of the `rcu` crate ([`AioContext::rcu_read`]).
//! - [`IoThread`] runs a context on a named thread (built from QEMU's `-object
//!   iothread` properties by [`IoThread::spawn_with_properties`]); [`AioContext::spawn`]
//!   runs futures whose wakers schedule them back into their context from any thread.
//! - [`signals`]: SIGTERM, SIGINT and SIGHUP on a `signalfd`, for a loop to watch.
//!
//! ```
//! use aio_context::AioContext;
//! use std::sync::atomic::{AtomicBool, Ordering};
//! use std::sync::Arc;
//!
//! let ctx = AioContext::new()?;
//! let ran = Arc::new(AtomicBool::new(false));
//! let flag = ran.clone();
//! let handle = ctx.handle();
//! std::thread::spawn(move || handle.schedule_oneshot(move || flag.store(true, Ordering::Relaxed)))
//!     .join()
//!     .unwrap();
//! while !ran.load(Ordering::Relaxed) {
//!     ctx.poll(true); // sleeps until the other thread's BH arrives
//! }
//! assert_eq!(ctx.block_on(async { 6 * 7 }), 42);
//! # Ok::<(), aio_context::Error>(())
//! ```
#![deny(missing_docs)]

#[cfg(not(loom))]
mod context;
#[cfg(not(loom))]
mod event_notifier;
#[cfg(not(loom))]
mod fdmon;
#[cfg(all(test, not(loom)))]
mod fixed_buffer_tests;
#[cfg(not(loom))]
mod fixed_file;
#[cfg(all(test, not(loom)))]
mod fixed_file_tests;
#[cfg(not(loom))]
mod handlers;
#[cfg(not(loom))]
mod iothread;
#[cfg(not(loom))]
mod iothread_object;
#[cfg(all(test, not(loom)))]
mod op_options_tests;
#[cfg(all(test, not(loom)))]
mod refill_tests;
#[cfg(not(loom))]
pub mod signals;
#[cfg(all(test, not(loom)))]
mod sqpoll_tests;
#[cfg(not(loom))]
mod task;
#[cfg(not(loom))]
mod timer;
pub mod wakeup;

#[cfg(not(loom))]
pub use bottom_half::{Bh, BhScheduler};
#[cfg(not(loom))]
pub use context::{
    AioContext, AioHandle, FdHandler, OpId, OpOptions, PollParams, thread_has_io_worker,
    thread_has_submission_thread,
};
#[cfg(not(loom))]
pub use event_notifier::EventNotifier;
#[cfg(not(loom))]
pub use fdmon::Backend;
#[cfg(not(loom))]
pub use fixed_file::FixedFile;
#[cfg(not(loom))]
pub use iothread::IoThread;
#[cfg(not(loom))]
pub use iothread_object::IothreadObjectError;
#[cfg(not(loom))]
pub use task::JoinHandle;
#[cfg(not(loom))]
pub use timer::Timer;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The thread already has an `AioContext` (one per thread: its QSBR registration
    /// and the current-context thread-local are per thread).
    #[error("this thread already has an AioContext")]
    ContextExists,
    /// A system call failed while creating the context.
    #[error("cannot create the AioContext: {0}")]
    Io(#[from] std::io::Error),
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
