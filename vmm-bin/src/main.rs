//! The `vmm-bin` command: a QEMU-compatible VMM, or `vmm-bin storage-daemon ...`.

use std::cell::Cell;
use std::rc::Rc;

use aio_context::FdHandler;
use aio_context::signals::TerminationSignals;
use kvm_machine::{Runner, kvm_available};
use qemu_log::LogConfig;
use runstate::Event;
use vmm_bin::cli;
use vmm_bin::machine::machine_config;

/// The name that starts every line of the log.
const PROGRAM: &str = "vmm-bin";
/// The same in storage-daemon mode.
const STORAGE_DAEMON: &str = "vmm-bin storage-daemon";

/// Logs MESSAGE as an error (`vmm-bin: MESSAGE` on stderr) and exits with status 1.
fn fail(message: impl std::fmt::Display) -> ! {
    tracing::error!("{message}");
    std::process::exit(1);
}

fn main() {
    // Read before anything else: the end of the process-start phase (exec to main).
    let entered = qemu_log::boot_time::monotonic_seconds();
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("storage-daemon") {
        // qemu-storage-daemon has no -d/-D: its log is configured by VMM_LOG alone.
        if let Err(e) = qemu_log::init(STORAGE_DAEMON, &LogConfig::default()) {
            fail(e);
        }
        std::process::exit(storage_daemon::main(&args[1..]));
    }
    if args
        .iter()
        .any(|a| matches!(a.as_str(), "-help" | "--help" | "-h"))
    {
        print!("{}", cli::USAGE);
        return;
    }
    let config = cli::parse(args).unwrap_or_else(|e| {
        // The command line configures the log; this one is not usable: the defaults.
        let _ = qemu_log::init(PROGRAM, &LogConfig::default());
        fail(e)
    });
    if config.log.help {
        print!("{}", qemu_log::HELP);
        return;
    }
    if let Err(e) = qemu_log::init(PROGRAM, &config.log) {
        fail(e);
    }
    qemu_log::boot_time::mark_at("main", entered);
    qemu_log::boot_time::mark("cli");
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    tracing::debug!(
        vcpus = config.machine.cpus,
        ram_mib = config.machine.ram_bytes >> 20,
        disks = config.drives.len(),
        devices = config.devices.len(),
        "command line parsed"
    );
    if config.devices.iter().any(|d| d.driver == "help") {
        print!("{}", pc_devices::registry().help());
        return;
    }
    if !kvm_available() {
        fail("/dev/kvm is not available");
    }
    // Before any thread exists (vCPUs, iothreads): they inherit the blocked mask, so
    // the signals reach only the main loop's signalfd.
    let signals = TerminationSignals::block()
        .unwrap_or_else(|e| fail(format!("cannot set up signal handling: {e}")));
    // Also before the first thread: RCU's one membarrier(REGISTER_PRIVATE_EXPEDITED)
    // costs a kernel grace period (5 ms here) once the process has a second thread,
    // microseconds while it has one.
    rcu::uses_membarrier();
    let iothreads = vmm_bin::disks::iothreads(&config).unwrap_or_else(|e| fail(e));
    qemu_log::boot_time::mark("iothreads");
    let runner = Runner::new(&machine_config(&config)).unwrap_or_else(|e| fail(e));
    qemu_log::boot_time::mark("machine");
    let devices = vmm_bin::disks::attach(&runner, &config, iothreads).unwrap_or_else(|e| fail(e));
    qemu_log::boot_time::mark("devices");
    let terminated = watch_signals(&runner, signals);
    let monitor = pc_devices::vm_monitor::attach(&runner, &monitor_config(&config), &devices)
        .unwrap_or_else(|e| fail(e));
    qemu_log::boot_time::mark("monitor");
    // A signal during `-qmp ...,wait=on` ends the process without starting the guest.
    tracing::debug!(paused = config.start_paused, "machine built; running");
    let status = runner.run(config.start_paused || terminated.get());
    tracing::debug!(status, "the machine stopped; draining the disks");
    // QEMU's exit: the vCPUs have stopped; drain and flush the disks, then the monitor
    // delivers what it owes (the SHUTDOWN event) and removes its socket file.
    vmm_bin::disks::drain_and_flush(&devices);
    drop(monitor);
    std::process::exit(status);
}

/// The monitor of `config`'s `-qmp` (the first one), reporting this program's version;
/// a termination signal ends its `wait=on` wait.
fn monitor_config(config: &cli::Config) -> pc_devices::vm_monitor::MonitorConfig {
    pc_devices::vm_monitor::MonitorConfig {
        qmp: config.qmp.clone(),
        version: qmp::Version {
            package: format!("{PROGRAM} {}", env!("CARGO_PKG_VERSION")),
            ..qmp::Version::default()
        },
        give_up: aio_context::signals::terminating,
    }
}

/// Ends the main loop on SIGTERM, SIGINT or SIGHUP as QEMU does: a message naming the
/// signal and its sender, a SHUTDOWN event (`host-signal`), exit status 0. Returns
/// whether that has happened.
fn watch_signals(runner: &Runner, signals: TerminationSignals) -> Rc<Cell<bool>> {
    let terminated = Rc::new(Cell::new(false));
    let (flag, quit, runstate) = (
        terminated.clone(),
        runner.quit_handle(),
        runner.runstate().clone(),
    );
    let fd = signals.fd();
    let handler = FdHandler::new().on_read(move || {
        while let Ok(Some(signal)) = signals.try_read() {
            if flag.replace(true) {
                continue; // the first one is reported; the exit is under way
            }
            tracing::error!("{signal}");
            runstate.emit_event(Event::Shutdown {
                guest: false,
                reason: "host-signal".into(),
            });
            quit(0);
        }
    });
    if let Err(e) = runner.context().set_fd_handler(fd, handler) {
        fail(format!("cannot watch signals: {e}"));
    }
    terminated
}
