//! `--daemonize` and `--pidfile`, as qemu-storage-daemon does them: the parent of a
//! daemon exits once the daemon is serving (its status says whether it started), the
//! daemon leaves the session and the terminal; the pid file is locked, holds the pid
//! and is removed at exit.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Why `--pidfile` or `--daemonize` failed (QEMU's words where it has them).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The pid file cannot be created or opened.
    #[error("cannot create PID file: Cannot open pid file: {0}")]
    PidFileOpen(#[source] std::io::Error),
    /// Another process holds the pid file's lock.
    #[error("cannot create PID file: Cannot lock pid file: {0}")]
    PidFileLock(#[source] std::io::Error),
    /// The pid cannot be written.
    #[error("cannot create PID file: Failed to write pid file: {0}")]
    PidFileWrite(#[source] std::io::Error),
    /// `--daemonize` in a process that already has threads.
    #[error("--daemonize: the process has {0} threads; it must fork with one")]
    Threads(usize),
    /// A system call of `--daemonize` failed.
    #[error("--daemonize: {call}: {errno}")]
    Daemonize {
        /// `pipe`, `fork` or `setsid`.
        call: &'static str,
        /// Its error.
        #[source]
        errno: Errno,
    },
}

/// The error of `--daemonize`'s system call `call`.
fn failed(call: &'static str) -> impl FnOnce(Errno) -> ProcessError {
    move |errno| ProcessError::Daemonize { call, errno }
}

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
    pub(crate) fn write(path: &Path) -> Result<PidFile, ProcessError> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(path)
            .map_err(ProcessError::PidFileOpen)?;
        let mut lock = Flock::lock(file, FlockArg::LockExclusiveNonblock)
            .map_err(|(_, e)| ProcessError::PidFileLock(e.into()))?;
        lock.set_len(0)
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .map_err(ProcessError::PidFileWrite)?;
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
                let _ = nix::unistd::dup2_stdin(&null);
                let _ = nix::unistd::dup2_stdout(&null);
                let _ = nix::unistd::dup2_stderr(&null);
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
pub(crate) fn daemonize() -> Result<Daemonized, ProcessError> {
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, Iterator::count);
    if threads != 1 {
        return Err(ProcessError::Threads(threads));
    }
    let (r, w): (OwnedFd, OwnedFd) = nix::unistd::pipe().map_err(failed("pipe"))?;
    // SAFETY: the process has exactly one thread (checked above), so the child
    // inherits no lock held by another thread and may run any code.
    match unsafe { nix::unistd::fork() }.map_err(failed("fork"))? {
        nix::unistd::ForkResult::Parent { .. } => {
            drop(w);
            let mut byte = [1u8; 1];
            let started = File::from(r).read(&mut byte).is_ok_and(|n| n == 1) && byte[0] == 0;
            std::process::exit(if started { 0 } else { 1 });
        }
        nix::unistd::ForkResult::Child => {
            drop(r);
            nix::unistd::setsid().map_err(failed("setsid"))?;
            Ok(Daemonized {
                ready: Some(File::from(w)),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_file_is_locked_written_and_removed_in_qemus_words() {
        let dir = std::env::temp_dir().join(format!("sd-pidfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("daemon.pid");
        let held = PidFile::write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        // flock conflicts between two opens, even in one process.
        let err = PidFile::write(&path).unwrap_err().to_string();
        assert!(
            err.starts_with("cannot create PID file: Cannot lock pid file: "),
            "{err}"
        );
        drop(held);
        assert!(!path.exists(), "the pid file is removed");
        let err = PidFile::write(&dir.join("missing/daemon.pid"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("cannot create PID file: Cannot open pid file: "),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
