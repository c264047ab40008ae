//! SeaBIOS under QEMU TCG boots a boot sector through the vhost-user-scsi export
//! (`-device vhost-user-scsi-pci,bootindex=1`): SeaBIOS's own virtio-scsi driver reads
//! 1 MiB through INT 13h and writes a sector; PASS on COM1, exit through
//! isa-debug-exit; the host checks the sector in the image.
//!
//! Skips loudly without qemu-system-x86_64, binutils or io_uring.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::vhost_frontend::{Export, socket_path};

fn skip(why: &str) {
    eprintln!("SKIPPED seabios_boots_through_the_scsi_export: {why}");
}

#[test]
fn seabios_boots_through_the_scsi_export() {
    if !Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        return skip("qemu-system-x86_64 is not installed");
    }
    if io_uring::IoUring::new(2).is_err() {
        return skip("io_uring is not available");
    }
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("vu-scsi-seabios-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(boot) = common::assemble_boot_sector(&dir, "disktest", skip) else {
        return;
    };
    // disktest.S's layout: sector N (from 1) holds dwords N * 0x10000 + index.
    let mut disk = boot;
    disk.resize(8 << 20, 0);
    for n in 1..=2048usize {
        for i in 0..128usize {
            let v = ((n as u32) << 16) | i as u32;
            disk[n * 512 + 4 * i..n * 512 + 4 * i + 4].copy_from_slice(&v.to_le_bytes());
        }
    }
    let image = dir.join("boot.img");
    std::fs::write(&image, &disk).unwrap();
    let sock = socket_path("vu-scsi-seabios.sock");
    let blockdev = format!("driver=file,node-name=f0,filename={}", image.display());
    let export = format!(
        "type=vhost-user-scsi,id=s0,node-name=f0,addr.type=unix,addr.path={},writable=on",
        sock.display()
    );
    let mut export = Export::start_args(&["--blockdev", &blockdev, "--export", &export], &sock);
    let mut qemu = Command::new("qemu-system-x86_64")
        .args(["-nodefaults", "-machine", "pc,accel=tcg", "-m", "128"])
        .args(["-display", "none", "-serial", "stdio", "-no-reboot"])
        .args(["-object", "memory-backend-memfd,id=mem,size=128M,share=on"])
        .args(["-numa", "node,memdev=mem"])
        .arg("-chardev")
        .arg(format!("socket,id=vus,path={}", sock.display()))
        .args(["-device", "vhost-user-scsi-pci,chardev=vus,bootindex=1"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::wait_or_kill(&mut qemu, Duration::from_secs(240));
    let out = qemu.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("PASS"),
        "serial:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(33), "{stderr}");
    // LBA 4096 holds a copy of sector 1985 (the first of the last batch read).
    let written = std::fs::read(&image).unwrap();
    let lba = 4096 * 512;
    for i in 0..128usize {
        let dword = u32::from_le_bytes(written[lba + 4 * i..lba + 4 * i + 4].try_into().unwrap());
        assert_eq!(
            dword,
            (1985 << 16) | i as u32,
            "dword {i} of the written sector"
        );
    }
    assert!(export.alive(), "the daemon serves on");
    let _ = std::fs::remove_dir_all(&dir);
}
