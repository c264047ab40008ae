//! The daemon's live exports: started from the command line or `block-export-add`,
//! each served by a thread of its own; `block-export-del` ends one (the
//! BLOCK_EXPORT_DELETED event follows once its frontend is gone) and releases its
//! node.

use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use aio_context::{AioHandle, IoThread, PollParams};
use block_node::{AttachOptions, Claim, NodeRegistry};
use qmp::QmpEvents;
use serde_json::json;
use vhost_user_export::{ExportServer, VhostUserDevice};
use virtio_blk::{BlkOptions, VirtioBlk};

use super::scsi::ScsiExport;
use super::{ExportAddr, ExportKind, ExportSpec};

/// The busy polling of the thread an export gets when it names no `iothread`: none.
/// qemu-storage-daemon serves such an export from its main loop, which does not poll;
/// and where the frontend shares the host's CPUs, a polling export takes their time.
/// Measured on a 2-CPU host (vhost-user-compare, 3 rounds, one run): 4k randread QD32
/// on a disk file 68.0k IOPS polling vs 75.7k not, at 6.47 vs 5.65 us of CPU per I/O;
/// on tmpfs 261k vs 279k. An `--object iothread` (which polls, as QEMU's iothreads do)
/// named by `iothread=` gives an export polling.
const OWN_THREAD_POLL: PollParams = PollParams {
    max_ns: 0,
    ..PollParams::IOTHREAD
};

/// The thread of an export that names no `iothread`.
fn own_thread(export: &str) -> std::io::Result<IoThread> {
    let thread = IoThread::spawn(&format!("export-{export}"))?;
    thread.set_poll_params(OWN_THREAD_POLL);
    Ok(thread)
}

/// One export, as the table holds it.
pub(crate) struct Export {
    pub(crate) id: String,
    pub(crate) node: String,
    pub(crate) kind: ExportKind,
    /// The serving thread holds the only strong reference.
    server: Weak<ExportServer>,
    pub(crate) iothread: Arc<IoThread>,
    /// The holds on the nodes (the export's node; a SCSI export's further LUNs).
    pub(crate) claims: Mutex<Vec<Claim>>,
    /// The SCSI controller of a vhost-user-scsi export (LUN hot add/remove).
    pub(crate) scsi: Option<ScsiExport>,
    /// `block-export-del` asked it to go.
    shutting_down: AtomicBool,
}

impl Export {
    /// Whether `block-export-del` is under way.
    pub(crate) fn shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// The holds on the export's nodes.
    pub(crate) fn claims(&self) -> MutexGuard<'_, Vec<Claim>> {
        lock(&self.claims)
    }

    /// The server, while it serves.
    pub(crate) fn server(&self) -> Option<Arc<ExportServer>> {
        self.server.upgrade()
    }

    /// `query-block-exports`' entry (QEMU's `BlockExportInfo`, its key order).
    pub(crate) fn info(&self) -> serde_json::Value {
        json!({
            "node-name": self.node,
            "shutting-down": self.shutting_down(),
            "type": self.kind.name(),
            "id": self.id,
        })
    }
}

/// Everything the monitor and the serving threads share.
#[derive(Clone)]
pub(crate) struct Daemon {
    pub(crate) nodes: NodeRegistry,
    pub(crate) iothreads: Arc<HashMap<String, Arc<IoThread>>>,
    /// Newest first, as QEMU lists them.
    pub(crate) exports: Arc<Mutex<Vec<Arc<Export>>>>,
    /// Every monitor's event queue.
    pub(crate) events: Arc<Mutex<Vec<QmpEvents>>>,
    /// The main loop (a LUN's unplug finishes there).
    pub(crate) main: AioHandle,
    /// Listening sockets passed by fd number on the command line (`addr.type=fd`),
    /// taken before the daemon opened anything of its own; each serves one export.
    passed: Arc<Mutex<HashMap<String, UnixListener>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Daemon {
    /// A daemon with these nodes and iothreads and no export.
    pub(crate) fn new(
        nodes: NodeRegistry,
        iothreads: HashMap<String, Arc<IoThread>>,
        main: AioHandle,
        passed: HashMap<String, UnixListener>,
    ) -> Daemon {
        Daemon {
            nodes,
            iothreads: Arc::new(iothreads),
            exports: Arc::default(),
            events: Arc::default(),
            main,
            passed: Arc::new(Mutex::new(passed)),
        }
    }

    /// The exports, newest first.
    pub(crate) fn exports(&self) -> Vec<Arc<Export>> {
        lock(&self.exports).clone()
    }

    /// The export `id`.
    pub(crate) fn export(&self, id: &str) -> Option<Arc<Export>> {
        lock(&self.exports).iter().find(|e| e.id == id).cloned()
    }

    /// Emits `name` on every monitor.
    pub(crate) fn emit(&self, name: &str, data: serde_json::Value) {
        emit(&self.events, name, data);
    }

    /// Attaches `spec` to its node, binds its socket and serves it on a thread of its
    /// own. Errors are QEMU's words where it has them.
    pub(crate) fn start(&self, spec: &ExportSpec) -> Result<(), String> {
        if self.export(&spec.id).is_some() {
            return Err(format!("Block export id '{}' is already in use", spec.id));
        }
        if !self.nodes.contains(&spec.node) {
            return Err(format!(
                "Cannot find device='' nor node-name='{}'",
                spec.node
            ));
        }
        let iothread = match &spec.iothread {
            Some(id) => self
                .iothreads
                .get(id)
                .cloned()
                .ok_or_else(|| format!("iothread \"{id}\" not found"))?,
            None => Arc::new(own_thread(&spec.id).map_err(|e| e.to_string())?),
        };
        let how = AttachOptions {
            device: Some(spec.id.clone()),
            read_only: !spec.writable,
            ..AttachOptions::default()
        };
        let claim = self
            .nodes
            .attach(&spec.node, how)
            .map_err(|e| e.to_string())?;
        let (device, scsi): (Box<dyn virtio_core::VirtioDevice>, _) = match spec.kind {
            ExportKind::Blk => {
                let options = BlkOptions {
                    num_queues: spec.num_queues,
                    logical_block_size: spec.logical_block_size,
                    serial: spec.serial.clone(),
                    ..BlkOptions::default()
                };
                let device =
                    VirtioBlk::new(claim.drive().clone(), options).map_err(|e| e.to_string())?;
                (Box::new(device), None)
            }
            ExportKind::Scsi => {
                // Weak: the export (in `exports`) holds this hook.
                let events = Arc::downgrade(&self.events);
                let (device, scsi) = ScsiExport::new(spec, &claim, &self.main, move |e| {
                    let path = format!("/machine/peripheral/{}", e.id);
                    if let Some(events) = events.upgrade() {
                        emit(
                            &events,
                            "DEVICE_DELETED",
                            json!({"device": e.id, "path": path}),
                        );
                    }
                })?;
                (device, Some(scsi))
            }
        };
        let vhost = VhostUserDevice::new(device, iothread.clone());
        let server = match &spec.addr {
            ExportAddr::Unix(path) => ExportServer::bind(path, vhost)
                .map_err(|e| format!("Failed to bind socket to {}: {e}", path.display()))?,
            ExportAddr::Fd(name) => {
                // Over QMP (no fd was passed under this name at startup),
                // qemu-storage-daemon 10's words: it takes no fds over QMP either.
                let listener = lock(&self.passed)
                    .remove(name)
                    .ok_or_else(|| "only QEMU supports file descriptor passing".to_owned())?;
                ExportServer::from_listener(listener, vhost)
            }
        };
        let server = Arc::new(server);
        if matches!(spec.kind, ExportKind::Blk) {
            // block_resize: the frontend hears of the new capacity (CONFIG_CHANGE_MSG).
            let weak = Arc::downgrade(&server);
            claim.on_resize(move |_| {
                if let Some(server) = weak.upgrade() {
                    server.config_changed();
                }
            });
        }
        let export = Arc::new(Export {
            id: spec.id.clone(),
            node: spec.node.clone(),
            kind: spec.kind,
            server: Arc::downgrade(&server),
            iothread,
            claims: Mutex::new(vec![claim]),
            scsi,
            shutting_down: AtomicBool::new(false),
        });
        lock(&self.exports).insert(0, export.clone());
        let daemon = self.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("vhost-user-{}", spec.id))
            .spawn(move || {
                server.run(&AtomicBool::new(false));
                daemon.finish(server, &export);
            });
        if let Err(e) = spawned {
            lock(&self.exports).retain(|e| e.id != spec.id);
            return Err(format!("cannot start a thread: {e}"));
        }
        Ok(())
    }

    /// The serving thread's end: the device and socket go, then the node holds, then
    /// the export leaves the table; BLOCK_EXPORT_DELETED says so.
    fn finish(&self, server: Arc<ExportServer>, export: &Arc<Export>) {
        drop(server);
        lock(&export.claims).clear();
        lock(&self.exports).retain(|e| !Arc::ptr_eq(e, export));
        self.emit("BLOCK_EXPORT_DELETED", json!({"id": export.id}));
    }

    /// `block-export-del`: QEMU's checks and words.
    pub(crate) fn delete(&self, id: &str, hard: bool) -> Result<(), String> {
        let export = self
            .export(id)
            .ok_or_else(|| format!("Export '{id}' is not found"))?;
        if export.shutting_down() {
            return Err(format!("Export '{id}' is already shutting down"));
        }
        let Some(server) = export.server() else {
            return Err(format!("Export '{id}' is already shutting down"));
        };
        if !hard && server.connected() {
            // QEMU's hint ("Use mode='hard' to force client disconnect") does not
            // travel over QMP.
            return Err(format!("export '{id}' still in use"));
        }
        export.shutting_down.store(true, Ordering::SeqCst);
        server.shut_down();
        Ok(())
    }
}

/// Emits `name` on every monitor of `events`.
fn emit(events: &Mutex<Vec<QmpEvents>>, name: &str, data: serde_json::Value) {
    for e in lock(events).iter() {
        e.emit(name, Some(data.clone()));
    }
}

/// `addr.type=fd,addr.str=N` on the command line: takes the listening socket the
/// caller passed as fd N. Call it before the process opens fds of its own, so that N
/// cannot be one of them.
pub(crate) fn listener_fd(text: &str) -> Result<UnixListener, String> {
    let fd: i32 = text
        .parse()
        .map_err(|_| format!("File descriptor named '{text}' has not been found"))?;
    let listening = fd >= 0
        && nix::sys::socket::getsockopt(
            // SAFETY: only inspected; an fd that is not open fails the call.
            &unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
            nix::sys::socket::sockopt::AcceptConn,
        )
        .unwrap_or(false);
    if !listening {
        return Err(format!("File descriptor '{fd}' is not a listening socket"));
    }
    // SAFETY: the caller handed this process the fd for this export (checked above to
    // be an open, listening socket); the export owns it from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(UnixListener::from(fd))
}

/// Where a socket path would be served, for the same-path check.
pub(crate) fn socket_path(addr: &ExportAddr) -> Option<PathBuf> {
    match addr {
        ExportAddr::Unix(p) => Some(p.clone()),
        ExportAddr::Fd(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_s_own_thread_does_not_busy_poll() {
        let thread = own_thread("exp0").unwrap();
        assert_eq!(thread.name(), "export-exp0");
        assert_eq!(thread.poll_params().max_ns, 0);
    }
}
