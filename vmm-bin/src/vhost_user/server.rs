//! The export's socket: one frontend at a time, served until it disconnects, then the
//! next.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vhost::vhost_user::{BackendReqHandler, Error};

use super::VhostUserDevice;

/// A listening export.
pub struct ExportServer {
    listener: UnixListener,
    path: PathBuf,
    device: Arc<Mutex<VhostUserDevice>>,
}

impl ExportServer {
    /// Listens on `path` (a stale socket file there is replaced).
    ///
    /// # Errors
    ///
    /// The socket's error, or a path that exists and is not a socket.
    pub fn bind(path: &Path, device: VhostUserDevice) -> std::io::Result<ExportServer> {
        use std::os::unix::fs::FileTypeExt;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                return Err(std::io::Error::other(format!(
                    "{} exists and is not a socket",
                    path.display()
                )));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        Ok(ExportServer {
            listener,
            path: path.to_owned(),
            device: Arc::new(Mutex::new(device)),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops the current frontend's queues, draining the requests in flight (the
    /// daemon's exit; the connection itself ends with the process). Waits for the
    /// device at most until `deadline` (a serving thread may be stuck on a frontend);
    /// false if it could not be had.
    pub fn stop_queues(&self, deadline: std::time::Instant) -> bool {
        loop {
            match self.device.try_lock() {
                Ok(mut device) => break device.disconnect(),
                Err(std::sync::TryLockError::Poisoned(e)) => break e.into_inner().disconnect(),
                Err(std::sync::TryLockError::WouldBlock) => {
                    if std::time::Instant::now() >= deadline {
                        return false;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
            }
        }
        true
    }

    /// Serves frontends one after another until `stop` is set (checked between
    /// connections).
    pub fn run(&self, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    eprintln!("vhost-user: accept on {}: {e}", self.path.display());
                    continue;
                }
            };
            let mut handler = BackendReqHandler::from_stream(stream, self.device.clone());
            loop {
                match handler.handle_request() {
                    Ok(()) => {}
                    Err(Error::Disconnected | Error::PartialMessage) => break,
                    Err(Error::SocketBroken(_)) => break,
                    Err(e) => {
                        // A bad message: the reply (if any) carried the error; a broken
                        // frontend is dropped, the export keeps serving the next one.
                        eprintln!("vhost-user: {e}; closing this connection");
                        break;
                    }
                }
            }
            self.device
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .disconnect();
        }
    }
}

impl Drop for ExportServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds and serves forever on the calling thread.
///
/// # Errors
///
/// As [`ExportServer::bind`].
pub fn serve(path: &Path, device: VhostUserDevice) -> std::io::Result<()> {
    let server = ExportServer::bind(path, device)?;
    server.run(&AtomicBool::new(false));
    Ok(())
}
