//! The VMM under a dying vCPU and a stalled stdout (issue 14, section 6).
//!
//! - A vCPU thread that panics (a device bug; here the debug-build test hook
//!   `VMM_TEST_PANIC_PORT`) ends the VMM promptly with the panic message and status 1,
//!   and a QMP `stop` sent after it does not hang. Before, the thread died silently:
//!   the VMM kept running without it and the next pause waited for it forever.
//! - A stdout that nobody reads (a full pipe) costs guest output only: the guest keeps
//!   running, QMP answers, `stop` and `cont` work, `quit` exits. Before, COM1 wrote
//!   with a blocking `write_all` on the vCPU thread: the guest froze and `stop` hung.
//!
//! The guests are our PVH programs (`tests/pvh/panic_port.S`, `tests/pvh/chatter.S`).
//! Skips loudly without `/dev/kvm` or binutils.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{Vm, assemble_pvh, kvm_or_skip};

/// Generous: the machine is shared and slow; a hang takes forever, not 30 s.
const DEADLINE: Duration = Duration::from_secs(30);

fn skip(why: &str) {
    eprintln!("SKIPPED vmm_robustness: {why}");
}

/// Assembles tests/pvh/NAME.S into a fresh directory; `None` (after saying why)
/// without `/dev/kvm` or binutils.
fn program(name: &str) -> Option<(tempfile::TempDir, PathBuf)> {
    if !kvm_or_skip(&format!("vmm_robustness {name}")) {
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let elf = assemble_pvh(dir.path(), name, skip)?;
    Some((dir, elf))
}

/// A QMP client with a deadline on every reply.
struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

/// What became of a command.
#[derive(Debug)]
enum Reply {
    /// The `return` or `error` object.
    Answer(serde_json::Value),
    /// The connection ended (the VMM exited).
    Closed,
}

impl Qmp {
    /// Connects (waiting for the socket to appear) and negotiates capabilities.
    fn connect(path: &Path) -> Qmp {
        let stream = common::connect_unix(path, DEADLINE);
        let mut qmp = Qmp {
            reader: BufReader::new(stream.try_clone().unwrap()),
            writer: stream,
        };
        let greeting = qmp.line().expect("QMP greeting");
        assert!(greeting.get("QMP").is_some(), "{greeting}");
        let caps = qmp.execute("qmp_capabilities");
        assert!(
            matches!(caps, Reply::Answer(ref v) if v.get("return").is_some()),
            "{caps:?}"
        );
        qmp
    }

    /// The next JSON line; `None` at end of file. Panics if nothing comes within the
    /// deadline: that is the hang these tests are about.
    fn line(&mut self) -> Option<serde_json::Value> {
        let mut line = String::new();
        match self.reader.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(serde_json::from_str(&line).unwrap()),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => None,
            Err(e) => panic!("no QMP reply within {DEADLINE:?} ({e}): the VMM hangs"),
        }
    }

    /// Runs `command`; events before the reply are skipped.
    fn execute(&mut self, command: &str) -> Reply {
        let request = format!("{{\"execute\":\"{command}\"}}\n");
        if self.writer.write_all(request.as_bytes()).is_err() {
            return Reply::Closed;
        }
        loop {
            match self.line() {
                None => return Reply::Closed,
                Some(v) if v.get("event").is_some() => continue,
                Some(v) => return Reply::Answer(v),
            }
        }
    }
}

/// Waits until `f` holds, polling; false at the deadline.
fn eventually(f: impl FnMut() -> bool) -> bool {
    eventually_within(DEADLINE, f)
}

/// Whether `f` becomes true within `limit`.
fn eventually_within(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !f() {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[test]
fn a_vcpu_panic_ends_the_vmm_with_the_message_and_status_1() {
    let Some((_dir, elf)) = program("panic_port") else {
        return;
    };
    let mut vm = Vm::start_with_env(
        &["-nographic", "-m", "64", "-kernel", elf.to_str().unwrap()],
        &[("VMM_TEST_PANIC_PORT", "0x4f0")],
    );
    let status = vm.wait_exit(DEADLINE);
    let out = vm.seen.replace('\r', "");
    let stderr = vm.stderr();
    assert!(out.contains("PANIC-NEXT"), "{out}");
    assert!(!out.contains("SURVIVED"), "{out}");
    assert!(
        status.is_some(),
        "the VMM did not end after its vCPU panicked\nstderr:\n{stderr}"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{stderr}");
    assert!(
        stderr.contains("vmm-bin: vCPU 0 panicked: test hook: the guest wrote [42] to port 0x4f0"),
        "the panic message is reported:\n{stderr}"
    );
}

#[test]
fn qmp_stop_after_a_vcpu_panic_does_not_hang() {
    let Some((dir, elf)) = program("panic_port") else {
        return;
    };
    let sock = dir.path().join("qmp.sock");
    let qmp_arg = format!("unix:{},server=on,wait=off", sock.display());
    let mut vm = Vm::start_with_env(
        &[
            "-nographic",
            "-m",
            "64",
            "-S",
            "-kernel",
            elf.to_str().unwrap(),
            "-qmp",
            &qmp_arg,
        ],
        &[("VMM_TEST_PANIC_PORT", "0x4f0")],
    );
    let mut qmp = Qmp::connect(&sock);
    let cont = qmp.execute("cont");
    assert!(matches!(cont, Reply::Answer(_)), "{cont:?}");
    assert!(
        eventually(|| vm.stderr().contains("panicked")),
        "the vCPU did not panic:\n{}",
        vm.stderr()
    );
    // A monitor is attached: a panic still ends the VMM (its state is suspect), and the
    // pause a `stop` does never waits for the dead vCPU. Either the reply or the end
    // of the connection comes; `Qmp::line` panics if neither does.
    let stop = qmp.execute("stop");
    eprintln!("stop after the panic: {stop:?}");
    let status = vm.wait_exit(DEADLINE);
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "stderr:\n{}",
        vm.stderr()
    );
}

/// How many lines the guest has printed (one '.' on debugcon per line).
fn lines_printed(debugcon: &Path) -> u64 {
    std::fs::metadata(debugcon).map_or(0, |m| m.len())
}

#[test]
fn a_stalled_stdout_freezes_neither_the_guest_nor_qmp() {
    let Some((dir, elf)) = program("chatter") else {
        return;
    };
    let sock = dir.path().join("qmp.sock");
    let debugcon = dir.path().join("debugcon.log");
    let qmp_arg = format!("unix:{},server=on,wait=off", sock.display());
    let mut vm = Vm::start_with_stalled_stdout(
        &[
            "-nographic",
            "-m",
            "64",
            "-kernel",
            elf.to_str().unwrap(),
            "-qmp",
            &qmp_arg,
        ],
        &[("VMM_DEBUGCON", debugcon.to_str().unwrap())],
    );
    let mut qmp = Qmp::connect(&sock);
    // Progress, not speed (this KVM emulates the guest, and a loaded host slows it
    // down): first the pipe and our buffer fill up (the VMM says it drops output, which
    // a blocking COM1 never does), then the guest must keep printing.
    let patient = Duration::from_secs(180);
    assert!(
        eventually_within(patient, || vm.stderr().contains("dropping the rest")),
        "the output buffer never filled after {} lines: COM1 blocks on the full pipe?\nstderr:\n{}",
        lines_printed(&debugcon),
        vm.stderr()
    );
    let full = lines_printed(&debugcon);
    assert!(
        eventually_within(patient, || lines_printed(&debugcon) > full + 512),
        "the guest stopped at {} lines once the pipe and the buffer were full\nstderr:\n{}",
        lines_printed(&debugcon),
        vm.stderr()
    );
    let status = qmp.execute("query-status");
    match &status {
        Reply::Answer(v) => assert_eq!(v["return"]["status"], "running", "{v}"),
        Reply::Closed => panic!("the VMM went away"),
    }
    // stop waits for the vCPU to park: it must not be stuck in a write.
    assert!(matches!(qmp.execute("stop"), Reply::Answer(_)));
    let paused_at = lines_printed(&debugcon);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(lines_printed(&debugcon), paused_at, "stopped means stopped");
    assert!(matches!(qmp.execute("cont"), Reply::Answer(_)));
    assert!(
        eventually(|| lines_printed(&debugcon) > paused_at + 100),
        "the guest did not resume"
    );
    assert!(
        vm.stderr().contains("stdout does not accept guest output"),
        "the loss is reported:\n{}",
        vm.stderr()
    );
    // quit exits although stdout still takes nothing.
    let _ = qmp.execute("quit");
    let status = vm.wait_exit(DEADLINE);
    assert!(status.is_some(), "quit hangs on the stalled stdout");
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", vm.stderr());
}
