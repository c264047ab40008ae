//! The listening unix socket: mode 0600 before anyone can connect, stale socket files
//! replaced, the file removed again when the listener goes.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::libc;
use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
};

use crate::{Error, Result};

/// A listening socket that removes its file when dropped (if the file is still ours).
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) listener: UnixListener,
    path: PathBuf,
    /// `(dev, ino)` of the socket file we created.
    id: (u64, u64),
}

fn io_err(path: &Path, what: &str, e: io::Error) -> Error {
    Error::Socket(format!("{what} {}: {e}", path.display()))
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
        return Err(Error::Socket(format!(
            "{} exists and is not a socket; refusing to replace it",
            path.display()
        )));
    }
    if UnixStream::connect(path).is_ok() {
        return Err(Error::Socket(format!(
            "{} is in use: another process listens on it",
            path.display()
        )));
    }
    std::fs::remove_file(path).map_err(|e| io_err(path, "cannot remove stale socket", e))
}

/// The longest path a `sockaddr_un` holds, without its terminating NUL.
const MAX_PATH_LEN: usize =
    std::mem::size_of::<libc::sockaddr_un>() - std::mem::size_of::<libc::sa_family_t>() - 1;

impl Listener {
    /// Binds and listens at `path`, non-blocking, the file mode 0600 before `listen`
    /// (a socket that does not listen refuses connections, so nobody connects while
    /// the mode is still the umask's).
    pub(crate) fn bind(path: &Path) -> Result<Listener> {
        clear_stale(path)?;
        let bytes = path.as_os_str().as_bytes();
        if bytes.is_empty() || bytes.len() > MAX_PATH_LEN || bytes.contains(&0) {
            return Err(Error::Socket(format!(
                "socket path {} must be 1 to {MAX_PATH_LEN} bytes without NUL",
                path.display(),
            )));
        }
        let addr = UnixAddr::new(path).map_err(|e| io_err(path, "cannot bind", e.into()))?;
        let fd = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| io_err(path, "cannot create socket for", e.into()))?;
        bind(fd.as_raw_fd(), &addr).map_err(|e| io_err(path, "cannot bind", e.into()))?;
        let meta = std::fs::symlink_metadata(path).map_err(|e| io_err(path, "cannot stat", e));
        let checked = meta.and_then(|m| {
            if !m.file_type().is_socket() {
                return Err(Error::Socket(format!(
                    "{} was replaced while binding",
                    path.display()
                )));
            }
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| io_err(path, "cannot chmod", e))?;
            Ok((m.dev(), m.ino()))
        });
        let id = match checked {
            Ok(id) => id,
            Err(e) => {
                let _ = std::fs::remove_file(path);
                return Err(e);
            }
        };
        let backlog = Backlog::new(16).unwrap_or(Backlog::MAXCONN);
        if let Err(e) = listen(&fd, backlog) {
            let _ = std::fs::remove_file(path);
            return Err(io_err(path, "cannot listen on", e.into()));
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
