//! The storage daemon's QMP monitor (`--chardev socket,...` + `--monitor`), driven by
//! the real `qemu.qmp` Python client: a daemon started with no node and no export is
//! built up (blockdev-add, block-export-add), checked (queries, qemu-storage-daemon's
//! errors), torn down (block-export-del with BLOCK_EXPORT_DELETED, blockdev-del) and
//! ended with `quit`: exit status 0, pid file and sockets removed.
//!
//! Skips loudly without io_uring or the qemu.qmp package.

mod sd_common;

use sd_common::{Daemon, has_qemu_qmp, scratch};

fn skip(why: &str) {
    eprintln!("SKIPPED storage_daemon_qmp: {why}");
}

#[test]
fn qemu_qmp_client_builds_and_tears_down_exports() {
    if !has_qemu_qmp() {
        return skip("the qemu.qmp Python package is not installed (pip install qemu.qmp)");
    }
    if io_uring::IoUring::new(2).is_err() {
        return skip("io_uring is not available");
    }
    let (dir, image) = scratch("sd-qmp", 16);
    let export = dir.join("e0.sock");
    let mut daemon = Daemon::start(&dir);
    let pid = std::fs::read_to_string(&daemon.pidfile).unwrap();
    assert_eq!(
        pid.trim(),
        daemon.child.id().to_string(),
        "the pid file holds the pid"
    );
    daemon.script(
        "storage_daemon.py",
        &[&image, &export],
        120,
        "STORAGE DAEMON QMP OK",
    );
    assert_eq!(daemon.exit_code(), Some(0), "quit: exit status 0");
    assert!(!daemon.qmp.exists(), "the QMP socket is removed");
    assert!(!export.exists(), "the export's socket is removed");
    assert!(!daemon.pidfile.exists(), "the pid file is removed");
    let _ = std::fs::remove_dir_all(&dir);
}
