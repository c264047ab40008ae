//! The loom shim: std's primitives normally, loom's under `cfg(loom)`.
//!
//! Only the grace-period protocol (`domain` and `barrier`) is compiled under loom; the
//! global reader registry, `call_rcu` and the data structures are not.

#[cfg(loom)]
pub(crate) use loom::sync::{
    Condvar, Mutex,
    atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering, fence},
};
#[cfg(not(loom))]
pub(crate) use std::sync::{
    Condvar, Mutex,
    atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, AtomicUsize, Ordering, fence},
};

/// A compiler-only barrier: no instruction, but the compiler may not move memory
/// accesses across it. Under loom (which cannot express it) a full fence stands in.
#[inline(always)]
pub(crate) fn compiler_barrier() {
    #[cfg(loom)]
    fence(Ordering::SeqCst);
    #[cfg(not(loom))]
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
}

/// One step of a busy-wait loop. Loom must be told to schedule another thread.
#[inline(always)]
pub(crate) fn spin_hint() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::hint::spin_loop();
}

/// Gives the CPU away: lets a preempted reader finish its section on an overloaded
/// machine. Loom must be told to schedule another thread.
pub(crate) fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    std::thread::yield_now();
}
