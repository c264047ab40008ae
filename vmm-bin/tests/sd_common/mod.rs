//! Shared by the storage daemon's QMP tests: a daemon started with nothing but a QMP
//! monitor (and a pid file), and the `qemu.qmp` Python scripts that drive it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Whether the `qemu.qmp` Python package is there (tests skip loudly without it).
pub(crate) fn has_qemu_qmp() -> bool {
    Command::new("python3")
        .args(["-c", "import qemu.qmp"])
        .status()
        .is_ok_and(|s| s.success())
}

/// The guest assets' directory (GUEST_ASSETS_DIR or target/guest-assets).
pub(crate) fn guest_assets() -> PathBuf {
    std::env::var("GUEST_ASSETS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/guest-assets"))
}

/// Whether a test that boots Linux under QEMU through the daemon can run: guest
/// assets (and `workload`'s case in their `/init`, when named: assets built before it
/// was added would fail the guest), `qemu-system-x86_64`, io_uring, and `qemu.qmp` if
/// `qemu_qmp`. Prints a loud SKIPPED line naming what is missing.
pub(crate) fn guest_prerequisites(test: &str, workload: Option<&str>, qemu_qmp: bool) -> bool {
    let assets = guest_assets();
    let why = if !assets.join("assets.env").exists() {
        format!(
            "no guest assets ({}); run scripts/guest-assets",
            assets.display()
        )
    } else if let Some(w) = workload.filter(|w| !initramfs_knows(&assets, w)) {
        format!(
            "the guest assets in {} predate the {w} workload; run scripts/guest-assets",
            assets.display()
        )
    } else if !Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        "qemu-system-x86_64 is not installed".into()
    } else if qemu_qmp && !has_qemu_qmp() {
        "the qemu.qmp Python package is not installed".into()
    } else if io_uring::IoUring::new(2).is_err() {
        "io_uring is not available".into()
    } else {
        return true;
    };
    eprintln!("SKIPPED {test}: {why}");
    false
}

/// Whether the initramfs's `/init` has a case for `workload`.
fn initramfs_knows(assets: &Path, workload: &str) -> bool {
    let Ok(out) = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "gzip -dc '{}' | cpio -i --to-stdout init 2>/dev/null",
            assets.join("initramfs.cpio.gz").display()
        ))
        .output()
    else {
        return false;
    };
    String::from_utf8_lossy(&out.stdout).contains(&format!("{workload})"))
}

/// `vmm-bin storage-daemon --chardev socket,id=m0,path=DIR/qmp.sock,server=on,wait=off
/// --monitor chardev=m0 --pidfile DIR/sd.pid`, killed if the test ends before it
/// quits.
pub(crate) struct Daemon {
    pub(crate) child: Child,
    pub(crate) qmp: PathBuf,
    pub(crate) pidfile: PathBuf,
}

impl Daemon {
    /// Starts the daemon in `dir` and waits until its monitor accepts connections.
    pub(crate) fn start(dir: &Path) -> Daemon {
        let qmp = dir.join("qmp.sock");
        let pidfile = dir.join("sd.pid");
        let child = Command::new(env!("CARGO_BIN_EXE_vmm-bin"))
            .arg("storage-daemon")
            .arg("--chardev")
            .arg(format!(
                "socket,id=m0,path={},server=on,wait=off",
                qmp.display()
            ))
            .args(["--monitor", "chardev=m0"])
            .arg("--pidfile")
            .arg(&pidfile)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let daemon = Daemon {
            child,
            qmp,
            pidfile,
        };
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(&daemon.qmp).is_err() {
            assert!(start.elapsed() < Duration::from_secs(20), "no QMP socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon
    }

    /// Runs `tests/qmp/SCRIPT QMP_SOCKET ARGS...` (at most `limit_s` seconds); returns
    /// its stdout, asserting it succeeded and printed `ok_line`.
    pub(crate) fn script(
        &self,
        script: &str,
        args: &[&Path],
        limit_s: u32,
        ok_line: &str,
    ) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/qmp")
            .join(script);
        let out = Command::new("timeout")
            .arg(limit_s.to_string())
            .arg("python3")
            .arg(&path)
            .arg(&self.qmp)
            .args(args)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stdout.contains(ok_line),
            "{script}:\n{stdout}\n{stderr}"
        );
        stdout
    }

    /// Waits (at most 20 s) for the daemon to exit; its exit code.
    pub(crate) fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A fresh directory under the test target dir, and a raw image of `mib` MiB in it.
pub(crate) fn scratch(name: &str, mib: u64) -> (PathBuf, PathBuf) {
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    (dir, image)
}
