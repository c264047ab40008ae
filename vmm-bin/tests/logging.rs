//! The log: `-d` (and `VMM_LOG`) choose what is logged, `-D` where; warnings and errors
//! always reach stderr; stdout (the guest's serial console) never carries a log line.
//!
//! The filter tests need no KVM: the command line is parsed and the log set up before
//! the VMM looks for `/dev/kvm` or the firmware, and a debug event reports the parsed
//! command line. The serial console test boots SeaBIOS and skips loudly without KVM.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

/// The debug event every start logs once the command line is parsed.
const PARSED: &str = "vmm-bin: debug: vmm_bin: command line parsed vcpus=1 ram_mib=16";
/// The error that ends these runs early, whatever the machine has.
const NO_BIOS: &str = "/nonexistent/bios.bin";

/// Runs `vmm-bin -m 16 -bios NO_BIOS ARGS`, which ends with an error (no firmware, or
/// no KVM) after setting up its log.
fn vmm(args: &[&str], env: &[(&str, &str)]) -> (Output, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmm-bin"))
        .args(["-m", "16", "-bios", NO_BIOS])
        .args(args)
        .env_remove("VMM_LOG")
        .envs(env.iter().copied())
        .output()
        .expect("run vmm-bin");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        stderr.contains(NO_BIOS) || stderr.contains("/dev/kvm is not available"),
        "the run's error is on stderr: {stderr}"
    );
    assert!(out.stdout.is_empty(), "stdout: {out:?}");
    (out, stderr)
}

#[test]
fn d_and_vmm_log_turn_debug_messages_on() {
    let (_, stderr) = vmm(&[], &[]);
    assert!(
        !stderr.contains("debug:"),
        "default output has no debug lines: {stderr}"
    );
    let (_, stderr) = vmm(&["-d", "debug"], &[]);
    assert!(stderr.contains(PARSED), "-d debug: {stderr}");
    let (_, stderr) = vmm(&["-d", "trace:vmm_bin"], &[]);
    assert!(stderr.contains(PARSED), "-d trace:vmm_bin: {stderr}");
    // Another target's debug level does not enable ours.
    let (_, stderr) = vmm(&["-d", "qmp=debug"], &[]);
    assert!(!stderr.contains("debug:"), "-d qmp=debug: {stderr}");
    let (_, stderr) = vmm(&[], &[("VMM_LOG", "debug")]);
    assert!(stderr.contains(PARSED), "VMM_LOG=debug: {stderr}");
    // The command line comes after the environment.
    let (_, stderr) = vmm(&["-d", "info"], &[("VMM_LOG", "debug")]);
    assert!(
        !stderr.contains("debug:"),
        "VMM_LOG=debug -d info: {stderr}"
    );
}

#[test]
fn capital_d_writes_the_log_to_its_file_not_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("vmm.log");
    std::fs::write(&file, "old contents\n").unwrap();
    let (_, stderr) = vmm(
        &[
            "-d",
            "debug",
            "-D",
            file.to_str().unwrap(),
            "-cpu",
            "host,kvm=off",
        ],
        &[],
    );
    let log = std::fs::read_to_string(&file).unwrap();
    assert!(
        log.starts_with("vmm-bin: warning: -cpu property 'kvm' ignored\n"),
        "{log}"
    );
    assert!(log.contains(PARSED), "the file has the debug lines: {log}");
    assert!(
        !log.contains("old contents"),
        "the file is truncated, as QEMU's -D: {log}"
    );
    assert!(
        !stderr.contains("debug:"),
        "stderr has no debug lines: {stderr}"
    );
    // Warnings and errors stay on stderr.
    assert!(
        stderr.starts_with("vmm-bin: warning: -cpu property 'kvm' ignored\n"),
        "{stderr}"
    );
}

/// Runs `vmm-bin ARGS` to its end.
fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmm-bin"))
        .args(args)
        .env_remove("VMM_LOG")
        .output()
        .expect("run vmm-bin")
}

#[test]
fn bad_log_options_are_refused_in_qemus_words() {
    let out = run(&["-d", "int"]);
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "vmm-bin: invalid argument for '-d': unknown log item 'int' (see -d help)\n"
    );
    let out = run(&["-D", "/nonexistent/dir/vmm.log"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .starts_with("vmm-bin: Error opening logfile /nonexistent/dir/vmm.log: "),
        "{out:?}"
    );
    let out = run(&["-d", "help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("trace:PATTERN"));
}

/// The storage daemon's log is configured by `VMM_LOG` (qemu-storage-daemon has no
/// `-d`): a frontend's connection is a debug event of the export's server, with the
/// daemon's name first.
#[test]
fn vmm_log_configures_the_storage_daemon() {
    use common::vhost_frontend::{Export, image, socket_path};
    let img = image("logging-daemon.img", 1);
    let start = |name: &str, env: &[(&str, &str)]| {
        let sock = socket_path(name);
        let blockdev = format!("driver=file,node-name=f0,filename={}", img.display());
        let export = format!(
            "type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path={}",
            sock.display()
        );
        let args = ["--blockdev", blockdev.as_str(), "--export", export.as_str()];
        let export = Export::start_args_with_env(&args, &sock, env);
        drop(export.frontend());
        export
    };
    let connected =
        "vmm-bin storage-daemon: debug: vhost_user_export::server: vhost-user: frontend connected";
    let mut quiet = start("logging-quiet.sock", &[]);
    let mut loud = start(
        "logging-loud.sock",
        &[("VMM_LOG", "vhost_user_export=debug")],
    );
    assert!(
        loud.wait_log(connected, Duration::from_secs(10)),
        "{}",
        loud.daemon.stderr()
    );
    assert!(quiet.alive() && loud.alive());
    assert!(
        !quiet.daemon.stderr().contains("debug:"),
        "{}",
        quiet.daemon.stderr()
    );
}

/// With everything logged (`-d trace`), the guest's serial output on stdout is the
/// guest's alone: the log lines go to stderr.
#[test]
fn the_serial_console_carries_no_log_lines() {
    let test = "the_serial_console_carries_no_log_lines";
    let Some(vm) = common::seabios_until_reset(test, &["-d", "trace"]) else {
        return;
    };
    let logged = |line: &str| line.contains("vmm-bin") || line.contains("debug:");
    assert!(
        !vm.seen.lines().any(logged),
        "a log line on the serial console:\n{}",
        vm.seen
    );
    assert!(
        vm.wait_stderr(
            "vmm-bin: debug: vmm_bin: machine built",
            Duration::from_secs(5)
        ),
        "the log is on stderr: {}",
        vm.stderr()
    );
}

/// Issue 20: `-d trace:boot_time` prints one mark per start-up phase, in order, with
/// non-decreasing CLOCK_MONOTONIC times, from `main` to the guest's first serial byte
/// reaching stdout; without it there is none.
#[test]
fn boot_time_marks_each_phase_in_order() {
    let test = "boot_time_marks_each_phase_in_order";
    let Some(vm) = common::seabios_until_reset(test, &["-d", "trace:boot_time"]) else {
        return;
    };
    let stderr = vm.stderr();
    let marks: Vec<(String, f64)> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("vmm-bin: trace: boot_time: "))
        .map(|l| {
            let (phase, t) = l.split_once(" t=").expect("PHASE t=SECONDS");
            (phase.to_owned(), t.parse().expect("seconds"))
        })
        .collect();
    let phases: Vec<&str> = marks.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        phases,
        [
            "main",
            "cli",
            "iothreads",
            "kvm",
            "memory",
            "firmware",
            "platform",
            "ide",
            "vcpus",
            "machine",
            "devices",
            "monitor",
            "run",
            "first-kvm-run",
            "first-exit",
            "first-serial-byte",
            "first-serial-write"
        ],
        "{stderr}"
    );
    assert!(
        marks.windows(2).all(|w| w[0].1 <= w[1].1),
        "times go backwards: {marks:?}"
    );

    let quiet = common::seabios_until_reset(test, &[]).expect("probed above");
    assert!(!quiet.stderr().contains("boot_time"), "{}", quiet.stderr());
}
