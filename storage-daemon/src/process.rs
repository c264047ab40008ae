//! `--daemonize` and `--pidfile`, as qemu-storage-daemon does them: the parent of a
//! daemon exits once the daemon is serving (its status says whether it started), the
//! daemon leaves the session and the terminal; the pid file is locked, holds the pid
//! and is removed at exit.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

/// A written, locked pid file; removed when dropped.
#[derive(Debug)]
pub(crate) struct PidFile {
    path: PathBuf,
    _lock: Flock<File>,
}

impl PidFile {
    /// Creates (or takes over an unlocked) `path`, locks it and writes our pid.
    ///
    /// # Errors
    ///
    /// QEMU's words: the file cannot be opened, or another process holds its lock.
    pub(crate) fn write(path: &Path) -> Result<PidFile, String> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(|e| format!("cannot create PID file: Cannot open pid file: {e}"))?;
        let mut lock = Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
            format!(
                "cannot create PID file: Cannot lock pid file: {}",
                std::io::Error::from(e)
            )
        })?;
        lock.set_len(0)
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .map_err(|e| format!("cannot create PID file: Failed to write pid file: {e}"))?;
        // Kept absolute: a daemon changes its directory to /.
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        Ok(PidFile { path, _lock: lock })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The daemon's end of the pipe its parent waits on.
#[derive(Debug)]
pub(crate) struct Daemonized {
    ready: Option<File>,
}

impl Daemonized {
    /// Tells the waiting parent that the daemon serves (it exits 0), then moves to `/`
    /// and points stdin, stdout and stderr at /dev/null, as QEMU's `os_setup_post`.
    pub(crate) fn ready(&mut self) {
        if let Some(mut pipe) = self.ready.take() {
            let _ = nix::unistd::chdir("/");
            if let Ok(null) = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
            {
                for fd in [libc::STDIN_FILENO, libc::STDOUT_FILENO, libc::STDERR_FILENO] {
                    // SAFETY: dup2 onto the standard descriptors, which this process
                    // owns; `null` stays open for the call.
                    unsafe { libc::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), fd) };
                }
            }
            let _ = pipe.write_all(&[0]);
        }
    }
}

/// Forks: the parent waits until the child calls [`Daemonized::ready`] (exit status 0)
/// or exits without (status 1), and never returns; the child, in a session of its own,
/// returns. Must be called while the process has one thread.
///
/// # Errors
///
/// More than one thread, or `fork`/`pipe`/`setsid` failed.
pub(crate) fn daemonize() -> Result<Daemonized, String> {
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count);
    if threads != 1 {
        return Err(format!(
            "--daemonize: the process has {threads} threads; it must fork with one"
        ));
    }
    let (r, w): (OwnedFd, OwnedFd) =
        nix::unistd::pipe().map_err(|e| format!("--daemonize: pipe: {e}"))?;
    // SAFETY: the process has exactly one thread (checked above), so the child
    // inherits no lock held by another thread and may run any code.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("--daemonize: fork: {e}"))? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(w);
            let mut byte = [1u8; 1];
            let started = File::from(r).read(&mut byte).is_ok_and(|n| n == 1) && byte[0] == 0;
            std::process::exit(if started { 0 } else { 1 });
        }
        nix::unistd::ForkResult::Child => {
            drop(r);
            nix::unistd::setsid().map_err(|e| format!("--daemonize: setsid: {e}"))?;
            Ok(Daemonized {
                ready: Some(File::from(w)),
            })
        }
    }
}
