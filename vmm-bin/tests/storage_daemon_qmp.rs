//! The storage daemon's QMP monitor (`--chardev socket,...` + `--monitor`), driven by
//! the real `qemu.qmp` Python client: a daemon started with no node and no export is
//! built up (blockdev-add, block-export-add), checked (queries, qemu-storage-daemon's
//! errors), torn down (block-export-del with BLOCK_EXPORT_DELETED, blockdev-del) and
//! ended with `quit`: exit status 0, pid file and sockets removed.
//!
//! Skips loudly without io_uring or the qemu.qmp package.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn skip(why: &str) {
    eprintln!("SKIPPED storage_daemon_qmp: {why}");
}

fn has_qemu_qmp() -> bool {
    Command::new("python3")
        .args(["-c", "import qemu.qmp"])
        .status()
        .is_ok_and(|s| s.success())
}

/// Kills the daemon if the test fails before it quits.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn wait_for_socket(sock: &Path) {
    let start = Instant::now();
    while std::os::unix::net::UnixStream::connect(sock).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "no QMP socket");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn qemu_qmp_client_builds_and_tears_down_exports() {
    if !has_qemu_qmp() {
        return skip("the qemu.qmp Python package is not installed (pip install qemu.qmp)");
    }
    if io_uring::IoUring::new(2).is_err() {
        return skip("io_uring is not available");
    }
    let dir: PathBuf =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("sd-qmp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let sock = dir.join("qmp.sock");
    let export = dir.join("e0.sock");
    let pidfile = dir.join("sd.pid");
    let daemon = Command::new(env!("CARGO_BIN_EXE_vmm-bin"))
        .arg("storage-daemon")
        .arg("--chardev")
        .arg(format!(
            "socket,id=m0,path={},server=on,wait=off",
            sock.display()
        ))
        .args(["--monitor", "chardev=m0"])
        .arg("--pidfile")
        .arg(&pidfile)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut daemon = KillOnDrop(daemon);
    wait_for_socket(&sock);
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    assert_eq!(
        pid.trim(),
        daemon.0.id().to_string(),
        "the pid file holds the pid"
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/qmp/storage_daemon.py");
    let out = Command::new("timeout")
        .arg("120")
        .arg("python3")
        .arg(&script)
        .arg(&sock)
        .arg(&image)
        .arg(&export)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains("STORAGE DAEMON QMP OK"),
        "script:\n{stdout}\n{stderr}"
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = daemon.0.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "quit: exit status 0"
    );
    assert!(!sock.exists(), "the QMP socket is removed");
    assert!(!export.exists(), "the export's socket is removed");
    assert!(!pidfile.exists(), "the pid file is removed");
    let _ = std::fs::remove_dir_all(&dir);
}
