//! The QSBR flavour: read sections that cost nothing, for threads that can say when they
//! hold no references (an event loop between two iterations).

use std::cell::Cell;
use std::marker::PhantomData;

use crate::reader::{DOMAIN, current_record};
use crate::{Error, Result};

thread_local! {
    /// Whether this thread has a live [`QsbrThread`].
    static REGISTERED: Cell<bool> = const { Cell::new(false) };
}

/// This thread as a QSBR reader: while the handle is online (always, except inside
/// [`QsbrThread::offline`]), grace periods wait for it to call
/// [`QsbrThread::quiescent_state`].
///
/// The borrow checker enforces the QSBR contract: [`QsbrThread::read`] borrows the handle
/// shared, and reporting a quiescent state or going offline borrows it mutably, so no
/// [`QsbrGuard`], nor any reference obtained under one, survives either.
///
/// ```
/// use rcu::{QsbrThread, RcuCell};
///
/// let cell = RcuCell::new(1);
/// let mut thread = QsbrThread::register().unwrap();
/// for round in 2..5 {
///     {
///         let guard = thread.read();
///         let value = cell.load(&guard).unwrap();
///         cell.replace(*value + 1); // the old value is freed after a grace period
///     }
///     thread.quiescent_state(); // lets that grace period end
///     assert_eq!(cell.load(&thread.read()), Some(&round));
/// }
/// // Blocking calls go inside `offline`, so grace periods need not wait for them.
/// thread.offline(|| std::thread::sleep(std::time::Duration::from_millis(1)));
/// ```
pub struct QsbrThread {
    _not_send: PhantomData<*const ()>,
}

/// A QSBR read section. It costs nothing: it only borrows the [`QsbrThread`], so that
/// the thread cannot report a quiescent state while the guard (or anything obtained
/// under it) lives.
#[derive(Debug)]
#[must_use = "a read guard does nothing unless data is loaded under it"]
pub struct QsbrGuard<'t> {
    _thread: PhantomData<&'t QsbrThread>,
}

impl QsbrThread {
    /// Registers the calling thread as a QSBR reader, online.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyRegistered`] if this thread already has a `QsbrThread`.
    pub fn register() -> Result<QsbrThread> {
        if REGISTERED.with(|r| r.replace(true)) {
            return Err(Error::AlreadyRegistered);
        }
        DOMAIN.online(current_record());
        Ok(QsbrThread {
            _not_send: PhantomData,
        })
    }

    /// Enters a read section; free of any cost.
    #[inline(always)]
    pub fn read(&self) -> QsbrGuard<'_> {
        QsbrGuard {
            _thread: PhantomData,
        }
    }

    /// Reports a quiescent state: this thread holds no reference obtained in an earlier
    /// read section. One load and compare unless a grace period is waiting for it.
    #[inline]
    pub fn quiescent_state(&mut self) {
        // Looked up each time: at thread exit the record may move (reader.rs).
        DOMAIN.quiescent_state(current_record());
    }

    /// Runs `f` in an extended quiescent state (offline), then comes back online, also if
    /// `f` unwinds. Grace periods do not wait for an offline thread, so blocking calls
    /// (`epoll_wait`, `io_uring_enter`, a condition variable) belong here.
    pub fn offline<R>(&mut self, f: impl FnOnce() -> R) -> R {
        struct Online;
        impl Drop for Online {
            fn drop(&mut self) {
                DOMAIN.online(current_record());
            }
        }
        DOMAIN.offline(current_record());
        let _online = Online;
        f()
    }

    /// Waits for a grace period, offline meanwhile (a plain [`crate::synchronize`] would
    /// wait for this very thread).
    pub fn synchronize(&mut self) {
        self.offline(crate::synchronize);
    }

    /// Waits for every queued `call_rcu` callback to run, offline meanwhile.
    pub fn barrier(&mut self) {
        self.offline(crate::barrier);
    }
}

impl Drop for QsbrThread {
    fn drop(&mut self) {
        DOMAIN.offline(current_record());
        REGISTERED.with(|r| r.set(false));
    }
}

impl std::fmt::Debug for QsbrThread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QsbrThread").finish_non_exhaustive()
    }
}
