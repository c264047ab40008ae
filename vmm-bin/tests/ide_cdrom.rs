//! ide-cd in the VMM (issue 18): SeaBIOS boots an El Torito ISO (built here with
//! Debian's `xorriso`) from `-cdrom` with `-boot d`; the boot image reads the ISO's
//! volume descriptor through INT 13h and exits through isa-debug-exit. And the monitor's
//! medium commands (`eject`, `blockdev-change-medium`, `query-block`) with the replies,
//! errors and `DEVICE_TRAY_MOVED` events QEMU 10's `-M pc` gives for the same steps.
//!
//! Skips loudly without /dev/kvm, SeaBIOS, binutils or xorriso.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::qmp::Qmp;

use serde_json::{Value, json};

fn skip(why: &str) {
    eprintln!("SKIPPED ide_cdrom: {why}");
}

/// A scratch directory for `name`.
fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ide-cdrom-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Builds `dir/cd.iso`: an ISO 9660 image whose El Torito no-emulation boot image is
/// `tests/bootsector/cdtest.S`. Returns it and the boot sector; `None` after a skip.
fn boot_iso(dir: &Path) -> Option<(PathBuf, Vec<u8>)> {
    let boot = common::assemble_boot_sector(dir, "cdtest", skip)?;
    let tree = dir.join("tree");
    std::fs::create_dir_all(&tree).unwrap();
    std::fs::write(tree.join("boot.bin"), &boot).unwrap();
    std::fs::write(tree.join("README.TXT"), b"vmm-bin ide-cd test\n").unwrap();
    let iso = dir.join("cd.iso");
    let made = Command::new("xorriso")
        .args(["-as", "mkisofs", "-quiet", "-R", "-b", "boot.bin"])
        .args(["-no-emul-boot", "-boot-load-size", "4", "-o"])
        .arg(&iso)
        .arg(&tree)
        .status();
    match made {
        Ok(s) if s.success() => Some((iso, boot)),
        Ok(s) => panic!("xorriso failed: {s}"),
        Err(e) => {
            skip(&format!(
                "cannot run xorriso (apt-get install xorriso): {e}"
            ));
            None
        }
    }
}

/// Writes `boot` as the first sector of a 1 MiB disk image at `path`.
fn boot_disk(path: &Path, boot: Vec<u8>) {
    let mut image = boot;
    image.resize(1 << 20, 0);
    std::fs::write(path, image).unwrap();
}

/// Starts the VMM with `disk` as `-hda`, `cd` as `-cdrom`, and `extra`.
fn start_vm(disk: &Path, cd: &Path, extra: &[&str]) -> common::Vm {
    let (disk, cd) = (disk.display().to_string(), cd.display().to_string());
    let mut args = vec!["-nographic", "-m", "64", "-hda", &disk, "-cdrom", &cd];
    args.extend_from_slice(extra);
    common::Vm::start(&args)
}

/// Boots with `-boot d` from the ISO attached by `cd_args` (`{iso}`: its path), the
/// first hard disk holding the same program: it finds no volume descriptor on the disk
/// and fails, so PASS proves both the order and the ATAPI reads.
fn cd_boot_test(name: &str, cd_args: &[&str]) {
    if !common::seabios_vm_or_skip(name) {
        return;
    }
    let dir = scratch(name);
    let Some((iso, boot)) = boot_iso(&dir) else {
        return;
    };
    let disk = dir.join("disk.img");
    boot_disk(&disk, boot);
    let (disk, iso) = (disk.display().to_string(), iso.display().to_string());
    let cd: Vec<String> = cd_args.iter().map(|a| a.replace("{iso}", &iso)).collect();
    let mut args = vec!["-nographic", "-m", "64", "-no-reboot", "-hda", &disk];
    args.extend(cd.iter().map(String::as_str));
    args.extend(["-boot", "d"]);
    args.extend(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"]);
    let mut vm = common::Vm::start(&args);
    let status = vm.wait_exit(Duration::from_secs(120));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(vm.seen.contains("CD PASS"), "{name}: serial:\n{}", vm.seen);
    assert_eq!(status.and_then(|s| s.code()), Some(33), "{}", vm.stderr());
}

#[test]
fn seabios_boots_an_el_torito_iso_from_ide_cd() {
    cd_boot_test("ide_cdrom", &["-cdrom", "{iso}"]);
}

/// `-drive if=none` + `-device ide-cd` (the registry's path) boots as `-cdrom` does.
#[test]
fn seabios_boots_an_el_torito_iso_from_device_ide_cd() {
    cd_boot_test(
        "ide_cdrom_device",
        &[
            "-drive",
            "file={iso},format=raw,if=none,id=cd0,readonly=on",
            "-device",
            "ide-cd,drive=cd0,bus=ide.0,unit=1,id=cd",
        ],
    );
}

fn error(reply: &Value) -> (String, String) {
    let e = &reply["error"];
    assert!(e.is_object(), "expected an error: {reply}");
    (
        e["class"].as_str().unwrap().to_owned(),
        e["desc"].as_str().unwrap().to_owned(),
    )
}

fn generic(desc: &str) -> (String, String) {
    ("GenericError".to_owned(), desc.to_owned())
}

/// The same steps as under `qemu-system-x86_64 -M pc -S -hda d.img -cdrom cd.iso
/// -drive if=ide,media=cdrom,index=3`, with QEMU 10's replies.
#[test]
fn eject_and_change_medium_behave_as_qemus() {
    if !common::seabios_vm_or_skip("ide_cdrom_qmp") {
        return;
    }
    let dir = scratch("qmp");
    let (disk, cd, cd2) = (dir.join("d.img"), dir.join("cd.iso"), dir.join("cd2.iso"));
    for (path, len) in [(&disk, 10 << 20), (&cd, 1 << 20), (&cd2, 2 << 20)] {
        std::fs::File::create(path).unwrap().set_len(len).unwrap();
    }
    let sock = dir.join("qmp.sock");
    let qmp_arg = format!("unix:{},server=on,wait=off", sock.display());
    let _vm = start_vm(
        &disk,
        &cd,
        &[
            "-S",
            "-drive",
            "if=ide,media=cdrom,index=3",
            "-qmp",
            &qmp_arg,
        ],
    );
    let mut q = Qmp::connect(&sock);

    let hd = q.block("ide0-hd0");
    assert_eq!(hd["removable"], false);
    assert_eq!(hd["locked"], false);
    assert!(hd.get("tray_open").is_none(), "{hd}");
    assert_eq!(hd["qdev"], "/machine/unattached/device[4]");
    assert_eq!(hd["inserted"]["ro"], false);
    let cd0 = q.block("ide1-cd0");
    assert_eq!(
        (&cd0["removable"], &cd0["locked"], &cd0["tray_open"]),
        (&json!(true), &json!(false), &json!(false))
    );
    assert_eq!(cd0["inserted"]["ro"], true);
    assert_eq!(cd0["inserted"]["image"]["virtual-size"], 1 << 20);
    let cd1 = q.block("ide1-cd1");
    assert!(cd1.get("inserted").is_none(), "empty drive: {cd1}");
    assert_eq!(
        (&cd1["removable"], &cd1["tray_open"]),
        (&json!(true), &json!(false))
    );

    let eject = |q: &mut Qmp, args: Value| q.run("eject", args);
    assert_eq!(
        error(&eject(&mut q, json!({"device": "ide0-hd0"}))),
        generic("Device 'ide0-hd0' is not removable")
    );
    for args in [json!({"device": "nope"}), json!({"id": "nope"})] {
        assert_eq!(
            error(&eject(&mut q, args)),
            ("DeviceNotFound".into(), "Device 'nope' not found".into())
        );
    }
    assert_eq!(
        error(&eject(&mut q, json!({}))),
        generic("Need exactly one of 'device' and 'id'")
    );
    assert_eq!(
        eject(&mut q, json!({"device": "ide1-cd0"})),
        json!({"return": {}})
    );
    assert_eq!(q.trays(), [("ide1-cd0".to_owned(), true)]);
    let cd0 = q.block("ide1-cd0");
    assert!(cd0.get("inserted").is_none(), "ejected: {cd0}");
    assert_eq!(cd0["tray_open"], true);
    // Again: nothing to do, no event.
    assert_eq!(
        eject(&mut q, json!({"device": "ide1-cd0"})),
        json!({"return": {}})
    );
    assert_eq!(q.trays(), []);

    let change = |q: &mut Qmp, device: &str, file: &Path, format: Option<&str>| {
        let mut args = json!({"device": device, "filename": file.display().to_string()});
        if let Some(f) = format {
            args["format"] = json!(f);
        }
        q.run("blockdev-change-medium", args)
    };
    let ok = json!({"return": {}});
    assert_eq!(change(&mut q, "ide1-cd0", &cd2, Some("raw")), ok);
    assert_eq!(q.trays(), [("ide1-cd0".to_owned(), false)]);
    let cd0 = q.block("ide1-cd0");
    assert_eq!(cd0["tray_open"], false);
    assert_eq!(cd0["inserted"]["image"]["virtual-size"], 2 << 20);
    assert_eq!(cd0["inserted"]["file"], cd2.display().to_string());
    assert_eq!(
        error(&change(&mut q, "ide0-hd0", &cd2, Some("raw"))),
        generic("Device 'ide0-hd0' is not removable")
    );
    let missing = dir.join("nonexist.iso");
    assert_eq!(
        error(&change(&mut q, "ide1-cd0", &missing, Some("raw"))),
        generic(&format!(
            "Could not open '{}': No such file or directory",
            missing.display()
        ))
    );
    // A file that opens but is no image (a directory): refused, the disc stays in.
    let (_, desc) = error(&change(&mut q, "ide1-cd0", &dir, Some("raw")));
    assert!(desc.starts_with("Could not open"), "{desc}");
    assert_eq!(q.trays(), []);
    let cd0 = q.block("ide1-cd0");
    assert_eq!(cd0["inserted"]["file"], cd2.display().to_string(), "{cd0}");
    // A closed tray opens and closes again; the empty drive takes a disc.
    assert_eq!(change(&mut q, "ide1-cd0", &cd2, None), ok);
    assert_eq!(
        q.trays(),
        [
            ("ide1-cd0".to_owned(), true),
            ("ide1-cd0".to_owned(), false)
        ]
    );
    assert_eq!(change(&mut q, "ide1-cd1", &cd2, Some("raw")), ok);
    assert_eq!(
        q.trays(),
        [
            ("ide1-cd1".to_owned(), true),
            ("ide1-cd1".to_owned(), false)
        ]
    );
    assert_eq!(q.block("ide1-cd1")["inserted"]["ro"], true);
    assert_eq!(
        eject(&mut q, json!({"device": "ide1-cd0", "force": true})),
        ok
    );
    assert_eq!(q.trays(), [("ide1-cd0".to_owned(), true)]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The guest locks the tray (`tests/bootsector/locktest.S` sends PREVENT ALLOW MEDIUM
/// REMOVAL to the CD drive): `query-block` says `locked`, `eject` and
/// `blockdev-change-medium` are refused in QEMU's words and change nothing, `eject`
/// with `force` opens the tray (the same steps under QEMU 10 give the same replies).
#[test]
fn a_tray_the_guest_locked_refuses_eject_without_force() {
    if !common::seabios_vm_or_skip("ide_cdrom_locked") {
        return;
    }
    let dir = scratch("locked");
    let Some(boot) = common::assemble_boot_sector(&dir, "locktest", skip) else {
        return;
    };
    let (disk, cd, cd2) = (dir.join("d.img"), dir.join("cd.iso"), dir.join("cd2.iso"));
    boot_disk(&disk, boot);
    for path in [&cd, &cd2] {
        std::fs::File::create(path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
    }
    let sock = dir.join("qmp.sock");
    let qmp_arg = format!("unix:{},server=on,wait=off", sock.display());
    let mut vm = start_vm(&disk, &cd, &["-qmp", &qmp_arg]);
    assert!(
        vm.wait_for("LOCKED", Duration::from_secs(120)),
        "serial:\n{}",
        vm.seen
    );
    let mut q = Qmp::connect(&sock);
    assert_eq!(q.block("ide1-cd0")["locked"], true);
    let locked = generic(
        "Device 'ide1-cd0' is locked and force was not specified, wait for tray to open \
         and try again",
    );
    assert_eq!(
        error(&q.run("eject", json!({"device": "ide1-cd0"}))),
        locked
    );
    let change = json!({"device": "ide1-cd0", "filename": cd2.display().to_string()});
    assert_eq!(error(&q.run("blockdev-change-medium", change)), locked);
    let cd0 = q.block("ide1-cd0");
    assert_eq!(
        (&cd0["locked"], &cd0["tray_open"]),
        (&json!(true), &json!(false))
    );
    assert_eq!(cd0["inserted"]["file"], cd.display().to_string());
    assert_eq!(q.trays(), []);
    assert_eq!(
        q.run("eject", json!({"device": "ide1-cd0", "force": true})),
        json!({"return": {}})
    );
    assert_eq!(q.trays(), [("ide1-cd0".to_owned(), true)]);
    let cd0 = q.block("ide1-cd0");
    assert_eq!(
        (&cd0["locked"], &cd0["tray_open"]),
        (&json!(false), &json!(true))
    );
    assert!(cd0.get("inserted").is_none(), "{cd0}");
    let _ = std::fs::remove_dir_all(&dir);
}
