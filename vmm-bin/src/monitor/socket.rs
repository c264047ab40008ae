//! The listening unix socket: mode 0600 before anyone can connect, stale socket files
//! replaced, the file removed again when the listener goes.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::{MonitorError, Result};

/// A listening socket that removes its file when dropped (if the file is still ours).
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) listener: UnixListener,
    path: PathBuf,
    /// `(dev, ino)` of the socket file we created.
    id: (u64, u64),
}

fn io_err(path: &Path, what: &str, e: io::Error) -> MonitorError {
    MonitorError::Socket(format!("{what} {}: {e}", path.display()))
}

/// Removes a stale socket file at `path`; refuses anything that is not a socket, and a
/// socket that something still listens on.
fn clear_stale(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(path, "cannot inspect", e)),
    };
    if !meta.file_type().is_socket() {
        return Err(MonitorError::Socket(format!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        )));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(MonitorError::Socket(format!(
            "{} is in use: another process listens on it",
            path.display()
        )));
    }
    std::fs::remove_file(path).map_err(|e| io_err(path, "cannot remove stale socket", e))
}

impl Listener {
    /// Binds and listens at `path`, non-blocking, the file mode 0600 before `listen`
    /// (a socket that does not listen refuses connections, so nobody connects while
    /// the mode is still the umask's).
    pub(crate) fn bind(path: &Path) -> Result<Listener> {
        clear_stale(path)?;
        let bytes = path.as_os_str().as_bytes();
        // SAFETY: an all-zero sockaddr_un is a valid (empty) address.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
            return Err(MonitorError::Socket(format!(
                "socket path {} must be 1 to {} bytes without NUL",
                path.display(),
                addr.sun_path.len() - 1
            )));
        }
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
            *dst = src as libc::c_char;
        }
        // SAFETY: socket() takes no pointers; it returns a new fd or -1.
        let fd = unsafe {
            libc::socket(
                libc::AF_UNIX,
                libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                0,
            )
        };
        if fd < 0 {
            return Err(io_err(
                path,
                "cannot create socket for",
                io::Error::last_os_error(),
            ));
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
        // SAFETY: `addr` is a live, initialised sockaddr_un and `len` is within it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                len as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io_err(path, "cannot bind", io::Error::last_os_error()));
        }
        let cpath = CString::new(bytes).map_err(|_| MonitorError::Socket("NUL in path".into()))?;
        let meta = std::fs::symlink_metadata(path).map_err(|e| io_err(path, "cannot stat", e));
        let chmod = |cpath: &CString| {
            // SAFETY: `cpath` is a NUL-terminated string that outlives the call.
            (unsafe { libc::chmod(cpath.as_ptr(), 0o600) } == 0)
                .then_some(())
                .ok_or_else(io::Error::last_os_error)
        };
        let checked = meta.and_then(|m| {
            if !m.file_type().is_socket() {
                return Err(MonitorError::Socket(format!(
                    "{} was replaced while binding",
                    path.display()
                )));
            }
            chmod(&cpath).map_err(|e| io_err(path, "cannot chmod", e))?;
            Ok((m.dev(), m.ino()))
        });
        let id = match checked {
            Ok(id) => id,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        };
        // SAFETY: listen() on our own bound socket; no pointers.
        if unsafe { libc::listen(fd.as_raw_fd(), 16) } != 0 {
            let e = io::Error::last_os_error();
            let _ = std::fs::remove_file(path);
            return Err(io_err(path, "cannot listen on", e));
        }
        Ok(Listener {
            listener: UnixListener::from(fd),
            path: path.to_owned(),
            id,
        })
    }

    /// The socket file's path.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Remove the file only if it is still the one we created.
        if let Ok(m) = std::fs::symlink_metadata(&self.path) {
            if (m.dev(), m.ino()) == self.id {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("vmm-qmp-{}-{name}", std::process::id()))
    }

    #[test]
    fn mode_stale_and_cleanup() {
        let path = tmp("sock");
        let l = Listener::bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // In use: refused.
        assert!(
            Listener::bind(&path)
                .unwrap_err()
                .to_string()
                .contains("in use")
        );
        // Stale (nobody listens): replaced. Leak the fd so the old file stays stale.
        std::mem::forget(l);
        let _ = std::fs::remove_file(&path);
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale); // the file stays, nobody listens
        let l = Listener::bind(&path).unwrap();
        drop(l);
        assert!(!path.exists());
        // Not a socket: refused, left alone.
        std::fs::write(&path, b"data").unwrap();
        assert!(
            Listener::bind(&path)
                .unwrap_err()
                .to_string()
                .contains("not a socket")
        );
        assert!(path.exists());
        std::fs::remove_file(&path).unwrap();
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(200)));
        assert!(
            Listener::bind(&long)
                .unwrap_err()
                .to_string()
                .contains("bytes")
        );
    }
}
