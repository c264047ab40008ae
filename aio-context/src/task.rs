//! Futures on an `AioContext`: each task is woken through its own BH, so a wake from any
//! thread runs the task on the context's thread, and a double wake coalesces (QEMU's
//! `aio_co_schedule` contract).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use bottom_half::Bh;
use slab::Slab;

use crate::context::{AioContext, AioHandle};

type LocalFuture = Pin<Box<dyn Future<Output = ()>>>;

struct TaskSlot {
    /// `None` while the task is being polled.
    future: Option<LocalFuture>,
    bh: Bh,
    waker: Waker,
}

/// The tasks of one context.
#[derive(Default)]
pub(crate) struct Tasks {
    slab: RefCell<Slab<TaskSlot>>,
}

impl Tasks {
    /// Drops every task (the context is going away).
    pub(crate) fn clear(&self) {
        let tasks = std::mem::take(&mut *self.slab.borrow_mut());
        for (_, task) in tasks {
            task.bh.delete();
            drop(task);
        }
    }
}

/// A task's waker: scheduling its BH is wait-free, runs on the owner's thread, and
/// coalesces.
struct TaskWaker {
    bh: Bh,
}

impl Wake for TaskWaker {
    fn wake(self: Arc<Self>) {
        self.bh.schedule();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.bh.schedule();
    }
}

struct JoinState<T> {
    result: Option<T>,
    waker: Option<Waker>,
}

/// The result of a task spawned with [`AioContext::spawn`]: a future (on the same
/// context) that resolves to the task's output. Dropping it detaches the task.
pub struct JoinHandle<T> {
    state: Rc<RefCell<JoinState<T>>>,
}

impl<T> JoinHandle<T> {
    /// Whether the task has finished.
    pub fn is_finished(&self) -> bool {
        self.state.borrow().result.is_some()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let mut state = self.state.borrow_mut();
        match state.result.take() {
            Some(r) => Poll::Ready(r),
            None => {
                state.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl<T> std::fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

impl AioContext {
    /// Spawns a future on this context; it first runs in the next poll. Its waker may be
    /// used from any thread: the task always runs here.
    pub fn spawn<F: Future + 'static>(&self, future: F) -> JoinHandle<F::Output> {
        let state = Rc::new(RefCell::new(JoinState {
            result: None,
            waker: None,
        }));
        let done = state.clone();
        let task = async move {
            let result = future.await;
            let waker = {
                let mut s = done.borrow_mut();
                s.result = Some(result);
                s.waker.take()
            };
            if let Some(w) = waker {
                w.wake();
            }
        };
        let mut slab = self.inner.tasks.slab.borrow_mut();
        let key = slab.vacant_key();
        let bh = self.new_bh(move || {
            if let Some(ctx) = AioContext::current() {
                ctx.run_task(key);
            }
        });
        let waker = Waker::from(Arc::new(TaskWaker { bh: bh.clone() }));
        slab.insert(TaskSlot {
            future: Some(Box::pin(task)),
            bh: bh.clone(),
            waker,
        });
        drop(slab);
        bh.schedule();
        JoinHandle { state }
    }

    fn run_task(&self, key: usize) {
        let taken = {
            let mut slab = self.inner.tasks.slab.borrow_mut();
            slab.get_mut(key)
                .and_then(|t| Some((t.future.take()?, t.waker.clone())))
        };
        let Some((mut future, waker)) = taken else {
            return;
        };
        let done = future
            .as_mut()
            .poll(&mut Context::from_waker(&waker))
            .is_ready();
        let mut slab = self.inner.tasks.slab.borrow_mut();
        if done {
            let task = slab.remove(key);
            drop(slab);
            task.bh.delete();
            drop(future);
        } else if let Some(t) = slab.get_mut(key) {
            t.future = Some(future);
        }
    }

    /// Runs the loop until `future` completes, and returns its output. The future runs
    /// on this thread (it need not be `Send` or `'static`).
    pub fn block_on<F: Future>(&self, future: F) -> F::Output {
        struct Woken {
            woken: AtomicBool,
            handle: AioHandle,
        }
        impl Wake for Woken {
            fn wake(self: Arc<Self>) {
                self.wake_by_ref();
            }
            fn wake_by_ref(self: &Arc<Self>) {
                self.woken.store(true, Ordering::Release);
                self.handle.notify();
            }
        }
        let woken = Arc::new(Woken {
            woken: AtomicBool::new(true),
            handle: self.handle(),
        });
        let waker = Waker::from(woken.clone());
        let mut future = std::pin::pin!(future);
        loop {
            if woken.woken.swap(false, Ordering::AcqRel) {
                if let Poll::Ready(r) = future.as_mut().poll(&mut Context::from_waker(&waker)) {
                    return r;
                }
            }
            self.poll(true);
        }
    }
}

impl AioHandle {
    /// Spawns a `Send` future on the handle's context, from any thread; it runs there.
    pub fn spawn<F: Future<Output = ()> + Send + 'static>(&self, future: F) {
        self.schedule_oneshot(move || {
            if let Some(ctx) = AioContext::current() {
                drop(ctx.spawn(future));
            }
        });
    }
}
