//! `-blockdev` and the QMP block commands against the real VMM: nodes from the command
//! line and from `blockdev-add`, a virtio-blk device on a node (`drive=NODE`),
//! `blockdev-del` refused while the device or a parent node uses it (qemu-storage-daemon
//! 10's words), `query-named-block-nodes` and `query-block` as QEMU shapes them; and the
//! command line's refusals in QEMU's words.
//!
//! Skips loudly without `/dev/kvm` or SeaBIOS (the refusals of the grammar need
//! neither).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

fn skip(why: &str) {
    eprintln!("SKIPPED blockdev: {why}");
}

/// Runs `vmm-bin ARGS` to its exit (killed after 30 s): (status, stderr).
fn vmm(args: &[&str]) -> (Option<i32>, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmm-bin"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = common::wait_or_kill(&mut child, Duration::from_secs(30));
    let mut stderr = String::new();
    let _ = std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr);
    (status.and_then(|s| s.code()), stderr)
}

#[test]
fn blockdev_refusals_use_qemus_words() {
    for (arg, want) in [
        (
            "driver=file,node-name=f0",
            "Parameter 'filename' is missing",
        ),
        (
            "driver=file,filename=x,node-name=f0,bogus=1",
            "Parameter 'bogus' is unexpected",
        ),
        (r#"{"driver":"file","#, "JSON parse error"),
        (
            r#"{"driver":"file","node-name":"f0","filename":"x","read-only":"on"}"#,
            "Invalid parameter type for 'read-only', expected: boolean",
        ),
        (
            "driver=qcow2,node-name=f0",
            "Parameter 'driver' does not accept value 'qcow2'",
        ),
    ] {
        let (status, stderr) = vmm(&["-blockdev", arg]);
        assert_eq!(status, Some(1), "{arg}: {stderr}");
        assert!(stderr.contains(want), "{arg}: {stderr}");
    }
}

fn kvm_and_seabios() -> bool {
    if std::fs::File::open("/dev/kvm").is_err() {
        skip("/dev/kvm is not available");
        return false;
    }
    if !Path::new("/usr/share/seabios/bios-256k.bin").exists() {
        skip("SeaBIOS is missing (apt-get install seabios)");
        return false;
    }
    true
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("blockdev-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn nodes_the_vm_cannot_have_are_refused() {
    if !kvm_and_seabios() {
        return;
    }
    let dir = scratch("refused");
    let img = common::blank_image(&dir, "a.img");
    let file0 = format!("driver=file,node-name=f0,filename={img}");
    let cases: [(Vec<&str>, &str); 3] = [
        (
            vec!["-blockdev", &file0, "-blockdev", &file0],
            "Duplicate nodes with node-name='f0'",
        ),
        (
            vec!["-blockdev", &file0, "-device", "virtio-blk-pci,drive=nope"],
            "Property 'virtio-blk-device.drive' can't find value 'nope'",
        ),
        (
            vec!["-blockdev", "driver=raw,node-name=d0,file=f9"],
            "Cannot find device='f9' nor node-name='f9'",
        ),
    ];
    for (args, want) in cases {
        let (status, stderr) = vmm(&args);
        assert_eq!(status, Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A minimal QMP client: one request, its reply (events skipped).
struct Qmp(BufReader<UnixStream>);

impl Qmp {
    fn connect(path: &Path) -> Qmp {
        let stream = common::connect_unix(path, Duration::from_secs(20));
        let mut q = Qmp(BufReader::new(stream));
        q.line(); // the greeting
        assert_eq!(
            q.execute("qmp_capabilities", json!({})),
            json!({"return": {}})
        );
        q
    }

    fn line(&mut self) -> Value {
        let mut line = String::new();
        self.0.read_line(&mut line).unwrap();
        serde_json::from_str(&line).unwrap()
    }

    fn execute(&mut self, command: &str, arguments: Value) -> Value {
        let request = json!({"execute": command, "arguments": arguments});
        self.0
            .get_mut()
            .write_all(request.to_string().as_bytes())
            .unwrap();
        loop {
            let v = self.line();
            if v.get("event").is_none() {
                return v;
            }
        }
    }

    fn ok(&mut self, command: &str, arguments: Value) -> Value {
        let v = self.execute(command, arguments.clone());
        v.get("return")
            .cloned()
            .unwrap_or_else(|| panic!("{command} {arguments}: {v}"))
    }

    fn error(&mut self, command: &str, arguments: Value) -> String {
        let v = self.execute(command, arguments.clone());
        assert_eq!(
            v["error"]["class"], "GenericError",
            "{command} {arguments}: {v}"
        );
        v["error"]["desc"].as_str().unwrap().to_owned()
    }

    fn node_names(&mut self) -> Vec<String> {
        let list = self.ok("query-named-block-nodes", json!({}));
        list.as_array()
            .unwrap()
            .iter()
            .map(|n| n["node-name"].as_str().unwrap().to_owned())
            .collect()
    }
}

struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn blockdev_add_and_del_through_qmp_while_a_device_uses_a_node() {
    if !kvm_and_seabios() {
        return;
    }
    let dir = scratch("qmp");
    let (a, b) = (
        common::blank_image(&dir, "a.img"),
        common::blank_image(&dir, "b.img"),
    );
    let sock = dir.join("qmp.sock");
    let vm = Command::new(env!("CARGO_BIN_EXE_vmm-bin"))
        .args(["-nographic", "-m", "64", "-S"])
        .arg("-blockdev")
        .arg(format!("driver=file,node-name=file0,filename={a}"))
        .args(["-blockdev", "driver=raw,node-name=disk0,file=file0"])
        .args(["-device", "virtio-blk-pci,drive=disk0,id=vblk0"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _vm = KillOnDrop(vm);
    let mut q = Qmp::connect(&sock);

    assert_eq!(q.node_names(), ["disk0", "file0"], "newest first, as QEMU");
    let blocks = q.ok("query-block", json!({}));
    assert_eq!(
        blocks[0]["device"], "",
        "a device on a node has an anonymous backend"
    );
    assert_eq!(
        blocks[0]["qdev"],
        "/machine/peripheral/vblk0/virtio-backend"
    );
    assert_eq!(blocks[0]["inserted"]["node-name"], "disk0");
    assert_eq!(blocks[0]["inserted"]["image"]["virtual-size"], 1 << 20);
    // block_resize reaches the VMM's nodes too (block-node registers it); the
    // virtio-blk device's capacity follows (its config interrupt: virtio-pci's
    // config_notify unit test).
    q.ok(
        "block_resize",
        json!({"node-name": "disk0", "size": 2 << 20}),
    );
    let blocks = q.ok("query-block", json!({}));
    assert_eq!(blocks[0]["inserted"]["image"]["virtual-size"], 2 << 20);
    assert_eq!(std::fs::metadata(&a).unwrap().len(), 2 << 20);

    // Refused while in use, in qemu-storage-daemon's words.
    assert_eq!(
        q.error("blockdev-del", json!({"node-name": "disk0"})),
        "Node disk0 is in use"
    );
    assert_eq!(
        q.error("blockdev-del", json!({"node-name": "file0"})),
        "Block device file0 is in use"
    );
    assert_eq!(
        q.error("blockdev-del", json!({"node-name": "zz"})),
        "Failed to find node with node-name='zz'"
    );

    // A node from the monitor: added, listed, deleted.
    q.ok(
        "blockdev-add",
        json!({"driver": "raw", "node-name": "n1",
               "file": {"driver": "file", "filename": b, "cache": {"direct": false}}}),
    );
    assert_eq!(
        q.error(
            "blockdev-add",
            json!({"driver": "file", "node-name": "n1", "filename": b})
        ),
        "Duplicate nodes with node-name='n1'"
    );
    assert_eq!(
        q.error(
            "blockdev-add",
            json!({"driver": "file", "node-name": "n2", "filename": "/nonexistent/x"})
        ),
        "Could not open '/nonexistent/x': No such file or directory"
    );
    let names = q.node_names();
    assert_eq!(names.len(), 4, "{names:?}");
    assert_eq!(names[0], "n1");
    assert!(
        names[1].starts_with("#block"),
        "the inline child: {names:?}"
    );
    q.ok("blockdev-del", json!({"node-name": "n1"}));
    assert_eq!(
        q.node_names(),
        ["disk0", "file0"],
        "the inline child went too"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
