//! QEMU's run states and their transition table (system/runstate.c).

use std::fmt;

/// A VM run state (QEMU's `RunState`, with QMP's names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RunState {
    /// Stopped by a debugger.
    Debug,
    /// Waiting for an incoming migration.
    InMigrate,
    /// An internal error stopped the VM.
    InternalError,
    /// An I/O error stopped the VM (`werror=stop`/`rerror=stop`).
    IoError,
    /// Paused by the user (`stop`).
    Paused,
    /// Finished migrating out.
    PostMigrate,
    /// Created, not started yet (`-S`).
    Prelaunch,
    /// Stopped to finish an outgoing migration.
    FinishMigrate,
    /// Restoring a snapshot.
    RestoreVm,
    /// Running.
    Running,
    /// Saving a snapshot.
    SaveVm,
    /// The guest shut down (and `-no-shutdown` kept the VM).
    Shutdown,
    /// The guest is suspended (ACPI S3).
    Suspended,
    /// A watchdog fired with action `pause`.
    Watchdog,
    /// The guest panicked.
    GuestPanicked,
    /// COLO fault tolerance.
    Colo,
}

use RunState::*;

/// Every allowed `(from, to)` transition, as in QEMU's `runstate_transitions_def`.
const TRANSITIONS: &[(RunState, RunState)] = &[
    (Prelaunch, InMigrate),
    (Prelaunch, Running),
    (Prelaunch, FinishMigrate),
    (Prelaunch, Paused),
    (Debug, Running),
    (Debug, FinishMigrate),
    (Debug, Prelaunch),
    (Debug, Suspended),
    (InMigrate, InternalError),
    (InMigrate, IoError),
    (InMigrate, Paused),
    (InMigrate, Running),
    (InMigrate, Shutdown),
    (InMigrate, Suspended),
    (InMigrate, Watchdog),
    (InMigrate, GuestPanicked),
    (InMigrate, FinishMigrate),
    (InMigrate, Prelaunch),
    (InMigrate, PostMigrate),
    (InMigrate, Colo),
    (InternalError, Paused),
    (InternalError, FinishMigrate),
    (InternalError, Prelaunch),
    (IoError, Running),
    (IoError, FinishMigrate),
    (IoError, Prelaunch),
    (Paused, Running),
    (Paused, FinishMigrate),
    (Paused, PostMigrate),
    (Paused, Prelaunch),
    (Paused, Colo),
    (Paused, Suspended),
    (PostMigrate, Running),
    (PostMigrate, FinishMigrate),
    (PostMigrate, Prelaunch),
    (FinishMigrate, Running),
    (FinishMigrate, Paused),
    (FinishMigrate, PostMigrate),
    (FinishMigrate, Prelaunch),
    (FinishMigrate, Colo),
    (FinishMigrate, InternalError),
    (FinishMigrate, IoError),
    (FinishMigrate, Shutdown),
    (FinishMigrate, Suspended),
    (FinishMigrate, Watchdog),
    (FinishMigrate, GuestPanicked),
    (RestoreVm, Running),
    (RestoreVm, Prelaunch),
    (Colo, Running),
    (Colo, Prelaunch),
    (Colo, Shutdown),
    (Running, Debug),
    (Running, InternalError),
    (Running, IoError),
    (Running, Paused),
    (Running, FinishMigrate),
    (Running, RestoreVm),
    (Running, SaveVm),
    (Running, Shutdown),
    (Running, Watchdog),
    (Running, GuestPanicked),
    (Running, Colo),
    (Running, Suspended),
    (SaveVm, Running),
    (Shutdown, Paused),
    (Shutdown, FinishMigrate),
    (Shutdown, Prelaunch),
    (Shutdown, Colo),
    (Suspended, Running),
    (Suspended, FinishMigrate),
    (Suspended, Prelaunch),
    (Suspended, Colo),
    (Suspended, Paused),
    (Suspended, SaveVm),
    (Suspended, RestoreVm),
    (Suspended, Shutdown),
    (Watchdog, Running),
    (Watchdog, FinishMigrate),
    (Watchdog, Prelaunch),
    (Watchdog, Colo),
    (GuestPanicked, Running),
    (GuestPanicked, FinishMigrate),
    (GuestPanicked, Prelaunch),
];

impl RunState {
    /// Whether `self -> to` is in the transition table (a state to itself is always
    /// allowed and changes nothing).
    pub fn can_transition_to(self, to: RunState) -> bool {
        self == to || TRANSITIONS.contains(&(self, to))
    }

    /// Whether the vCPUs may run in this state (QEMU's `runstate_is_live`: running or
    /// suspended).
    pub fn is_live(self) -> bool {
        matches!(self, Running | Suspended)
    }

    /// QMP's name for the state (`query-status`'s `status`).
    pub fn qmp_name(self) -> &'static str {
        match self {
            Debug => "debug",
            InMigrate => "inmigrate",
            InternalError => "internal-error",
            IoError => "io-error",
            Paused => "paused",
            PostMigrate => "postmigrate",
            Prelaunch => "prelaunch",
            FinishMigrate => "finish-migrate",
            RestoreVm => "restore-vm",
            Running => "running",
            SaveVm => "save-vm",
            Shutdown => "shutdown",
            Suspended => "suspended",
            Watchdog => "watchdog",
            GuestPanicked => "guest-panicked",
            Colo => "colo",
        }
    }

    /// Every state, for exhaustive tests and tools.
    pub const ALL: [RunState; 16] = [
        Debug,
        InMigrate,
        InternalError,
        IoError,
        Paused,
        PostMigrate,
        Prelaunch,
        FinishMigrate,
        RestoreVm,
        Running,
        SaveVm,
        Shutdown,
        Suspended,
        Watchdog,
        GuestPanicked,
        Colo,
    ];
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.qmp_name())
    }
}
