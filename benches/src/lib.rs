//! Peer benchmarks for the `rcu` crate.
//!
//! The benchmarks themselves live in `benches/`; this library holds the safe
//! wrappers around the C shims in `csrc/`, which use liburcu's memb, qsbr and mb
//! flavours with `_LGPL_SOURCE` so that their read side is inlined, as it is for
//! C users of liburcu. Run `benches/compare` for the comparison tables.

use std::arch::asm;
use std::cell::Cell;
use std::hint::black_box;
use std::marker::PhantomData;
use std::sync::atomic::AtomicBool;
use std::thread::LocalKey;
use std::time::{Duration, Instant};

mod ffi {
    unsafe extern "C" {
        pub(crate) fn memb_register_thread();
        pub(crate) fn memb_unregister_thread();
        pub(crate) fn memb_read_pairs(n: u64) -> u64;
        pub(crate) fn memb_busy_reader(stop: *const bool);
        pub(crate) fn memb_synchronize();
        pub(crate) fn memb_call_rcu_n(n: u64);
        pub(crate) fn memb_call_rcu_isolated_latency_ns() -> u64;

        pub(crate) fn qsbr_register_thread();
        pub(crate) fn qsbr_unregister_thread();
        pub(crate) fn qsbr_read_pairs(n: u64) -> u64;
        pub(crate) fn empty_pairs(n: u64) -> u64;

        pub(crate) fn mb_register_thread();
        pub(crate) fn mb_unregister_thread();
        pub(crate) fn mb_read_pairs(n: u64) -> u64;
    }
}

/// Runs `op` `iters` times in a plain loop, with a compiler barrier between each
/// call and the drop of its result, and returns the elapsed time.
///
/// This is the Rust counterpart of the shims' `lock(); cmm_barrier(); unlock();`
/// loops, for `iter_custom`: with `op` returning a read guard, one iteration is one
/// read-side critical section. Unlike `black_box(guard)`, the barrier does not force
/// the guard through memory, a store-to-load round trip that C's loop does not pay.
pub fn time_loop<R>(iters: u64, mut op: impl FnMut() -> R) -> Duration {
    let start = Instant::now();
    for _ in 0..iters {
        let value = op();
        compiler_barrier();
        drop(value);
    }
    start.elapsed()
}

/// Times `iters` iterations of the shims' loop with nothing but the compiler barrier
/// in it: the C floor of the read-pair loops (liburcu's qsbr read side compiles to
/// nothing, so `liburcu-qsbr` runs at it). [`time_loop`] with an empty `op` is the
/// Rust floor.
pub fn time_empty_c_loop(iters: u64) -> Duration {
    let start = Instant::now();
    // SAFETY: the shim only counts to `iters`; it touches no memory and needs no
    // registration.
    let done = unsafe { ffi::empty_pairs(iters) };
    let elapsed = start.elapsed();
    assert_eq!(done, iters);
    elapsed
}

/// liburcu's `cmm_barrier()`, C's `asm volatile("" ::: "memory")`: the compiler may
/// not move memory accesses across it, nor delete it, but it emits no instruction.
#[inline(always)]
pub fn compiler_barrier() {
    // SAFETY: the asm block is empty, so it executes nothing, touches no register,
    // stack or flag (as the options declare); leaving out `nomem` only makes the
    // compiler assume it may access any memory, which is the barrier.
    unsafe { asm!("", options(nostack, preserves_flags)) }
}

/// One thread's registration with one liburcu flavour, kept in a thread-local.
///
/// Registering twice corrupts liburcu's reader registry, and a thread that exits
/// registered leaves a dangling entry in it; so the thread-local refuses a second
/// registration, and its destructor unregisters a registration whose handle leaked.
struct Registration {
    flavour: &'static str,
    registered: Cell<bool>,
    register: unsafe extern "C" fn(),
    unregister: unsafe extern "C" fn(),
}

impl Registration {
    fn register(&self) {
        assert!(
            !self.registered.replace(true),
            "this thread is already registered with liburcu {}",
            self.flavour
        );
        // SAFETY: liburcu lets any thread register once, and the flag just checked
        // says this thread is not registered with this flavour yet.
        unsafe { (self.register)() }
    }

    fn unregister(&self) {
        if self.registered.replace(false) {
            // SAFETY: the flag says this thread is registered; a thread-local is only
            // touched by its own thread; and no read-side critical section is open,
            // since the shims close every one they open.
            unsafe { (self.unregister)() }
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.unregister();
    }
}

macro_rules! flavour_thread {
    ($(#[$doc:meta])* $name:ident, $flavour:literal, $register:ident, $unregister:ident, $read_pairs:ident) => {
        $(#[$doc])*
        ///
        /// Unregisters the thread on drop (or at thread exit, if leaked); `!Send`, as
        /// registration is per thread.
        #[derive(Debug)]
        pub struct $name {
            _not_send: PhantomData<*const ()>,
        }

        impl $name {
            /// The current thread's registration with this flavour.
            fn registration() -> &'static LocalKey<Registration> {
                thread_local! {
                    static REGISTRATION: Registration = const {
                        Registration {
                            flavour: $flavour,
                            registered: Cell::new(false),
                            register: ffi::$register,
                            unregister: ffi::$unregister,
                        }
                    };
                }
                &REGISTRATION
            }

            /// Registers the current thread.
            ///
            /// # Panics
            ///
            /// If the current thread is already registered with this flavour.
            pub fn register() -> Self {
                Self::registration().with(Registration::register);
                Self { _not_send: PhantomData }
            }

            /// Panics unless the current thread is still registered, which it is while
            /// `self` lives, except in thread-local destructors run after the
            /// registration's own.
            fn assert_registered(&self) {
                let registered = Self::registration().try_with(|r| r.registered.get());
                assert!(registered == Ok(true), "liburcu {} registration already gone", $flavour);
            }

            /// Runs `n` empty read-side critical sections in a C loop, with
            /// liburcu's read side inlined, and returns the elapsed time.
            pub fn time_read_pairs(&self, n: u64) -> Duration {
                self.assert_registered();
                let start = Instant::now();
                // SAFETY: the thread is registered with the flavour (just asserted),
                // which is all liburcu's read side requires; each section is opened
                // and closed inside the shim, so none is left open.
                black_box(unsafe { ffi::$read_pairs(n) });
                start.elapsed()
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                // Fails only once the thread-local is gone, which unregistered already.
                _ = Self::registration().try_with(Registration::unregister);
            }
        }
    };
}

flavour_thread!(
    /// The current thread's registration with liburcu's memb flavour (the
    /// membarrier-based default flavour, `urcu_memb_*`).
    MembThread,
    "memb",
    memb_register_thread,
    memb_unregister_thread,
    memb_read_pairs
);

flavour_thread!(
    /// The current thread's registration with liburcu's QSBR flavour (`urcu_qsbr_*`).
    ///
    /// The thread stays online while registered; nothing here waits for a QSBR grace
    /// period, so it never needs to announce a quiescent state.
    QsbrThread,
    "qsbr",
    qsbr_register_thread,
    qsbr_unregister_thread,
    qsbr_read_pairs
);

flavour_thread!(
    /// The current thread's registration with liburcu's mb flavour (`urcu_mb_*`),
    /// full fences on the read side; QEMU's RCU is modelled on it.
    MbThread,
    "mb",
    mb_register_thread,
    mb_unregister_thread,
    mb_read_pairs
);

impl MembThread {
    /// Runs empty memb read-side critical sections until `stop` is set.
    pub fn busy_read_until(&self, stop: &AtomicBool) {
        self.assert_registered();
        // SAFETY: this thread is registered with memb (just asserted). `AtomicBool` has
        // the layout of `bool` (C `_Bool`), the shim only reads it with atomic loads,
        // and `stop` outlives the call, which returns only once the shim does.
        unsafe { ffi::memb_busy_reader(stop.as_ptr()) }
    }

    /// Waits for a memb grace period (`urcu_memb_synchronize_rcu`).
    pub fn synchronize(&self) {
        // SAFETY: synchronize_rcu must not be called inside a read-side critical
        // section, and none is open: the shims close every section they open.
        unsafe { ffi::memb_synchronize() }
    }

    /// Queues `n` `call_rcu`s of malloc'ed nodes, each freed by its callback, then
    /// waits for all of them with `rcu_barrier`.
    pub fn call_rcu_n(&self, n: u64) {
        self.assert_registered();
        // SAFETY: call_rcu and rcu_barrier need a registered thread (just asserted)
        // outside any read-side critical section (the shims leave none open); this is
        // not a call_rcu worker thread, where rcu_barrier would deadlock.
        unsafe { ffi::memb_call_rcu_n(n) }
    }

    /// Time from one `call_rcu` until its callback has run, with nothing else queued.
    pub fn call_rcu_isolated_latency(&self) -> Duration {
        self.assert_registered();
        // SAFETY: call_rcu needs a registered thread (just asserted); the shim's
        // callback head lives on its stack until the callback has run.
        Duration::from_nanos(unsafe { ffi::memb_call_rcu_isolated_latency_ns() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memb_operations_run() {
        let memb = MembThread::register();
        memb.time_read_pairs(1000);
        memb.synchronize();
        memb.call_rcu_n(100);
        assert!(memb.call_rcu_isolated_latency() > Duration::ZERO);
        drop(memb);
        drop(MembThread::register());
    }

    #[test]
    #[should_panic(expected = "already registered")]
    fn double_registration_panics() {
        let _first = QsbrThread::register();
        let _second = QsbrThread::register();
    }

    #[test]
    fn leaked_registration_is_undone_at_thread_exit() {
        std::thread::spawn(|| std::mem::forget(MbThread::register()))
            .join()
            .unwrap();
        std::thread::spawn(|| std::mem::forget(MembThread::register()))
            .join()
            .unwrap();
        // With the exited thread still in liburcu's registry, this would read its
        // freed reader state.
        MembThread::register().synchronize();
    }
}
