//! Asymmetric memory barriers: the reader's cheap one and the updater's heavy one.
//!
//! The "memb" algorithm (liburcu's urcu-memb) keeps full fences off the read side. A
//! reader separates its counter store from its critical-section loads with a *compiler*
//! barrier only; the updater, before it reads reader counters and after it has seen them
//! quiescent, calls `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`, which makes every
//! running thread of the process execute a full memory barrier before the call returns.
//! So each reader-side compiler barrier is promoted to a full fence exactly when an
//! updater needs it, and the pairing `reader: store ctr; barrier; load data` against
//! `updater: store data; membarrier; load ctr` cannot see both old values.
//!
//! Where the kernel lacks the command (or `RCU_BARRIER=fences` asks for it, or under
//! miri/loom, which cannot run the syscall), both sides use full fences instead: that is
//! liburcu's "mb" flavour, which is also QEMU's default.

use crate::sync::{Ordering, fence};

/// How readers and updaters order their accesses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Readers: compiler barrier. Updaters: `membarrier(PRIVATE_EXPEDITED)`.
    Membarrier,
    /// Readers and updaters: `fence(SeqCst)`.
    Fences,
}

impl Mode {
    /// Probes the kernel once and registers the process for private expedited
    /// membarrier. Falls back to [`Mode::Fences`] when the command is missing, when the
    /// environment variable `RCU_BARRIER=fences` asks for it, and under miri or loom.
    pub(crate) fn detect() -> Mode {
        if cfg!(any(miri, loom)) || std::env::var_os("RCU_BARRIER").is_some_and(|v| v == "fences") {
            return Mode::Fences;
        }
        if membarrier::register() {
            Mode::Membarrier
        } else {
            Mode::Fences
        }
    }

    /// The reader-side barrier: a fence where the caller always wants one (`read_mb`,
    /// a constant after inlining) or the process runs in [`Mode::Fences`] (`fence_mode`,
    /// the phase word's `FENCE` bit), else a compiler barrier.
    #[inline(always)]
    pub(crate) fn light(always_fence: bool, fence_mode: bool) {
        if always_fence {
            fence(Ordering::SeqCst);
        } else if fence_mode {
            Self::light_fence();
        } else {
            crate::sync::compiler_barrier();
        }
    }

    /// The fence of [`Mode::Fences`], out of line: readers take it only where the
    /// kernel lacks `membarrier(2)`, and keeping it off the straight-line path saves
    /// the memb read side two taken jumps per section (1.6x liburcu-memb's time per
    /// section before, 0.85x after: `read_pair` bench, DESIGN.md "Code layout").
    #[cold]
    #[inline(never)]
    fn light_fence() {
        fence(Ordering::SeqCst);
    }

    /// The updater-side barrier: upon return, every thread of the process has executed a
    /// full memory barrier after this call began (pairs with every [`Mode::light`]).
    pub(crate) fn heavy(self) {
        // The fence orders this thread's own accesses for the language memory model; the
        // syscall extends it to the readers' CPUs.
        fence(Ordering::SeqCst);
        if self == Mode::Membarrier {
            membarrier::private_expedited();
        }
    }
}

#[cfg(not(any(miri, loom)))]
mod membarrier {
    // From <linux/membarrier.h>; libc does not export them for every target.
    const CMD_QUERY: libc::c_long = 0;
    const CMD_PRIVATE_EXPEDITED: libc::c_long = 1 << 3;
    const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_long = 1 << 4;

    fn call(cmd: libc::c_long) -> libc::c_long {
        // SAFETY: membarrier(2) takes two integer arguments (cmd, flags) and, for these
        // commands, a third ignored one; it touches no memory of ours.
        unsafe {
            libc::syscall(
                libc::SYS_membarrier,
                cmd,
                0 as libc::c_long,
                0 as libc::c_long,
            )
        }
    }

    /// Registers the process for `MEMBARRIER_CMD_PRIVATE_EXPEDITED`; false if unsupported.
    pub(super) fn register() -> bool {
        let supported = call(CMD_QUERY);
        supported >= 0
            && supported & CMD_PRIVATE_EXPEDITED != 0
            && call(CMD_REGISTER_PRIVATE_EXPEDITED) == 0
    }

    /// Issues the barrier on every running thread of this process.
    pub(super) fn private_expedited() {
        let ret = call(CMD_PRIVATE_EXPEDITED);
        // Registration succeeded before any reader used the light barrier, and the
        // command cannot fail afterwards; continuing would silently lose the ordering.
        assert_eq!(
            ret,
            0,
            "membarrier(PRIVATE_EXPEDITED) failed after registration: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(any(miri, loom))]
mod membarrier {
    pub(super) fn register() -> bool {
        false
    }
    pub(super) fn private_expedited() {
        unreachable!("membarrier is never selected under miri or loom")
    }
}
