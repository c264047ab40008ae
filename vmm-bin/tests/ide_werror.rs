//! The run-state seed in its own context (issue 18): an IDE disk with `werror=stop`
//! whose image lies on a full, size-limited tmpfs. SeaBIOS boots the disk test
//! (`tests/bootsector/disktest.S`), whose INT 13h write reaches our ide-hd and fails
//! with ENOSPC: BLOCK_IO_ERROR (nospace), then STOP, status `io-error`. A `cont` while
//! the disk is still full stops the VM again (a second BLOCK_IO_ERROR and STOP, the
//! restart not re-entering the run-state notification); once space is freed, `cont`
//! restarts the parked request, the guest reads its write back and passes, and the
//! image holds what it wrote.
//!
//! Needs root (to mount the tmpfs), /dev/kvm, SeaBIOS and binutils; skips loudly
//! without them.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::qmp::Qmp;
use serde_json::json;

fn skip(why: &str) {
    eprintln!("SKIPPED ide_werror: {why}");
}

/// A tmpfs of `size` mounted at `dir`, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_owned()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `path` (a new file there) until it refuses more.
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0xa5u8; 4096];
    while f.write_all(&chunk).is_ok() {}
}

/// The disk test's image with LBA 4096 (the sector the guest writes) left a hole,
/// so that writing it needs space the file system does not have.
fn sparse_disk(path: &Path, boot: &[u8]) {
    let mut data = boot.to_vec();
    for n in 1u32..=2048 {
        data.extend((0u32..128).flat_map(|i| (n << 16 | i).to_le_bytes()));
    }
    let f = std::fs::File::create(path).unwrap();
    (&f).write_all(&data).unwrap();
    f.set_len(4097 * 512).unwrap();
}

#[test]
fn werror_stop_on_enospc_stops_restarts_and_keeps_the_data() {
    if !common::seabios_vm_or_skip("ide_werror") {
        return;
    }
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ide-werror-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(boot) = common::assemble_boot_sector(&dir, "disktest", skip) else {
        return;
    };
    let Some(fs) = Tmpfs::mount(&dir.join("mnt"), "4m") else {
        return skip("cannot mount a tmpfs (needs root)");
    };
    let image = fs.0.join("disk.img");
    sparse_disk(&image, &boot);
    let filler = fs.0.join("filler");
    fill(&filler);

    let sock = dir.join("qmp.sock");
    let drive = format!(
        "file={},format=raw,if=ide,werror=stop,cache=writeback",
        image.display()
    );
    let qmp = format!("unix:{},server=on,wait=off", sock.display());
    let mut vm = common::Vm::start(&[
        "-nographic",
        "-m",
        "128",
        "-no-reboot",
        "-drive",
        &drive,
        "-qmp",
        &qmp,
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
    ]);
    let mut q = Qmp::connect(&sock);
    let long = Duration::from_secs(120);

    // The write fails for want of space: the error, then the stop.
    let error = q
        .wait_event("BLOCK_IO_ERROR", long)
        .expect("no BLOCK_IO_ERROR");
    eprintln!("ide_werror: {error}");
    let data = &error["data"];
    assert_eq!(
        (
            &data["device"],
            &data["operation"],
            &data["action"],
            &data["nospace"]
        ),
        (
            &json!("ide0-hd0"),
            &json!("write"),
            &json!("stop"),
            &json!(true)
        ),
        "{error}"
    );
    // QEMU's path for the first IDE device of the pc machine.
    assert_eq!(data["qom-path"], "/machine/unattached/device[4]", "{error}");
    assert!(q.wait_event("STOP", long).is_some(), "no STOP");
    assert_eq!(
        q.run("query-status", json!({}))["return"],
        json!({"status": "io-error", "running": false})
    );
    let hd = q.block("ide0-hd0");
    assert_eq!(hd["io-status"], "nospace", "{hd}");

    // Still full: the restart fails again and stops the VM again.
    assert_eq!(q.run("cont", json!({})), json!({"return": {}}));
    assert!(q.wait_event("RESUME", long).is_some(), "no RESUME");
    let again = q
        .wait_event("BLOCK_IO_ERROR", long)
        .expect("no second error");
    assert_eq!(again["data"]["nospace"], true, "{again}");
    assert!(q.wait_event("STOP", long).is_some(), "no second STOP");
    assert_eq!(
        q.run("query-status", json!({}))["return"]["status"],
        "io-error"
    );

    // Space freed: the parked write completes and the guest passes.
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(q.run("cont", json!({})), json!({"return": {}}));
    let status = vm.wait_exit(long);
    assert!(vm.seen.contains("PASS"), "serial:\n{}", vm.seen);
    assert_eq!(status.and_then(|s| s.code()), Some(33), "{}", vm.stderr());

    // LBA 4096 holds the copy of sector 1985 the guest wrote; the data it read is intact.
    let written = std::fs::read(&image).unwrap();
    let dword = |lba: usize, i: usize| {
        let at = lba * 512 + 4 * i;
        u32::from_le_bytes(written[at..at + 4].try_into().unwrap())
    };
    for i in 0..128 {
        assert_eq!(dword(4096, i), 1985 << 16 | i as u32, "dword {i}");
        assert_eq!(dword(2048, i), 2048 << 16 | i as u32);
    }
    drop(fs);
    let _ = std::fs::remove_dir_all(&dir);
}
