//! SIGTERM, SIGINT and SIGHUP end both modes of `vmm-bin` as they end QEMU: exit status
//! 0, a message naming the signal and its sender ("terminating on signal 15 from pid P
//! (NAME)", QEMU 10's wording), socket files removed, disks drained and flushed. The
//! VMM also sends QMP's SHUTDOWN event (`"guest": false, "reason": "host-signal"`).
//!
//! Regression test for issue 14, item 5: the VMM died of the signal (status 143, 130,
//! 129) and left its QMP socket file behind; SIGHUP killed the storage daemon.
//!
//! The VMM tests boot the ticker boot sector from a virtio-blk disk under SeaBIOS and
//! skip loudly without /dev/kvm, SeaBIOS or binutils; the storage daemon tests need
//! nothing.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;

const SIGNALS: [Signal; 3] = [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP];

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("signals-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn wait_for_socket(path: &Path, child: &mut Child) {
    let start = Instant::now();
    while UnixStream::connect(path).is_err() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the process exited before it listened on {}",
            path.display()
        );
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "nothing listens on {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to `child` and returns its exit status and stderr (kills it after a
/// generous deadline, which fails the test).
fn terminate(child: &mut Child, signal: Signal) -> (Option<i32>, String) {
    kill(Pid::from_raw(child.id() as i32), signal).unwrap();
    let status = common::wait_or_kill(child, Duration::from_secs(60));
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    (status.and_then(|s| s.code()), stderr)
}

/// QEMU's report, with this test process as the sender.
fn expected_message(program: &str, signal: Signal) -> String {
    format!(
        "{program}: terminating on signal {} from pid {} (",
        signal as i32,
        std::process::id()
    )
}

/// A negotiated QMP client.
fn qmp_client(path: &Path) -> BufReader<UnixStream> {
    let mut stream = UnixStream::connect(path).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    stream
        .write_all(br#"{"execute":"qmp_capabilities"}"#)
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    for _ in 0..2 {
        line.clear();
        reader.read_line(&mut line).unwrap(); // greeting, then the return
    }
    assert_eq!(line, "{\"return\": {}}\r\n");
    reader
}

/// The VMM's prerequisites; `None` after a SKIPPED line.
fn ticker_disk(test: &str) -> Option<(PathBuf, PathBuf)> {
    if !common::kvm_or_skip(test)
        || !common::file_or_skip(
            test,
            Path::new("/usr/share/seabios/bios-256k.bin"),
            "apt-get install seabios",
        )
    {
        return None;
    }
    let dir = scratch(test);
    let boot =
        common::assemble_boot_sector(&dir, "ticker", |why| eprintln!("SKIPPED {test}: {why}"))?;
    let image = dir.join("ticker.img");
    let mut disk = boot;
    disk.resize(1 << 20, 0);
    std::fs::write(&image, disk).unwrap();
    Some((dir, image))
}

/// The VMM booting `image` from virtio-blk, with `-qmp unix:SOCK,server=on,wait=WAIT`.
fn spawn_vmm(image: &Path, sock: &Path, wait: &str, stdout: Stdio) -> Child {
    Command::new(env!("CARGO_BIN_EXE_vmm-bin"))
        .args(["-nographic", "-m", "64"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", image.display()))
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait={wait}", sock.display()))
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn the_vmm_shuts_down_cleanly_on_sigterm_sigint_and_sighup() {
    let Some((dir, image)) = ticker_disk("vmm_signals") else {
        return;
    };
    for signal in SIGNALS {
        let sock = dir.join(format!("qmp-{signal}.sock"));
        let serial = dir.join(format!("serial-{signal}.log"));
        let log = std::fs::File::create(&serial).unwrap();
        let mut vm = spawn_vmm(&image, &sock, "off", log.into());
        wait_for_socket(&sock, &mut vm);
        let mut qmp = qmp_client(&sock);
        // The guest runs: its vCPU is in KVM_RUN when the signal comes.
        let start = Instant::now();
        while !std::fs::read_to_string(&serial).unwrap().contains("tick") {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{signal}: the guest never printed"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let (status, stderr) = terminate(&mut vm, signal);
        assert_eq!(status, Some(0), "{signal}: exit status; stderr:\n{stderr}");
        assert!(
            stderr.contains(&expected_message("vmm-bin", signal)),
            "{signal}: stderr:\n{stderr}"
        );
        assert!(!sock.exists(), "{signal}: the QMP socket file is removed");
        let mut rest = String::new();
        let _ = qmp.read_to_string(&mut rest);
        let shutdown = rest
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["event"] == "SHUTDOWN")
            .unwrap_or_else(|| panic!("{signal}: no SHUTDOWN event in {rest:?}"));
        assert_eq!(
            shutdown["data"],
            serde_json::json!({"guest": false, "reason": "host-signal"}),
            "{signal}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_signal_ends_the_wait_for_a_qmp_client() {
    let Some((dir, image)) = ticker_disk("vmm_signal_wait_on") else {
        return;
    };
    let sock = dir.join("qmp.sock");
    let mut vm = spawn_vmm(&image, &sock, "on", Stdio::null());
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < Duration::from_secs(30), "no QMP socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, stderr) = terminate(&mut vm, Signal::SIGTERM);
    assert_eq!(status, Some(0), "stderr:\n{stderr}");
    assert!(stderr.contains(&expected_message("vmm-bin", Signal::SIGTERM)));
    assert!(!sock.exists(), "the QMP socket file is removed");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_storage_daemon_shuts_down_cleanly_on_sigterm_sigint_and_sighup() {
    let dir = scratch("daemon");
    let image = dir.join("disk.img");
    std::fs::File::create(&image)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    for signal in SIGNALS {
        let socks = [
            dir.join(format!("a-{signal}.sock")),
            dir.join(format!("b-{signal}.sock")),
        ];
        let mut daemon = Command::new(env!("CARGO_BIN_EXE_vmm-bin"))
            .arg("storage-daemon")
            .arg("--blockdev")
            .arg(format!(
                "driver=file,node-name=file0,filename={}",
                image.display()
            ))
            .args(["--blockdev", "driver=raw,node-name=disk0,file=file0"])
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=a,node-name=disk0,addr.type=unix,addr.path={},writable=on",
                socks[0].display()
            ))
            .arg("--export")
            .arg(format!(
                "type=vhost-user-blk,id=b,node-name=file0,addr.type=unix,addr.path={}",
                socks[1].display()
            ))
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        for sock in &socks {
            wait_for_socket(sock, &mut daemon);
        }
        let (status, stderr) = terminate(&mut daemon, signal);
        assert_eq!(status, Some(0), "{signal}: stderr:\n{stderr}");
        assert!(
            stderr.contains(&expected_message("vmm-bin storage-daemon", signal)),
            "{signal}: stderr:\n{stderr}"
        );
        for sock in &socks {
            assert!(!sock.exists(), "{signal}: {} is removed", sock.display());
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// SIGTERM with writes in flight: the daemon completes them before it exits, so the
/// image holds exactly the writes the frontend saw acknowledged (a write that reached
/// the image without its used-ring entry was abandoned in flight; an acknowledged write
/// that is missing was lost). Several rounds, the signal sent right after the kick.
#[test]
fn the_storage_daemon_completes_in_flight_writes_before_exiting_on_sigterm() {
    use common::vhost_frontend::{Export, Frontend, Io, Options, S_OK, image, socket_path};
    const WRITES: u64 = 32;
    const SECTORS: u64 = 128; // 64 KiB each
    for round in 0..5u8 {
        let img = image("sigterm_inflight.img", 16);
        let sock = socket_path("sigterm_inflight.sock");
        let mut export = Export::start(&img, &sock, "");
        let mut f = Frontend::start(&sock, &Options::default()).expect("frontend");
        let data = vec![round + 1; (SECTORS * 512) as usize];
        let heads: Vec<u16> = (0..WRITES)
            .map(|i| {
                f.post(
                    0,
                    Io::Write {
                        sector: i * SECTORS,
                        data: &data,
                    },
                )
            })
            .collect();
        f.kick(0);
        let pid = Pid::from_raw(export.daemon.child.id() as i32);
        kill(pid, Signal::SIGTERM).unwrap();
        let status = export.daemon.wait_exit(Duration::from_secs(30));
        assert!(
            status.is_some_and(|s| s.success()),
            "round {round}: exit {status:?}: {}",
            export.daemon.stderr()
        );
        let done = f.reap(0);
        assert!(
            done.iter().all(|c| c.status == Some(S_OK)),
            "round {round}: {done:?}"
        );
        let on_disk = std::fs::read(&img).unwrap();
        for (i, head) in heads.iter().enumerate() {
            let acked = done.iter().any(|c| c.head == *head);
            let start = i * data.len();
            let region = &on_disk[start..start + data.len()];
            let written = region.iter().all(|&b| b == round + 1);
            let untouched = region.iter().all(|&b| b == 0);
            assert!(written || untouched, "round {round}: write {i} is torn");
            assert_eq!(
                acked, written,
                "round {round}: write {i}: acknowledged {acked}, in the image {written}"
            );
        }
        eprintln!(
            "round {round}: {} of {WRITES} writes acknowledged before exit",
            done.len()
        );
    }
}
