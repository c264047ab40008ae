//! `block_resize` through our vhost-user exports, with Linux as the judge: a stock
//! Debian kernel under QEMU TCG hammers the disk with verified O_DIRECT I/O while the
//! host resizes the node over the daemon's QMP monitor (grow to an unaligned size,
//! then shrink), and the guest's `/sys/block/DEV/size` must follow:
//!
//! - vhost-user-blk (`vhost-user-blk-pci`, vda): QEMU's frontend hears
//!   `CONFIG_CHANGE_MSG` on the backend channel, reads the new capacity and raises the
//!   config interrupt; Linux's virtio_blk updates the size.
//! - vhost-user-scsi (`vhost-user-scsi-pci`, sda): the export sends PARAM_CHANGE with
//!   2A/09 on the event queue; Linux's virtio_scsi rescans the LUN (READ CAPACITY, after
//!   the unit attention CAPACITY DATA HAS CHANGED).
//!
//! Hostile requests on the same monitor (an absent node, a negative size, an export id
//! as a device) get qemu-storage-daemon's errors, and the daemon keeps serving.
//!
//! Needs the guest assets with the `vda-resize`/`sda-resize` workloads (GUEST_ASSETS_DIR
//! or target/guest-assets; `scripts/guest-assets` rebuilds them when tests/guest/init
//! changes), `qemu-system-x86_64` and io_uring; skips loudly without.

mod common;
mod sd_common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::qmp::Qmp;
use sd_common::{Daemon, guest_assets as assets, guest_prerequisites, scratch};
use serde_json::{Value, json};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Waits until the console log has a line starting with `prefix`; returns it.
fn wait_console(log: &Path, prefix: &str, guest: &mut Child, deadline: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .find(|l| l.starts_with(prefix))
        {
            return line.to_owned();
        }
        assert!(
            guest.try_wait().unwrap().is_none(),
            "the guest ended before printing {prefix}: {text}"
        );
        assert!(
            start.elapsed() < deadline,
            "no {prefix} on the console in {deadline:?}: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn error_desc(reply: &Value) -> &str {
    reply["error"]["desc"]
        .as_str()
        .unwrap_or_else(|| panic!("not an error: {reply}"))
}

/// Which export, and how the guest sees it.
struct Kind {
    /// `block-export-add`'s `type`.
    export: &'static str,
    /// The guest's disk (`vda`, `sda`) and its workload's marker prefix.
    dev: &'static str,
    /// run-qemu's arguments that attach the export at a socket path.
    attach: fn(&Path) -> Vec<String>,
}

const BLK: Kind = Kind {
    export: "vhost-user-blk",
    dev: "vda",
    attach: |sock| vec!["--vhost-user-blk".into(), sock.display().to_string()],
};

const SCSI: Kind = Kind {
    export: "vhost-user-scsi",
    dev: "sda",
    attach: |sock| {
        let args = [
            "-object".to_owned(),
            "memory-backend-memfd,id=mem,size=512M,share=on".into(),
            "-numa".into(),
            "node,memdev=mem".into(),
            "-chardev".into(),
            format!("socket,id=vus,path={}", sock.display()),
            "-device".into(),
            "vhost-user-scsi-pci,chardev=vus,num_queues=2".into(),
        ];
        args.iter().map(|a| format!("--qemu-arg={a}")).collect()
    },
};

#[test]
fn linux_sees_vda_grow_and_shrink_after_block_resize_with_io_in_flight() {
    resize_under_linux(
        "linux_sees_vda_grow_and_shrink_after_block_resize_with_io_in_flight",
        &BLK,
    );
}

#[test]
fn linux_sees_sda_grow_and_shrink_after_block_resize_with_io_in_flight() {
    resize_under_linux(
        "linux_sees_sda_grow_and_shrink_after_block_resize_with_io_in_flight",
        &SCSI,
    );
}

fn resize_under_linux(test: &str, kind: &Kind) {
    let workload = format!("{}-resize", kind.dev);
    if !guest_prerequisites(test, Some(&workload), false) {
        return;
    }
    let prefix = kind.dev.to_uppercase();
    let (dir, img) = scratch(&format!("vu-resize-{}", kind.dev), 0);
    let (sock, log) = (dir.join("exp0.sock"), dir.join("console.log"));
    // The hammer verifies what it reads: the region holds the pattern from the start.
    let pattern = Command::new(assets().join("patgen"))
        .args(["gen", "1", "0", &(16u64 << 20).to_string()])
        .output()
        .expect("patgen");
    assert!(pattern.status.success());
    std::fs::write(&img, &pattern.stdout).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    // A daemon built over QMP, as a qemu-storage-daemon user builds one.
    let mut daemon = Daemon::start(&dir);
    let mut qmp = Qmp::connect(&daemon.qmp);
    let ok = json!({"return": {}});
    let file0 = json!({"driver": "file", "node-name": "file0", "filename": img,
                       "cache": {"direct": true}, "aio": "io_uring"});
    assert_eq!(qmp.run("blockdev-add", file0), ok);
    let disk0 = json!({"driver": "raw", "node-name": "disk0", "file": "file0"});
    assert_eq!(qmp.run("blockdev-add", disk0), ok);
    let export = json!({"type": kind.export, "id": "exp0", "node-name": "disk0",
                        "addr": {"type": "unix", "path": sock}, "writable": true,
                        "num-queues": 2});
    assert_eq!(qmp.run("block-export-add", export), ok);

    let mut guest = Command::new("python3")
        .arg(root().join("tests/guest/run-qemu"))
        .args(["--workload", &workload])
        .args((kind.attach)(&sock))
        .arg("--console-log")
        .arg(&log)
        .args(["--no-host-check", "--timeout", "400"])
        .args([
            "-p",
            "size_mb=16",
            "-p",
            "resize_changes=2",
            "-p",
            "dev_wait=240",
        ])
        .env("GUEST_ASSETS_DIR", assets())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 tests/guest/run-qemu");
    let marker = |what: &str| format!("{prefix}_{what}=");
    let before = wait_console(
        &log,
        &marker("SECTORS"),
        &mut guest,
        Duration::from_secs(300),
    );
    assert_eq!(before, format!("{}131072", marker("SECTORS")));
    wait_console(&log, "RESIZE_READY", &mut guest, Duration::from_secs(60));

    // Hostile requests while the guest's I/O runs: clear errors, nothing changes.
    let r = qmp.run(
        "block_resize",
        json!({"node-name": "nope", "size": 1 << 30}),
    );
    assert_eq!(error_desc(&r), "Cannot find device='' nor node-name='nope'");
    let r = qmp.run("block_resize", json!({"node-name": "disk0", "size": -512}));
    assert_eq!(error_desc(&r), "Parameter 'size' expects a >0 size");
    let r = qmp.run("block_resize", json!({"device": "exp0", "size": 1 << 30}));
    assert_eq!(error_desc(&r), "Cannot find device='exp0' nor node-name=''");
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 64 << 20);

    // Grow to 128 MiB and 1000 bytes: the guest sees whole sectors.
    let grown = (128 << 20) + 1000;
    let r = qmp.run("block_resize", json!({"node-name": "disk0", "size": grown}));
    assert_eq!(r, json!({"return": {}}));
    assert_eq!(std::fs::metadata(&img).unwrap().len(), grown);
    let seen = wait_console(
        &log,
        &marker("RESIZED_1"),
        &mut guest,
        Duration::from_secs(120),
    );
    assert_eq!(seen, format!("{}{}", marker("RESIZED_1"), grown / 512));

    // Shrink below the old size (the hammer works in the first 16 MiB).
    let r = qmp.run(
        "block_resize",
        json!({"node-name": "file0", "size": 48 << 20}),
    );
    assert_eq!(r, json!({"return": {}}));
    let seen = wait_console(
        &log,
        &marker("RESIZED_2"),
        &mut guest,
        Duration::from_secs(120),
    );
    assert_eq!(seen, format!("{}{}", marker("RESIZED_2"), (48 << 20) / 512));

    let out = guest.wait_with_output().unwrap();
    let r: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("run-qemu printed no JSON ({e})"));
    assert!(
        out.status.success() && r["status"] == "PASS",
        "{} {} (console: {})",
        r["status"],
        r["reason"],
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    assert!(
        daemon.child.try_wait().unwrap().is_none(),
        "the daemon survived"
    );
    let nodes = qmp.run("query-named-block-nodes", json!({}));
    let disk0 = nodes["return"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["node-name"] == "disk0")
        .unwrap()
        .clone();
    assert_eq!(disk0["image"]["virtual-size"], 48 << 20);
}
