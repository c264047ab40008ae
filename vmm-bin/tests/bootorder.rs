//! SeaBIOS boots the disk with the lowest `bootindex`, because the VMM passes the boot
//! order to the firmware as QEMU does: the fw_cfg file `bootorder` (QEMU's device paths,
//! `/pci@i0cf8/scsi@SLOT/disk@0,0` for virtio-blk-pci,
//! `/pci@i0cf8/scsi@SLOT/channel@0/disk@TARGET,LUN` for scsi-hd, lowest index first, `HALT` with
//! `-boot strict=on`), `-boot order=`/`once=` in the CMOS boot registers, `-boot
//! menu=on` in fw_cfg's `BOOT_MENU`.
//!
//! Regression test for issue 14, item 6: `bootindex` was parsed and ignored (the
//! devices were listed in command-line order, whatever their index), and `-boot
//! order/once/menu/strict` were accepted and ignored.
//!
//! Two disks hold the boot sector `tests/bootsector/bootorder.S`, patched to print
//! "BOOTED A" or "BOOTED B"; it also prints the CMOS boot registers and the
//! `bootorder` file it reads from fw_cfg. Where `qemu-system-x86_64` is installed,
//! the same command lines run under QEMU (TCG) and must print the same.
//!
//! Skips loudly without /dev/kvm, SeaBIOS or binutils (and the QEMU comparison without
//! QEMU).

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// What the boot sector reported.
#[derive(Debug, PartialEq, Eq)]
struct Report {
    /// Which disk booted: 'A' or 'B'.
    booted: char,
    /// "3D 38": the CMOS boot registers in hex.
    cmos: String,
    /// The fw_cfg file `bootorder`, byte for byte.
    bootorder: String,
}

fn parse(serial: &str) -> Option<Report> {
    let booted = serial.split("BOOTED ").nth(1)?.chars().next()?;
    let cmos = serial.split("CMOS ").nth(1)?.get(..5)?.to_owned();
    let rest = serial.split("BOOTORDER[").nth(1)?;
    let bootorder = rest[..rest.find("]\r\n")?].to_owned();
    Some(Report {
        booted,
        cmos,
        bootorder,
    })
}

/// Runs `cmd` (whose stdout is the guest's COM1) until it exits; the report and the
/// serial output. Fails the test on a hang or an exit other than the boot sector's.
fn run(what: &str, mut cmd: Command) -> (Report, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    });
    let status = common::wait_or_kill(&mut child, Duration::from_secs(180));
    let serial = reader.join().unwrap();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(33),
        "{what}: the boot sector exits through isa-debug-exit; serial:\n{serial}"
    );
    let report = parse(&serial).unwrap_or_else(|| panic!("{what}: no report in:\n{serial}"));
    (report, serial)
}

/// The two disks, or `None` after a SKIPPED line.
fn disks(test: &str) -> Option<(PathBuf, [PathBuf; 2])> {
    if !common::kvm_or_skip(test)
        || !common::file_or_skip(
            test,
            Path::new("/usr/share/seabios/bios-256k.bin"),
            "apt-get install seabios",
        )
    {
        return None;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("bootorder-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let boot =
        common::assemble_boot_sector(&dir, "bootorder", |why| eprintln!("SKIPPED {test}: {why}"))?;
    let at = boot
        .windows(8)
        .position(|w| w == b"BOOTED ?")
        .expect("the marker")
        + 7;
    let images = [b'A', b'B'].map(|tag| {
        let mut disk = boot.clone();
        disk[at] = tag;
        disk.resize(1 << 20, 0);
        let path = dir.join(format!("disk{}.img", tag as char));
        std::fs::write(&path, disk).unwrap();
        path
    });
    Some((dir, images))
}

/// `-drive if=none` for both disks (ids a, b) followed by `extra`, with `{A}`/`{B}`
/// replaced by the images.
fn args(images: &[PathBuf; 2], extra: &[&str]) -> Vec<String> {
    let mut args = Vec::new();
    for (id, image) in ["a", "b"].iter().zip(images) {
        args.push("-drive".to_owned());
        args.push(format!(
            "file={},format=raw,if=none,id={id}",
            image.display()
        ));
    }
    args.extend(extra.iter().map(|a| {
        a.replace("{A}", &images[0].display().to_string())
            .replace("{B}", &images[1].display().to_string())
    }));
    args
}

fn vmm(args: &[String]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmm-bin"));
    cmd.args(["-nographic", "-m", "64"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .args(args);
    cmd
}

#[test]
fn seabios_boots_the_disk_with_the_lowest_bootindex() {
    let Some((dir, images)) = disks("bootindex") else {
        return;
    };
    // (device options, the disk that must boot): the index decides, not the order of
    // the -device options.
    let cases: [(&[&str], char); 3] = [
        (
            &[
                "-device",
                "virtio-blk-pci,drive=a,bootindex=2",
                "-device",
                "virtio-blk-pci,drive=b,bootindex=1",
            ],
            'B',
        ),
        (
            &[
                "-device",
                "virtio-blk-pci,drive=a,bootindex=1",
                "-device",
                "virtio-blk-pci,drive=b,bootindex=2",
            ],
            'A',
        ),
        (
            &[
                "-device",
                "virtio-blk-pci,drive=b",
                "-device",
                "virtio-blk-pci,drive=a,bootindex=7",
            ],
            'A',
        ),
    ];
    for (devices, want) in cases {
        let (report, _) = run(&format!("{devices:?}"), vmm(&args(&images, devices)));
        assert_eq!(report.booted, want, "{devices:?}: {report:?}");
    }
    // The default slots are 3 and 4: b (index 1) first.
    let (report, _) = run("paths", vmm(&args(&images, cases[0].0)));
    assert_eq!(
        report.bootorder,
        "/pci@i0cf8/scsi@4/disk@0,0\n/pci@i0cf8/scsi@3/disk@0,0\0"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bootindex` on `-device ide-hd` puts the IDE device path in `bootorder`
/// (`/pci@i0cf8/ide@1,1/drive@CHANNEL/disk@UNIT`, QEMU's) and SeaBIOS honours it against
/// a virtio-blk disk, either way round.
#[test]
fn seabios_honours_the_bootindex_of_an_ide_disk() {
    let Some((dir, images)) = disks("ide_bootindex") else {
        return;
    };
    let cases: [(&[&str], char, &str); 2] = [
        (
            &[
                "-device",
                "virtio-blk-pci,drive=b,bootindex=2",
                "-device",
                "ide-hd,drive=a,bus=ide.1,unit=1,bootindex=1",
            ],
            'A',
            "/pci@i0cf8/ide@1,1/drive@1/disk@1\n/pci@i0cf8/scsi@3/disk@0,0\0",
        ),
        (
            &[
                "-device",
                "virtio-blk-pci,drive=b,bootindex=1",
                "-device",
                "ide-hd,drive=a,bootindex=2",
            ],
            'B',
            "/pci@i0cf8/scsi@3/disk@0,0\n/pci@i0cf8/ide@1,1/drive@1/disk@0\0",
        ),
    ];
    for (devices, want, order) in cases {
        let (report, _) = run(&format!("{devices:?}"), vmm(&args(&images, devices)));
        assert_eq!(report.booted, want, "{devices:?}: {report:?}");
        assert_eq!(report.bootorder, order, "{devices:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn boot_menu_is_offered_only_with_menu_on() {
    let Some((dir, images)) = disks("boot_menu") else {
        return;
    };
    let devices = [
        "-device",
        "virtio-blk-pci,drive=a",
        "-device",
        "virtio-blk-pci,drive=b",
    ];
    let (_, plain) = run("no menu", vmm(&args(&images, &devices)));
    assert!(!plain.contains("Press ESC for boot menu"), "{plain}");
    let mut with_menu = devices.to_vec();
    with_menu.extend(["-boot", "menu=on,splash-time=100"]);
    let (report, serial) = run("menu=on", vmm(&args(&images, &with_menu)));
    assert!(serial.contains("Press ESC for boot menu"), "{serial}");
    assert_eq!(report.booted, 'A');
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_firmware_is_told_what_qemu_tells_it() {
    let Some((dir, images)) = disks("boot_vs_qemu") else {
        return;
    };
    let qemu_ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !qemu_ok {
        eprintln!("SKIPPED boot_vs_qemu: qemu-system-x86_64 is not installed");
        return;
    }
    // Explicit slots: QEMU's and ours number the others differently.
    let cases: [&[&str]; 5] = [
        // ide-hd on the secondary slave: QEMU's device path for an IDE disk.
        &[
            "-device",
            "ide-hd,drive=a,bus=ide.1,unit=1,bootindex=1",
            "-device",
            "virtio-blk-pci,drive=b,bootindex=2,addr=0x6",
        ],
        // scsi-hd on virtio-scsi-pci: QEMU's device path for a SCSI disk.
        &[
            "-device",
            "virtio-scsi-pci,id=s0,addr=0x4",
            "-device",
            "scsi-hd,drive=a,bus=s0.0,scsi-id=1,bootindex=1",
            "-device",
            "virtio-blk-pci,drive=b,bootindex=2,addr=0x6",
        ],
        &[
            "-device",
            "virtio-blk-pci,drive=a,bootindex=5,addr=0x5",
            "-device",
            "virtio-blk-pci,drive=b,bootindex=3,addr=0x7",
            "-boot",
            "strict=on",
        ],
        &[
            "-device",
            "virtio-blk-pci,drive=a,addr=0x5",
            "-device",
            "virtio-blk-pci,drive=b,addr=0x6",
            "-boot",
            "order=dn,once=c",
        ],
        &[
            "-device",
            "virtio-blk-pci,drive=a,bootindex=1,addr=0x5",
            "-device",
            "virtio-blk-pci,drive=b,addr=0x6",
            "-boot",
            "ndc",
        ],
    ];
    for case in cases {
        let args = args(&images, case);
        let (ours, _) = run(&format!("vmm-bin {case:?}"), vmm(&args));
        let mut qemu = Command::new("qemu-system-x86_64");
        qemu.args(["-machine", "pc,accel=tcg", "-m", "64", "-nodefaults"])
            .args(["-display", "none", "-serial", "stdio"])
            .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
            .args(&args);
        let (theirs, _) = run(&format!("qemu {case:?}"), qemu);
        assert_eq!(ours, theirs, "{case:?}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
