//! Our vhost-user-scsi export with a real frontend: a daemon built from nothing over
//! QMP (`qemu.qmp`: blockdev-add, block-export-add type=vhost-user-scsi) serves a
//! stock Debian kernel under QEMU TCG (`-device vhost-user-scsi-pci`); Linux's own
//! virtio_scsi and sd drivers see the node as sda, write an O_DIRECT pattern and verify
//! it; the host image holds the pattern after power-off; the export and nodes are
//! deleted and the daemon quits with status 0.
//!
//! Needs the guest assets (GUEST_ASSETS_DIR or target/guest-assets),
//! `qemu-system-x86_64`, io_uring and the qemu.qmp package; skips loudly without.

mod sd_common;

use std::path::{Path, PathBuf};

use sd_common::{Daemon, scratch};

fn prerequisites(test: &str) -> bool {
    sd_common::guest_prerequisites(test, None, true)
}

fn run_qemu() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/guest/run-qemu")
}

#[test]
fn linux_sees_sda_and_verifies_a_pattern_through_the_scsi_export() {
    if !prerequisites("linux_sees_sda_and_verifies_a_pattern_through_the_scsi_export") {
        return;
    }
    let (dir, image) = scratch("vu-scsi", 64);
    let export = dir.join("scsi0.sock");
    let mut daemon = Daemon::start(&dir);
    let out = daemon.script(
        "scsi_export.py",
        &[&image, &export, &run_qemu()],
        600,
        "SCSI EXPORT OK",
    );
    assert!(
        out.contains("SDA_SECTORS 131072"),
        "the guest sees the 64 MiB disk: {out}"
    );
    assert_eq!(daemon.exit_code(), Some(0), "quit: exit status 0");
    assert!(!export.exists(), "the export's socket is removed");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `PATGEN` of the guest assets (a static binary that also runs on the host).
fn patgen() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::var("GUEST_ASSETS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| root.join("target/guest-assets"))
        .join("patgen")
}

/// While Linux hammers LUN 0 with a verifying writer, QMP device_add/device_del plug
/// and unplug a scsi-hd at LUN 1 (SCSI_HOTPLUG_ROUNDS times, 20 by default): Linux's
/// sd attaches it as 0:0:0:1 each time (the RESCAN event; before the fix the event
/// named it 16385) and drops it (the REMOVED event); every removal ends with
/// DEVICE_DELETED; the busy LUN sees no I/O error and no mismatch; the daemon's fd
/// count is the same after the loop.
#[test]
fn linux_sees_luns_come_and_go_while_another_lun_is_busy() {
    if !prerequisites("linux_sees_luns_come_and_go_while_another_lun_is_busy") {
        return;
    }
    let rounds = std::env::var("SCSI_HOTPLUG_ROUNDS").unwrap_or_else(|_| "20".into());
    let (dir, image0) = scratch("vu-scsi-hotplug", 64);
    let image1 = dir.join("lun1.img");
    std::fs::File::create(&image1)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let export = dir.join("scsi0.sock");
    let console = dir.join("console.log");
    let mut daemon = Daemon::start(&dir);
    let pid = PathBuf::from(daemon.child.id().to_string());
    let rounds_arg = PathBuf::from(&rounds);
    let out = daemon.script(
        "scsi_hotplug.py",
        &[
            &image0,
            &image1,
            &export,
            &run_qemu(),
            &console,
            &pid,
            &rounds_arg,
            &patgen(),
        ],
        1200,
        "SCSI HOTPLUG OK",
    );
    eprintln!("{out}");
    assert_eq!(daemon.exit_code(), Some(0), "quit: exit status 0");
    let _ = std::fs::remove_dir_all(&dir);
}
