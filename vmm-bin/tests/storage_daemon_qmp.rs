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

/// `--daemonize`: the command returns (status 0) once the daemon serves; the pid file
/// names the daemon (not the parent); SIGTERM ends it and removes the pid file.
#[test]
fn daemonize_returns_once_serving() {
    let (dir, _) = scratch("sd-daemonize", 1);
    let qmp = dir.join("qmp.sock");
    let pidfile = dir.join("sd.pid");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_vmm-bin"))
        .arg("storage-daemon")
        .arg("--daemonize")
        .arg("--pidfile")
        .arg(&pidfile)
        .arg("--chardev")
        .arg(format!(
            "socket,id=m0,path={},server=on,wait=off",
            qmp.display()
        ))
        .args(["--monitor", "chardev=m0"])
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the parent exits 0 once the daemon is ready"
    );
    // Ready means serving: no wait needed.
    std::os::unix::net::UnixStream::connect(&qmp).expect("the monitor listens");
    let pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while pidfile.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "SIGTERM ends the daemon"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `addr.type=fd,addr.str=N`: the export serves a listening socket the caller passed.
#[test]
fn export_serves_a_listener_passed_by_fd() {
    use std::io::{Read, Write};
    use std::os::fd::AsRawFd;
    if io_uring::IoUring::new(2).is_err() {
        return skip("io_uring is not available");
    }
    let (dir, image) = scratch("sd-fd", 1);
    let path = dir.join("passed.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    // Inherited by the daemon: clear close-on-exec.
    nix::fcntl::fcntl(
        &listener,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    let fd = listener.as_raw_fd();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_vmm-bin"))
        .arg("storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=file,node-name=f0,filename={}",
            image.display()
        ))
        .arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=e0,node-name=f0,addr.type=fd,addr.str={fd}"
        ))
        .spawn()
        .unwrap();
    drop(listener);
    let mut daemon = Daemon {
        child,
        qmp: dir.join("none"),
        pidfile: dir.join("none"),
    };
    let mut frontend = std::os::unix::net::UnixStream::connect(&path).unwrap();
    frontend
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    // VHOST_USER_GET_FEATURES (1), version 1, no payload: answered with 8 bytes.
    let mut msg = Vec::new();
    for word in [1u32, 1, 0] {
        msg.extend_from_slice(&word.to_le_bytes());
    }
    frontend.write_all(&msg).unwrap();
    let mut reply = [0u8; 20];
    frontend.read_exact(&mut reply).expect("the export answers");
    assert_eq!(u32::from_le_bytes(reply[..4].try_into().unwrap()), 1);
    let features = u64::from_le_bytes(reply[12..].try_into().unwrap());
    assert_ne!(features & (1 << 32), 0, "VIRTIO_F_VERSION_1 offered");
    drop(frontend);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert_eq!(daemon.exit_code(), Some(0));
    assert!(
        path.exists(),
        "a passed socket's file is the caller's: left alone"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
