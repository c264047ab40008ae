//! QEMU's VM run state machine with ordered, reentrancy-safe change handlers.
//!
//! [`RunState`] carries QEMU's states and transition table: an invalid transition is an
//! [`Error`], never a silent change. [`RunStateMachine`] starts and stops the VM and
//! notifies change handlers in priority order (ascending on start, descending on stop).
//!
//! The invariant (design.md, invariant 5; seed 2075200b "Fix VM state change handlers
//! running out of order"): every handler sees every transition, in order. A handler
//! that changes the run state while handlers are being notified (a DMA restart that
//! hits a write error with `werror=stop`) does not re-enter notification: the change is
//! deferred through a bottom half and delivered after the current round.
//!
//! ```
//! use bottom_half::BhList;
//! use runstate::{Outcome, RunState, RunStateMachine};
//! use std::sync::{Arc, Mutex};
//!
//! let main_loop = BhList::new(|| {});
//! let vm = RunStateMachine::new(&main_loop.scheduler());
//! let seen = Arc::new(Mutex::new(Vec::new()));
//! let log = seen.clone();
//! let me = vm.clone();
//! vm.add_handler(0, move |running, _| {
//!     log.lock().unwrap().push(running);
//!     if running {
//!         // A restart that fails again and stops the VM, from inside the round.
//!         assert_eq!(me.stop(RunState::IoError).unwrap(), Outcome::Deferred);
//!     }
//! });
//! assert_eq!(vm.start()?, Outcome::Done);
//! main_loop.poll(); // the deferred stop runs after the round
//! assert_eq!(vm.state(), RunState::IoError);
//! assert_eq!(*seen.lock().unwrap(), [true, false]);
//! # Ok::<(), runstate::Error>(())
//! ```
#![deny(missing_docs)]

mod machine;
mod state;

pub use machine::{Handler, HandlerId, Outcome, RunStateMachine};
pub use state::RunState;

/// A monitor event (QMP) caused by a run state change.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The VM stopped (QMP `STOP`).
    Stop,
    /// The VM resumed (QMP `RESUME`).
    Resume,
    /// The guest or the user shut the VM down (QMP `SHUTDOWN`).
    Shutdown {
        /// Whether the guest asked for it.
        guest: bool,
        /// QMP's `reason` string (e.g. "host-qmp-quit", "guest-shutdown").
        reason: String,
    },
    /// The VM was reset (QMP `RESET`).
    Reset {
        /// Whether the guest asked for it.
        guest: bool,
    },
    /// Another component's event that must be ordered with the above (e.g. the block
    /// layer's `BLOCK_IO_ERROR`, emitted with [`RunStateMachine::request_stop_with`]).
    Other(String),
}

/// Errors of this crate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The transition table does not allow this change.
    #[error("invalid run state transition from {from} to {to}")]
    InvalidTransition {
        /// The current state.
        from: RunState,
        /// The requested state.
        to: RunState,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
