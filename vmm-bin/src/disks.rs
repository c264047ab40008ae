//! The block side of the command line as the machine's devices: `-object iothread`
//! started here (an `AioContext` on its own thread serving the queues of the devices
//! that name it), then `-blockdev`, `-drive` and `-device` handed to the pc-devices
//! crate ([`pc_devices::attach`]); and QEMU's exit for the disks (drain, then flush).

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use aio_context::IoThread;
use kvm_machine::Runner;
use pc_devices::{Devices, DevicesConfig};
use tracing::warn;

use crate::cli::Config;

pub(crate) use block_node::shutdown::SHUTDOWN_IO_DEADLINE;
pub use block_node::shutdown::{drain, flush};

/// The `-object iothread`s of a command line, started, in order (their ids and threads).
pub type Iothreads = Vec<(String, Arc<IoThread>)>;

/// Starts the `-object iothread`s of `config`, in order. As QEMU creates them before
/// the machine, `main` calls this before building the machine: each thread's start
/// (its context, its io_uring) runs while the main thread sets KVM up, instead of the
/// main thread waiting for it afterwards (issue 20).
///
/// # Errors
///
/// An unknown object type or property, a duplicate id, a thread that cannot start.
pub fn iothreads(config: &Config) -> Result<Iothreads, String> {
    let mut threads: Vec<(String, Arc<IoThread>)> = Vec::new();
    for o in &config.objects {
        if o.qom_type != "iothread" {
            return Err(format!(
                "-object {}: unknown object type (supported: iothread)",
                o.qom_type
            ));
        }
        let unknown =
            o.props
                .unknown_keys(&["qom-type", "id", "poll-max-ns", "poll-grow", "poll-shrink"]);
        if let Some(k) = unknown.first() {
            return Err(format!(
                "-object iothread,id={}: invalid parameter '{k}'",
                o.id
            ));
        }
        if threads.iter().any(|(id, _)| *id == o.id) {
            return Err(format!("-object iothread,id={}: duplicate id", o.id));
        }
        let t = IoThread::spawn_with_properties("-object", &o.id, |k| {
            o.props.get(k).map(str::to_owned)
        })
        .map_err(|e| e.to_string())?;
        threads.push((o.id.clone(), Arc::new(t)));
    }
    Ok(threads)
}

/// Builds the block nodes and devices of `config` on `runner`'s machine, serving
/// their queues from `iothreads` (what [`iothreads`] started for `config`).
///
/// # Errors
///
/// A message naming the bad option: a drive that cannot be opened, a device whose
/// drive does not exist or is used twice, ...
pub fn attach(
    runner: &Runner,
    config: &Config,
    iothreads: Iothreads,
) -> Result<Rc<Devices>, String> {
    let devices = DevicesConfig {
        iothreads,
        blockdevs: config.blockdevs.clone(),
        drives: config.drives.clone(),
        devices: config.devices.clone(),
        boot: config.boot.clone(),
    };
    pc_devices::attach(runner, devices).map_err(|e| e.to_string())
}

/// What QEMU's exit does to the disks (`vm_shutdown`: drain, then flush): waits until
/// no request is in flight on any iothread, then flushes every writable image (the IDE
/// drives, whose I/O ran on the stopped main loop, from a thread of their own). Call it
/// after the vCPUs have stopped; problems are logged, the process exits anyway.
pub fn drain_and_flush(devices: &Devices) {
    let deadline = Instant::now() + SHUTDOWN_IO_DEADLINE;
    for (name, thread) in devices.iothreads() {
        if !drain(&thread, deadline) {
            warn!("iothread {name}: I/O still in flight at exit");
        }
    }
    let mut exit_thread: Option<Arc<IoThread>> = None;
    for (name, thread, drive) in devices.writable_drives() {
        let thread = match (thread, &exit_thread) {
            (Some(t), _) => t,
            (None, Some(t)) => t.clone(),
            (None, None) => match IoThread::spawn("ide-exit-flush") {
                Ok(t) => exit_thread.insert(Arc::new(t)).clone(),
                Err(e) => {
                    warn!("cannot flush the IDE drives at exit: {e}");
                    return;
                }
            },
        };
        if let Err(e) = flush(&thread, drive.backend().clone(), deadline) {
            warn!("flushing drive {name}: {e}");
        }
    }
}
