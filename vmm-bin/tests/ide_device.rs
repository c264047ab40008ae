//! `-device ide-hd|ide-cd` through the device registry: the refusals, byte for byte
//! what qemu-system-x86_64 10 says for the same command line (`-M pc,acpi=off`), and
//! `device_add`/`device_del` refused because the IDE channels cannot hotplug, with
//! QEMU's replies. (Booting from them: `boot_disk.rs`, `bootorder.rs`, `ide_cdrom.rs`.)
//!
//! Skips loudly without /dev/kvm or SeaBIOS.

mod common;

use std::process::Command;

use common::qmp::Qmp;
use serde_json::{Value, json};

/// A scratch directory with two blank images, or `None` after a SKIPPED line.
fn two_images(test: &str) -> Option<(tempfile::TempDir, String, String)> {
    if !common::seabios_vm_or_skip(test) {
        return None;
    }
    let tmp = tempfile::tempdir().unwrap();
    let a = common::blank_image(tmp.path(), "a.img");
    let b = common::blank_image(tmp.path(), "b.img");
    Some((tmp, a, b))
}

#[test]
fn cold_plug_refusals_match_qemu() {
    let Some((_tmp, a, b)) = two_images("ide_device_refusals") else {
        return;
    };
    let cases: [(&[&str], &str); 9] = [
        (
            &["-device", "ide-hd,drive=d0,bus=ide.1,unit=2"],
            "-device ide-hd,drive=d0,bus=ide.1,unit=2: Can't create IDE unit 2, bus supports only 2 units",
        ),
        (
            &[
                "-device",
                "ide-hd,drive=d0,bus=ide.1,unit=0",
                "-device",
                "ide-hd,drive=d1,bus=ide.1,unit=0",
            ],
            "-device ide-hd,drive=d1,bus=ide.1,unit=0: IDE unit 0 is in use",
        ),
        // Without bus= QEMU takes ide.1, without unit= the master, then the slave.
        (
            &[
                "-device",
                "ide-hd,drive=d0",
                "-device",
                "ide-cd",
                "-device",
                "ide-hd,drive=d1",
            ],
            "-device ide-hd,drive=d1: IDE unit 1 is in use",
        ),
        // -hda is made before the -device lines.
        (
            &["-hda", "{a}", "-device", "ide-hd,drive=d1,bus=ide.0,unit=0"],
            "-device ide-hd,drive=d1,bus=ide.0,unit=0: IDE unit 0 is in use",
        ),
        (
            &["-device", "ide-hd,bus=ide.0"],
            "-device ide-hd,bus=ide.0: No drive specified",
        ),
        (
            &["-device", "ide-cd,drive=nope"],
            "-device ide-cd,drive=nope: Property 'ide-cd.drive' can't find value 'nope'",
        ),
        (
            &["-device", "ide-hd,drive=d0,bus=ide.2"],
            "-device ide-hd,drive=d0,bus=ide.2: Bus 'ide.2' not found",
        ),
        (
            &["-device", "ide-hd,drive=d0,bus=pci.0"],
            "-device ide-hd,drive=d0,bus=pci.0: Device 'ide-hd' can't go on PCI bus",
        ),
        (
            &[
                "-device",
                "ide-hd,drive=d0,unit=1,bus=ide.0",
                "-device",
                "ide-hd,drive=d0",
            ],
            "-device ide-hd,drive=d0: Drive 'd0' is already in use by another device",
        ),
    ];
    for (args, want) in cases {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_vmm-bin"));
        cmd.args(["-display", "none", "-S"]);
        cmd.args(["-drive", &format!("file={a},format=raw,if=none,id=d0")]);
        cmd.args(["-drive", &format!("file={b},format=raw,if=none,id=d1")]);
        cmd.args(args.iter().map(|s| s.replace("{a}", &a)));
        common::assert_refused(cmd, want, &format!("{args:?}"));
    }
}

/// QEMU 10's replies under `-M pc,acpi=off -S -drive if=none,id=d0 -drive
/// if=none,id=d1 -device ide-hd,drive=d1,id=x`.
#[test]
fn device_add_and_del_are_refused_as_in_qemu() {
    let Some((tmp, a, b)) = two_images("ide_device_qmp") else {
        return;
    };
    let sock = tmp.path().join("qmp.sock");
    let qmp_arg = format!("unix:{},server=on,wait=off", sock.display());
    let d0 = format!("file={a},format=raw,if=none,id=d0");
    let d1 = format!("file={b},format=raw,if=none,id=d1");
    let args = [
        "-nographic",
        "-m",
        "64",
        "-S",
        "-drive",
        &d0,
        "-drive",
        &d1,
        "-device",
        "ide-hd,drive=d1,id=x",
        "-qmp",
        &qmp_arg,
    ];
    let _vm = common::Vm::start(&args);
    let mut q = Qmp::connect(&sock);
    let refused = |reply: Value, bus: &str| {
        let want = json!({"class": "GenericError",
            "desc": format!("Bus '{bus}' does not support hotplugging")});
        assert_eq!(reply["error"], want, "{reply}");
    };
    let hd = json!({"driver": "ide-hd", "drive": "d0", "bus": "ide.0", "unit": 1});
    refused(q.run("device_add", hd), "ide.0");
    refused(
        q.run("device_add", json!({"driver": "ide-hd", "drive": "d0"})),
        "ide.1",
    );
    refused(q.run("device_add", json!({"driver": "ide-cd"})), "ide.1");
    refused(q.run("device_del", json!({"id": "x"})), "ide.1");
    // The -device's disk is there; query-block names it by its id, as QEMU does.
    let x = q.block("d1");
    assert_eq!(x["qdev"], "x", "{x}");
    assert_eq!(x["removable"], false, "{x}");
    // d0 is still free for a device.
    assert!(q.run("query-block", json!({}))["return"].is_array());
}
