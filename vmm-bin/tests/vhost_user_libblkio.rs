//! libblkio as the frontend of our vhost-user-blk export: its virtio-blk-vhost-user
//! driver negotiates REPLY_ACK, CONFIG and CONFIGURE_MEM_SLOTS, registers its buffers
//! only with ADD_MEM_REG after start, and removes them with REM_MEM_REG carrying the
//! region's fd. `benches/vhost-user-load --verify` writes a pattern with FUA, flushes,
//! reads it back and compares; the host then checks the image; a second client on the
//! same export (reconnect) verifies again.
//!
//! The tool is built on demand (a standalone package, libblkio from crates.io); the test
//! skips loudly if that build fails.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The same pattern as the tool's `verify_byte`.
fn verify_byte(offset: u64) -> u8 {
    let x = (offset / 8).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ 0x5a5a;
    (x >> ((offset % 8) * 8)) as u8
}

#[test]
fn libblkio_frontend_writes_and_verifies_through_our_export() {
    let target = root().join("target/vhost-user-load");
    let built = Command::new("cargo")
        .args(["build", "--release", "--quiet", "--manifest-path"])
        .arg(root().join("benches/vhost-user-load/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .status();
    if !built.is_ok_and(|s| s.success()) {
        eprintln!(
            "SKIPPED libblkio frontend test: benches/vhost-user-load (libblkio) did not build"
        );
        return;
    }
    let tool = target.join("release/vhost-user-load");
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("libblkio-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("disk.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(32 << 20)
        .unwrap();
    let sock = dir.join("vhost.sock");
    let mut daemon = Command::new(env!("CARGO_BIN_EXE_vmm-bin"))
        .arg("storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=file0,filename={},cache.direct=on,aio=io_uring",
            img.display()
        ))
        .args(["--blockdev", "driver=raw,node-name=disk0,file=file0"])
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={},writable=on",
            sock.display()
        ))
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !sock.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the export never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for round in 0..2 {
        let out = Command::new("timeout")
            .arg("120")
            .arg(&tool)
            .args(["--driver", "virtio-blk-vhost-user", "--path"])
            .arg(&sock)
            .args(["--verify", "8"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("VERIFY OK bytes=8388608"),
            "round {round}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            daemon.try_wait().unwrap().is_none(),
            "the export survives the client"
        );
    }
    let data = std::fs::read(&img).unwrap();
    for off in (0..8u64 << 20).step_by(4093) {
        assert_eq!(data[off as usize], verify_byte(off), "image byte {off}");
    }
    // SIGTERM: the daemon removes its socket and exits 0.
    // SAFETY: kill(2) on our own child's pid.
    unsafe { libc::kill(daemon.id() as i32, libc::SIGTERM) };
    let status = daemon.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(!sock.exists());
    let _ = std::fs::remove_dir_all(&dir);
}
