//! The daemon's life: start everything, serve until told to stop, shut down.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use aio_context::signals::{TerminationSignals, terminating};
use aio_context::{AioContext, FdHandler, IoThread};
use block_dma::BlockBackend;
use block_node::NodeRegistry;
use block_node::shutdown::{SHUTDOWN_IO_DEADLINE, flush};

use crate::exports::{self, Daemon};
use crate::{DaemonConfig, Error, ExportAddr, Result, monitor, process};

/// Opens everything and serves until `quit`, SIGTERM, SIGINT or SIGHUP, then shuts
/// down as qemu-storage-daemon does: the exports stop (requests in flight complete),
/// the writable images are flushed, the sockets and the pid file removed.
///
/// # Errors
///
/// An image that cannot be opened, a socket that cannot be bound.
pub fn run(config: &DaemonConfig) -> Result<()> {
    // Forks while the process has one thread: before anything else starts.
    let mut daemon_pipe = match config.daemonize {
        true => Some(process::daemonize()?),
        false => None,
    };
    // Sockets passed by fd: taken before this process opens any fd of its own.
    let mut passed = HashMap::new();
    for export in &config.exports {
        if let ExportAddr::Fd(name) = &export.addr {
            let listener = exports::listener_fd(name).map_err(|message| Error::Export {
                id: export.id.clone(),
                message,
            })?;
            passed.insert(name.clone(), listener);
        }
    }
    // Opening images starts no thread: the nodes come first, so a bad one is refused
    // before anything else is set up.
    let nodes = NodeRegistry::new();
    for b in &config.blockdevs {
        nodes.add(b).map_err(Error::Blockdev)?;
    }
    // Before the iothreads and serving threads exist: they inherit the blocked mask.
    let signals = TerminationSignals::block()
        .map_err(|e| Error::Setup(format!("cannot set up signal handling: {e}")))?;
    let ctx = AioContext::new().map_err(|e| Error::Setup(e.to_string()))?;
    let mut iothreads = HashMap::new();
    for t in &config.iothreads {
        let thread = IoThread::spawn_with_properties("--object", &t.id, |k| {
            t.props.get(k).map(str::to_owned)
        })?;
        iothreads.insert(t.id.clone(), Arc::new(thread));
    }
    let daemon = Daemon::new(nodes, iothreads, ctx.handle().clone(), passed);
    let mut monitors = Vec::new();
    for m in &config.monitors {
        let chardev = config.chardevs.iter().find(|c| c.id == *m).cloned();
        let chardev = chardev.ok_or_else(|| Error::Setup(format!("chardev '{m}' not found")))?;
        let quit = monitor::Quit::default();
        let server = monitor::start(&ctx, &daemon, &chardev.path, quit.clone())
            .map_err(|e| Error::Setup(format!("--chardev {}: {e}", chardev.id)))?;
        monitors.push((server, quit, chardev));
    }
    for export in &config.exports {
        daemon.start(export).map_err(|message| Error::Export {
            id: export.id.clone(),
            message,
        })?;
    }
    let _pidfile = match &config.pidfile {
        Some(p) => Some(process::PidFile::write(p)?),
        None => None,
    };
    let stop = Rc::new(std::cell::Cell::new(None::<String>));
    let s = stop.clone();
    let fd = signals.fd();
    ctx.set_fd_handler(
        fd,
        FdHandler::new().on_read(move || {
            if let Ok(Some(signal)) = signals.try_read() {
                s.set(Some(signal.to_string()));
            }
        }),
    )
    .map_err(|e| Error::Setup(format!("cannot watch signals: {e}")))?;
    for (server, _, chardev) in &monitors {
        if chardev.wait {
            server.wait_for_client(terminating);
        }
    }
    if let Some(d) = daemon_pipe.as_mut() {
        d.ready();
    }
    loop {
        ctx.poll(true);
        if let Some(message) = stop.take() {
            tracing::error!("{message}");
            break;
        }
        if monitors.iter().any(|(_, quit, _)| quit.requested()) {
            break;
        }
    }
    ctx.remove_fd_handler(fd);
    shut_down(&daemon);
    // The events of the exit reach the clients before the sockets close.
    while ctx.poll(false) {}
    drop(monitors);
    Ok(())
}

/// qemu-storage-daemon's exit: every export stops serving its queues (the requests in
/// flight complete first), every writable image is flushed, the sockets are removed;
/// the exit status is 0. The serving threads end with the process.
fn shut_down(daemon: &Daemon) {
    let deadline = Instant::now() + SHUTDOWN_IO_DEADLINE;
    let exports = daemon.exports();
    for export in &exports {
        let Some(server) = export.server() else {
            continue;
        };
        if !server.stop_queues(deadline) {
            tracing::warn!(
                "{}: the export is busy; its requests in flight are abandoned",
                export.id
            );
        }
        if !server.path().as_os_str().is_empty() {
            let _ = std::fs::remove_file(server.path());
        }
        // qemu-storage-daemon reports every export's end as it exits.
        daemon.emit("BLOCK_EXPORT_DELETED", serde_json::json!({"id": export.id}));
    }
    for export in &exports {
        let mut backends: Vec<Arc<dyn BlockBackend>> = export
            .claims()
            .iter()
            .filter(|c| !c.read_only())
            .map(|c| c.drive().backend().clone())
            .collect();
        if let Some(scsi) = &export.scsi {
            backends.extend(scsi.claims());
        }
        for backend in backends {
            if let Err(e) = flush(&export.iothread, backend, deadline) {
                tracing::error!("--export {}: flush: {e}", export.id);
            }
        }
    }
}
