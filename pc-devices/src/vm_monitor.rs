//! The VMM's QMP monitor: the generic [`Monitor`] wired to this machine (reset, quit,
//! vCPU pause through the runstate handler), its disks (`BLOCK_IO_ERROR`; the block
//! commands are the block-node crate's), its devices (`device_add`, `device_del`,
//! `DEVICE_DELETED`, through [`Devices`]) and its iothreads (`query-iothreads`).

use std::rc::Rc;

use serde_json::{Value, json};

use crate::devices::Devices;
use crate::monitor::{
    BlockErrorAction, BlockIoError, IoOperation, MachineHooks, Monitor, MonitorError, QmpOption,
    VmEvents,
};
use kvm_machine::Runner;
use qmp::no_arguments;

/// Why the VMM's monitor could not start.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The monitor or its socket could not be set up.
    #[error("-qmp: {0}")]
    Monitor(#[from] MonitorError),
    /// A command could not be registered (a name taken twice: a bug).
    #[error(transparent)]
    Register(#[from] qmp::Error),
}

/// What the VMM's monitor is started with.
#[derive(Clone, Debug)]
pub struct MonitorConfig {
    /// The `-qmp` options: the first one is served (none: no monitor).
    pub qmp: Vec<QmpOption>,
    /// The greeting's and `query-version`'s version (its `package` names the VMM).
    pub version: qmp::Version,
    /// Ends a `wait=on` wait for the first client early (a termination signal).
    pub give_up: fn() -> bool,
}

/// Starts the monitor of `-qmp` (the first one) on the main context, or `None` without
/// `-qmp`.
///
/// # Errors
///
/// A socket that cannot be created, a bad `-qmp` option: see [`AttachError`].
pub fn attach(
    runner: &Runner,
    config: &MonitorConfig,
    devices: &Rc<Devices>,
) -> Result<Option<Monitor>, AttachError> {
    let Some(qmp) = config.qmp.first() else {
        return Ok(None);
    };
    if config.qmp.len() > 1 {
        tracing::warn!("only the first -qmp is served");
    }
    let control = runner.control();
    let quit = runner.quit_handle();
    let hooks = MachineHooks::new(
        move || {
            if let Err(e) = control.system_reset() {
                tracing::error!("system_reset: {e}");
            }
        },
        move || quit(0),
    );
    let monitor = Monitor::new(runner.context(), runner.runstate(), Rc::new(hooks))?;
    monitor.set_version(config.version.clone());

    // BLOCK_IO_ERROR: block-dma calls this inside runstate's stop request for the
    // `stop` action, so the event precedes the STOP.
    let events = monitor.events();
    devices.set_io_error_hook(std::sync::Arc::new(
        move |qom_path: &str, e: &block_dma::BlockIoError| {
            events.block_io_error(&BlockIoError {
                qom_path: qom_path.to_owned(),
                device: e.device.clone(),
                node_name: Some(e.node_name.clone()),
                operation: if e.operation == "read" {
                    IoOperation::Read
                } else {
                    IoOperation::Write
                },
                action: match e.action {
                    block_dma::TakenAction::Report => BlockErrorAction::Report,
                    block_dma::TakenAction::Ignore => BlockErrorAction::Ignore,
                    block_dma::TakenAction::Stop => BlockErrorAction::Stop,
                },
                nospace: Some(e.nospace),
                reason: e.reason.clone(),
            });
        },
    ));
    let events = monitor.events();
    devices.on_deleted(move |id, path| events.device_deleted(Some(id), path));
    crate::devices::qmp::register(monitor.commands(), devices)?;

    // query-block, query-named-block-nodes, blockdev-add, blockdev-del: the block-node
    // crate's, on the disks' node registry.
    block_node::qmp::register(monitor.commands(), &devices.nodes)?;
    // eject, blockdev-change-medium and the IDE side of query-block.
    crate::ide::register_qmp(
        monitor.commands(),
        monitor.events(),
        runner.machine(),
        &devices.nodes,
        runner.runstate(),
        &devices.ide,
    )?;
    let threads = devices.clone();
    monitor
        .commands()
        .register("query-iothreads", move |args| {
            no_arguments(args)?;
            Ok(Value::Array(
                threads
                    .iothreads()
                    .iter()
                    .map(|(id, thread)| {
                        // What the iothread's loop runs with (`-object iothread`'s
                        // poll-* properties, or the iothread default), without
                        // waiting for the thread.
                        let poll = thread.poll_params();
                        json!({"id": id, "thread-id": thread.thread_id(),
                               "poll-max-ns": poll.max_ns, "poll-grow": poll.grow,
                               "poll-shrink": poll.shrink, "aio-max-batch": 0})
                    })
                    .collect(),
            ))
        })?;

    // Parsed by the command line (server=off refused there).
    monitor.listen_until(qmp, config.give_up)?;
    tracing::debug!(path = %qmp.path.display(), wait = qmp.wait, "qmp: listening");
    Ok(Some(monitor))
}
