//! SeaBIOS boots our own boot sector (`tests/bootsector/disktest.S`) from a virtio-blk
//! disk, attached both ways QEMU offers (`-drive if=virtio`, and `-drive if=none` +
//! `-device virtio-blk-pci`), and from an IDE disk (`-hda`, `-drive if=ide`): the program reads 1 MiB through INT 13h extended reads,
//! checks the pattern, writes a sector and reads it back, prints PASS on COM1 and exits
//! through isa-debug-exit (status 33 for PASS); the host checks the written sector.
//!
//! Skips loudly without `/dev/kvm`, SeaBIOS, or binutils (`as`, `ld`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn skip(why: &str) {
    eprintln!("SKIPPED boot_disk: {why}");
}

/// Boots the disk test with the disk attached by `disk_args` (`{}` = the image path).
fn boot_disk_test(name: &str, disk_args: &[&str]) {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return skip("/dev/kvm is not available");
    }
    if !Path::new("/usr/share/seabios/bios-256k.bin").exists() {
        return skip("/usr/share/seabios/bios-256k.bin is missing (apt-get install seabios)");
    }
    let dir: PathBuf =
        std::env::temp_dir().join(format!("vmm-bin-boot-disk-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(boot) = common::assemble_boot_sector(&dir, "disktest", skip) else {
        return;
    };
    let image = dir.join("disk.img");
    std::fs::write(&image, common::disk_image(&boot)).unwrap();
    let image_path = image.display().to_string();
    let disk: Vec<String> = disk_args
        .iter()
        .map(|a| a.replace("{}", &image_path))
        .collect();
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm-bin"))
        .args(["-nographic", "-m", "128", "-no-reboot"])
        .args(&disk)
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::wait_or_kill(&mut child, Duration::from_secs(120));
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let written = std::fs::read(&image).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        stdout.contains("PASS"),
        "{name}: serial:\n{stdout}\nstderr:\n{stderr}"
    );
    assert_eq!(status.and_then(|s| s.code()), Some(33), "{name}: {stderr}");
    // The host checks the sector the guest wrote through INT 13h AH=43h.
    if let Err(e) = common::disktest_sector_written(&written) {
        panic!("{name}: {e}");
    }
}

#[test]
fn seabios_boots_our_boot_sector_from_virtio_blk_pci() {
    boot_disk_test(
        "device",
        &[
            "-drive",
            "file={},format=raw,if=none,id=d0",
            "-device",
            "virtio-blk-pci,drive=d0,bootindex=1",
        ],
    );
}

#[test]
fn seabios_boots_our_boot_sector_from_drive_if_virtio() {
    boot_disk_test("if-virtio", &["-drive", "file={},format=raw,if=virtio"]);
}

/// `-blockdev` as libvirt writes it (a `file` node, a `raw` node over it), and
/// `drive=` naming the node (issue 16's "written once" block nodes).
#[test]
fn seabios_boots_our_boot_sector_from_a_blockdev_node() {
    boot_disk_test(
        "blockdev",
        &[
            "-blockdev",
            "driver=file,node-name=file0,filename={},cache.direct=off,aio=io_uring",
            "-blockdev",
            "driver=raw,node-name=disk0,file=file0,discard=unmap",
            "-device",
            "virtio-blk-pci,drive=disk0,bootindex=1",
        ],
    );
}

/// The same in libvirt's JSON form, with the file node inline.
#[test]
fn seabios_boots_our_boot_sector_from_a_json_blockdev() {
    boot_disk_test(
        "blockdev-json",
        &[
            "-blockdev",
            r#"{"driver":"raw","node-name":"disk0","file":{"driver":"file","filename":"{}"}}"#,
            "-device",
            "virtio-blk-pci,drive=disk0,bootindex=1",
        ],
    );
}

/// IDE (issue 18): SeaBIOS finds the disk on the PIIX3 IDE function at 00:01.1 and
/// drives it by PIO (`-hda`: the default interface, index 0).
#[test]
fn seabios_boots_our_boot_sector_from_hda() {
    boot_disk_test("hda", &["-hda", "{}"]);
}

/// A plain `-drive file=..` is an IDE disk, as in QEMU (if=ide is the default).
#[test]
fn seabios_boots_our_boot_sector_from_a_plain_drive() {
    boot_disk_test("plain-drive", &["-drive", "file={},format=raw"]);
}

/// `-drive if=ide` on the secondary channel's slave (index 3), booted through `-boot
/// order=c` (the first hard disk, whatever its place).
#[test]
fn seabios_boots_our_boot_sector_from_drive_if_ide() {
    boot_disk_test(
        "if-ide",
        &[
            "-drive",
            "file={},format=raw,if=ide,index=3,media=disk",
            "-boot",
            "order=c",
        ],
    );
}

/// `-drive if=none` + `-device ide-hd` on the secondary master, through the registry.
#[test]
fn seabios_boots_our_boot_sector_from_device_ide_hd() {
    boot_disk_test(
        "device-ide-hd",
        &[
            "-drive",
            "file={},format=raw,if=none,id=d0",
            "-device",
            "ide-hd,drive=d0,bus=ide.1,unit=0",
        ],
    );
}

#[test]
fn the_disk_pattern_is_what_the_boot_sector_checks() {
    let disk = common::disk_image(&[0u8; 512]);
    let dword = |sector: usize, i: usize| {
        let at = sector * 512 + i * 4;
        u32::from_le_bytes(disk[at..at + 4].try_into().unwrap())
    };
    assert_eq!(dword(1, 0), 0x1_0000);
    assert_eq!(dword(2048, 127), 2048 << 16 | 127);
    assert_eq!(disk.len(), 4097 * 512);
}

/// scsi-hd on virtio-scsi-pci, the controller served by the default iothread (the
/// stand-in for QEMU's main loop: no `iothread=`); SeaBIOS's virtio-scsi driver boots
/// it and INT 13h reads and writes go through it (issue 16).
#[test]
fn seabios_boots_our_boot_sector_from_scsi_hd_on_virtio_scsi() {
    boot_disk_test(
        "scsi",
        &[
            "-drive",
            "file={},format=raw,if=none,id=d0",
            "-device",
            "virtio-scsi-pci,id=scsi0",
            "-device",
            "scsi-hd,drive=d0,bus=scsi0.0,scsi-id=0,lun=0,bootindex=1",
        ],
    );
}

/// The same with the controller in an iothread of its own and the disk on a
/// `-blockdev` node at target 2.
#[test]
fn seabios_boots_our_boot_sector_from_scsi_hd_in_an_iothread() {
    boot_disk_test(
        "scsi-iothread",
        &[
            "-object",
            "iothread,id=io0",
            "-blockdev",
            "driver=file,node-name=disk0,filename={}",
            "-device",
            "virtio-scsi-pci,id=scsi0,iothread=io0,num_queues=2",
            "-device",
            "scsi-hd,drive=disk0,bus=scsi0.0,scsi-id=2,serial=SCSI0,bootindex=1",
        ],
    );
}
