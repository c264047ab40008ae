//! Our vhost-user-blk export (`vmm-bin storage-daemon`) with real frontends: a stock
//! Debian kernel under QEMU/TCG (`vhost-user-blk-pci`, 2 queues) whose own virtio_blk
//! driver writes and verifies a pattern with O_DIRECT; two guests in a row on one
//! export (reconnect); a guest killed in the middle of I/O (the export survives and
//! serves the next); a fio verify job.
//!
//! Needs the guest assets (`scripts/guest-assets`, run by `.ci/setup`) and
//! `qemu-system-x86_64`; without them each test prints a loud SKIPPED line.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn prerequisites(test: &str) -> bool {
    let assets = std::env::var("GUEST_ASSETS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root().join("target/guest-assets"));
    if !assets.join("assets.env").exists() {
        eprintln!(
            "SKIPPED {test}: no guest assets ({}); run scripts/guest-assets",
            assets.display()
        );
        return false;
    }
    let qemu = Command::new("qemu-system-x86_64").arg("--version").output();
    if !qemu.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED {test}: qemu-system-x86_64 is not installed (.ci/setup installs it)");
        return false;
    }
    true
}

fn image(name: &str, mib: u64) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let path = dir.join(name);
    let _ = std::fs::remove_file(&path);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(mib << 20).unwrap();
    path
}

/// Runs `tests/guest/run-qemu ARGS`; returns (exit ok, parsed JSON).
fn run_guest(args: &[&str]) -> (bool, serde_json::Value) {
    let out = Command::new("python3")
        .arg(root().join("tests/guest/run-qemu"))
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .expect("python3");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "run-qemu printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    (out.status.success(), json)
}

fn daemon_cmd() -> String {
    format!("{} storage-daemon", env!("CARGO_BIN_EXE_vmm-bin"))
}

/// Our daemon, started by the test, on `img` at `sock`.
struct Daemon(Child);

impl Daemon {
    fn start(img: &Path, sock: &Path, direct: bool) -> Daemon {
        let _ = std::fs::remove_file(sock);
        let cache = if direct {
            ",cache.direct=on,aio=io_uring"
        } else {
            ""
        };
        let child = Command::new(env!("CARGO_BIN_EXE_vmm-bin"))
            .arg("storage-daemon")
            .arg("--blockdev")
            .arg(format!("driver=file,node-name=file0,filename={}{cache}", img.display()))
            .args(["--blockdev", "driver=raw,node-name=disk0,file=file0"])
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={},writable=on,num-queues=2",
                sock.display()
            ))
            .spawn()
            .expect("start vmm-bin storage-daemon");
        let start = Instant::now();
        while !sock.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the export never listened"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon(child)
    }

    fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn check_pass(what: &str, ok: bool, r: &serde_json::Value) {
    assert!(
        ok,
        "{what}: {} {} (console: {}, daemon log: {})",
        r["status"], r["reason"], r["console_log"], r["daemon_log"]
    );
}

#[test]
fn linux_guest_verifies_a_pattern_through_our_export() {
    if !prerequisites("linux_guest_verifies_a_pattern_through_our_export") {
        return;
    }
    let img = image("vu-verify.img", 64);
    let cmd = daemon_cmd();
    let (ok, r) = run_guest(&[
        "--workload",
        "vda-verify",
        "--image",
        img.to_str().unwrap(),
        "--export-cmd",
        &cmd,
        "--export-direct",
        "--num-queues",
        "2",
        "-p",
        "size_mb=16",
        "-p",
        "pattern_seed=7",
    ]);
    check_pass("vda-verify", ok, &r);
    assert_eq!(
        r["markers"]["VDA_SECTORS"], "131072",
        "the guest sees the right size"
    );
    assert_eq!(
        r["host_check"]["match"], true,
        "the image holds what the guest wrote"
    );
    assert_eq!(r["daemon_alive_after_guest"], true);
}

#[test]
fn two_guests_in_a_row_and_a_guest_killed_mid_io() {
    if !prerequisites("two_guests_in_a_row_and_a_guest_killed_mid_io") {
        return;
    }
    let img = image("vu-reconnect.img", 64);
    let sock = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("vu-reconnect.sock");
    let mut daemon = Daemon::start(&img, &sock, false);
    let s = sock.to_str().unwrap();
    let i = img.to_str().unwrap();
    // First guest writes the pattern.
    let (ok, r) = run_guest(&[
        "--workload",
        "vda-verify",
        "--image",
        i,
        "--vhost-user-blk",
        s,
        "-p",
        "pattern_seed=3",
    ]);
    check_pass("first guest", ok, &r);
    assert_eq!(r["host_check"]["match"], true);
    assert!(
        daemon.alive(),
        "the export survives a frontend's disconnect"
    );
    // Second guest on the same export: reads and rewrites it.
    let (ok, r) = run_guest(&[
        "--workload",
        "vda-verify",
        "--image",
        i,
        "--vhost-user-blk",
        s,
        "-p",
        "pattern_seed=3",
    ]);
    check_pass("second guest (reconnect)", ok, &r);
    assert!(daemon.alive());
    // Third guest hammers the disk and is SIGKILLed in the middle.
    let (ok, r) = run_guest(&[
        "--workload",
        "vda-hammer",
        "--image",
        i,
        "--vhost-user-blk",
        s,
        "-p",
        "pattern_seed=3",
        "--kill-on",
        "HAMMER ops=",
        "--kill-delay",
        "1",
        "--no-host-check",
    ]);
    assert_eq!(r["status"], "KILLED", "{r}");
    assert!(ok, "{r}");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        daemon.alive(),
        "the export survives a frontend killed mid-I/O"
    );
    // A fourth guest still gets service, and the data is intact (the hammer only
    // rewrites the pattern).
    let (ok, r) = run_guest(&[
        "--workload",
        "vda-check",
        "--image",
        i,
        "--vhost-user-blk",
        s,
        "-p",
        "pattern_seed=3",
    ]);
    check_pass("guest after the kill", ok, &r);
    assert!(daemon.alive());
}

#[test]
fn fio_verify_job_through_our_export() {
    if !prerequisites("fio_verify_job_through_our_export") {
        return;
    }
    let img = image("vu-fio.img", 128);
    let cmd = daemon_cmd();
    let (ok, r) = run_guest(&[
        "--workload",
        "fio-verify",
        "--image",
        img.to_str().unwrap(),
        "--export-cmd",
        &cmd,
        "--export-direct",
        "--no-host-check",
    ]);
    if r["status"] == "ERROR"
        && r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("initramfs-fio"))
    {
        eprintln!("SKIPPED fio_verify_job_through_our_export: {}", r["reason"]);
        return;
    }
    check_pass("fio-verify", ok, &r);
}
