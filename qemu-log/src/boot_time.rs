//! Boot-time marks: where the time from `exec` to the guest's first output goes.
//!
//! A VMM calls [`mark`] at the end of each start-up phase (KVM set-up, guest memory,
//! firmware, devices, the first `KVM_RUN`, the first exit, the guest's first serial
//! byte). A mark is a `tracing` event of target [`TARGET`] at `TRACE` level, so it
//! is off unless asked for (`-d trace:boot_time`, or `VMM_LOG=boot_time=trace`), and
//! off it costs what any disabled `tracing` event costs: a load and a compare; the
//! clock is read only when the event is enabled.
//!
//! The line carries the phase and the `CLOCK_MONOTONIC` time in seconds, the clock a
//! parent's `time.monotonic()` (Python) or `Instant` reads, so a benchmark that noted
//! when it spawned us subtracts and gets each phase's end from its spawn:
//!
//! ```text
//! vmm-bin: trace: boot_time: kvm t=38222.207529
//! ```

/// The `tracing` target of the marks (what `-d trace:boot_time` names).
pub const TARGET: &str = "boot_time";

/// `CLOCK_MONOTONIC` now, in seconds.
pub fn monotonic_seconds() -> f64 {
    // CLOCK_MONOTONIC is always there on Linux: a failure would be a broken libc.
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9)
        .unwrap_or(0.0)
}

/// Marks the end of start-up phase `phase` now (when `boot_time` tracing is on).
#[inline]
pub fn mark(phase: &str) {
    tracing::trace!(target: "boot_time", "{phase} t={:.6}", monotonic_seconds());
}

/// Marks the end of `phase` at `seconds` (a [`monotonic_seconds`] reading taken
/// earlier, e.g. on entering `main`, before the log was set up).
#[inline]
pub fn mark_at(phase: &str, seconds: f64) {
    tracing::trace!(target: "boot_time", "{phase} t={seconds:.6}");
}

/// A mark made once, by whichever thread gets there first (the first exit, the first
/// serial byte): after that, a relaxed load.
#[derive(Debug, Default)]
pub struct Once(std::sync::atomic::AtomicBool);

impl Once {
    /// A mark not made yet.
    pub const fn new() -> Once {
        Once(std::sync::atomic::AtomicBool::new(false))
    }

    /// Marks `phase` now unless this mark was made already.
    #[inline]
    pub fn mark(&self, phase: &str) {
        use std::sync::atomic::Ordering::Relaxed;
        if !self.0.load(Relaxed) && !self.0.swap(true, Relaxed) {
            mark(phase);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::Captured;

    fn captured(directives: &[&str], f: impl FnOnce()) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let directives: Vec<String> = directives.iter().map(|d| d.to_string()).collect();
        let sub = crate::subscriber("vmm-bin", &directives, writer, None::<Captured>);
        tracing::subscriber::with_default(sub, f);
        out.text()
    }

    /// Off by default; `-d trace:boot_time` prints one line per mark with a monotonic
    /// time between the readings around it, and a `Once` mark only the first time.
    #[test]
    fn marks_are_off_by_default_and_timed_when_on() {
        assert_eq!(captured(&["warn"], || mark("kvm")), "");
        let once = Once::new();
        let (mut before, mut after) = (0.0, 0.0);
        let text = captured(&["warn", "boot_time=trace"], || {
            before = monotonic_seconds();
            mark("kvm");
            after = monotonic_seconds();
            mark_at("main", 12.5);
            once.mark("first-exit");
            once.mark("first-exit");
        });
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        let t: f64 = lines[0]
            .strip_prefix("vmm-bin: trace: boot_time: kvm t=")
            .unwrap_or_else(|| panic!("{text}"))
            .parse()
            .unwrap();
        assert!(before <= t && t <= after + 1e-6, "{before} {t} {after}");
        assert_eq!(lines[1], "vmm-bin: trace: boot_time: main t=12.500000");
        assert!(lines[2].starts_with("vmm-bin: trace: boot_time: first-exit t="));
    }
}
