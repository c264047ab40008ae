//! Deferred reclamation: callbacks that run after a grace period, on one background
//! thread, in batches.
//!
//! Producers push onto a lock-free stack (one CAS). The worker takes the whole stack
//! with one swap, restores arrival order, waits for one grace period for the whole
//! batch and runs it. Batches grow by themselves under load (everything queued while a
//! grace period runs shares the next one) and an isolated callback waits for no timer:
//! the producer that makes the stack non-empty unparks the worker.

use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicPtr, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{self, Thread};

use crate::reader::{DOMAIN, assert_not_reader};

/// A queued callback: the link and a type-erased way to run (and free) the whole node.
/// `#[repr(C)]` so a `*mut Callback<F>` is also a `*mut Header`.
#[repr(C)]
struct Header {
    next: *mut Header,
    run: unsafe fn(*mut Header),
}

#[repr(C)]
struct Callback<F> {
    header: Header,
    f: ManuallyDrop<F>,
}

/// Runs and frees a `Callback<F>`.
///
/// # Safety
///
/// `header` must come from `Box::<Callback<F>>::into_raw` in [`call_rcu`], with this `F`,
/// and is consumed.
unsafe fn run_callback<F: FnOnce()>(header: *mut Header) {
    // SAFETY: per the contract, `header` is the first field of a boxed `Callback<F>`
    // (repr(C)), and ownership passes to us.
    let mut node = unsafe { Box::from_raw(header.cast::<Callback<F>>()) };
    // SAFETY: `f` is taken exactly once, here; the box is freed without dropping it again.
    let f = unsafe { ManuallyDrop::take(&mut node.f) };
    drop(node);
    f();
}

/// The stack of callbacks waiting for the worker, newest first.
static QUEUE: AtomicPtr<Header> = AtomicPtr::new(std::ptr::null_mut());

/// The worker thread, started by the first `call_rcu`.
static WORKER: OnceLock<Thread> = OnceLock::new();

/// Queues `f` to run after a grace period: after every read section that is running now
/// has ended. Callbacks run on one background thread ("rcu-call"), in the order they
/// were queued; one that panics is reported by the panic hook and the others still run.
/// A callback must not block (wait for I/O or another thread): it would stall every
/// later callback; debug builds check waits that call [`crate::assert_may_block`].
///
/// Wait-free apart from one CAS loop and one allocation; wakes the worker only when the
/// queue was empty.
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
///
/// let done = Arc::new(AtomicBool::new(false));
/// let flag = done.clone();
/// rcu::call_rcu(move || flag.store(true, Ordering::Release));
/// rcu::barrier();
/// assert!(done.load(Ordering::Acquire));
/// ```
pub fn call_rcu<F: FnOnce() + Send + 'static>(f: F) {
    let node = Box::into_raw(Box::new(Callback {
        header: Header {
            next: std::ptr::null_mut(),
            run: run_callback::<F>,
        },
        f: ManuallyDrop::new(f),
    }))
    .cast::<Header>();
    let mut head = QUEUE.load(Ordering::Relaxed);
    loop {
        // SAFETY: `node` is ours until the CAS below publishes it.
        unsafe { (*node).next = head };
        // Release publishes the node's contents to the worker's Acquire swap.
        match QUEUE.compare_exchange_weak(head, node, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => break,
            Err(now) => head = now,
        }
    }
    if head.is_null() {
        // The worker parks only after finding the queue empty; we made it non-empty, so
        // we wake it. An unpark before its park makes that park return at once.
        worker().unpark();
    }
}

/// Drops `value` after a grace period, on the `call_rcu` thread.
///
/// ```
/// let old = Box::new([0u8; 64]);
/// rcu::defer_drop(old); // readers that still see it keep it alive until they finish
/// ```
pub fn defer_drop<T: Send + 'static>(value: T) {
    call_rcu(move || drop(value));
}

/// Returns once every callback queued (by any thread) before the call has run:
/// QEMU's `drain_call_rcu`, liburcu's `rcu_barrier`.
///
/// # Panics
///
/// If called from a callback, inside a read section or on an online QSBR thread (use
/// [`QsbrThread::barrier`](crate::QsbrThread::barrier)): each would wait for itself.
pub fn barrier() {
    assert!(
        WORKER
            .get()
            .is_none_or(|w| w.id() != thread::current().id()),
        "rcu::barrier() called from a call_rcu callback: it would wait for itself"
    );
    assert_not_reader("barrier");
    let done = Arc::new((Mutex::new(false), Condvar::new()));
    let signal = done.clone();
    // FIFO: this callback runs after every callback queued before it.
    call_rcu(move || {
        let (lock, cv) = &*signal;
        *lock.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
    });
    let (lock, cv) = &*done;
    let mut ran = lock.lock().unwrap_or_else(|e| e.into_inner());
    while !*ran {
        ran = cv.wait(ran).unwrap_or_else(|e| e.into_inner());
    }
}

fn worker() -> &'static Thread {
    WORKER.get_or_init(|| {
        thread::Builder::new()
            .name("rcu-call".into())
            .spawn(work)
            .expect("cannot spawn the rcu-call thread")
            .thread()
            .clone()
    })
}

fn work() {
    loop {
        // Acquire pairs with the producers' Release CAS: the nodes are initialised.
        let mut stack = QUEUE.swap(std::ptr::null_mut(), Ordering::Acquire);
        if stack.is_null() {
            thread::park();
            continue;
        }
        // Reverse into arrival order.
        let mut batch: *mut Header = std::ptr::null_mut();
        while !stack.is_null() {
            // SAFETY: the swap gave this thread sole ownership of every node on `stack`.
            let next = unsafe { (*stack).next };
            // SAFETY: as above.
            unsafe { (*stack).next = batch };
            batch = stack;
            stack = next;
        }
        // One grace period covers the whole batch: each callback was queued before it.
        DOMAIN.synchronize();
        while !batch.is_null() {
            // SAFETY: we own the node; read its link before `run` frees it.
            let (next, run) = unsafe { ((*batch).next, (*batch).run) };
            let node = batch;
            // A panicking callback must not take the worker (and every later callback)
            // down with it; the panic hook has already reported it.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _scope = crate::may_block::CallbackScope::enter();
                // SAFETY: `run` is the `run_callback::<F>` stored with this node's `F`,
                // and the node is consumed exactly once.
                unsafe { run(node) }
            }));
            batch = next;
        }
    }
}
