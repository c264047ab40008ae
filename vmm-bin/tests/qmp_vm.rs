//! QMP against the real VMM, driven by the real `qemu.qmp` Python client: negotiate,
//! query-status, stop (the vCPUs really stop: the guest's serial output pauses), cont,
//! query-block, query-iothreads, system_reset (the firmware starts again), quit. The
//! guest is our ticker boot sector on a virtio-blk disk under SeaBIOS.
//!
//! Skips loudly without /dev/kvm, SeaBIOS, binutils, or the qemu.qmp package.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn skip(why: &str) {
    eprintln!("SKIPPED qmp_vm: {why}");
}

#[test]
fn qemu_qmp_client_drives_the_vm() {
    if std::fs::File::open("/dev/kvm").is_err() {
        return skip("/dev/kvm is not available");
    }
    if !Path::new("/usr/share/seabios/bios-256k.bin").exists() {
        return skip("SeaBIOS is missing (apt-get install seabios)");
    }
    let has_qmp = Command::new("python3")
        .args(["-c", "import qemu.qmp"])
        .status()
        .is_ok_and(|s| s.success());
    if !has_qmp {
        return skip("the qemu.qmp Python package is not installed (pip install qemu.qmp)");
    }
    let dir: PathBuf =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("qmp-vm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(boot) = common::assemble_boot_sector(&dir, "ticker", skip) else {
        return;
    };
    let image = dir.join("ticker.img");
    let mut disk = boot;
    disk.resize(1 << 20, 0);
    std::fs::write(&image, disk).unwrap();
    let sock = dir.join("qmp.sock");
    let log = dir.join("serial.log");
    let vm = Command::new(env!("CARGO_BIN_EXE_vmm-bin"))
        .args(["-nographic", "-m", "128"])
        .args(["-object", "iothread,id=io0,poll-max-ns=12345"])
        .arg("-drive")
        .arg(format!(
            "file={},format=raw,if=none,id=d0,cache=none",
            image.display()
        ))
        .args([
            "-device",
            "virtio-blk-pci,drive=d0,iothread=io0,bootindex=1",
        ])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut vm = KillOnDrop(vm);
    let start = Instant::now();
    // The socket file appears at bind; it is made 0600 before it listens, so check the
    // mode once a connection succeeds.
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(start.elapsed() < Duration::from_secs(10), "no QMP socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&sock).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600, "the QMP socket is private");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/qmp/vm_pause.py");
    let out = Command::new("timeout")
        .arg("180")
        .arg("python3")
        .arg(&script)
        .arg(&sock)
        .arg(&log)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = vm.0.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = vm.0.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let serial = String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && stdout.contains("VM PAUSE OK"),
        "script:\n{stdout}\n{stderr}\nserial tail:\n{}",
        &serial[serial.len().saturating_sub(400)..]
    );
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "quit ends the VMM with status 0"
    );
    assert!(!sock.exists(), "the socket file is removed on quit");
}

/// Kills the VMM if the test fails before it quits.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
