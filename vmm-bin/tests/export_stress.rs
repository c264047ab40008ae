//! Issue 14 section 1: the vhost-user-blk export must not wedge when a frontend stops,
//! resets or abandons a queue with I/O in flight.
//!
//! Each round keeps 32 requests (reads or writes, alternating) in flight on a fresh
//! frontend and then does one of:
//!
//! - `GET_VRING_BASE` (what QEMU sends whenever a VM stops or migrates): the reply must
//!   come, and every request the backend took from the ring must be in the used ring;
//! - `RESET_OWNER`;
//! - closing the socket;
//! - SIGKILL of a frontend *process* (this test binary, re-executed) in the middle of
//!   its writes;
//! - two queues pointing at one ring (both kicked), then `GET_VRING_BASE` on both.
//!
//! After each round a fresh frontend writes a pattern, reads it back and compares, and
//! the daemon must still run. Before the aio-context fix (a nested poll did not see the
//! completions the outer poll had reaped) the export wedged within 1 to 40 rounds and
//! every later frontend got no reply.
//!
//! CI runs `EXPORT_STRESS_ROUNDS` (default 100) rounds per cache mode; the documented long
//! run is `EXPORT_STRESS_ROUNDS=1000 cargo test --release -p vmm-bin --test export_stress`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use vhost::vhost_user::message::FrontendReq;

use common::vhost_frontend::{Export, Frontend, Io, Options, S_OK, image, socket_path};

/// What ends a round's in-flight I/O.
#[derive(Clone, Copy, Debug)]
enum Stop {
    GetVringBase,
    ResetOwner,
    Close,
    Sigkill,
    AliasedRings,
}

const STOPS: [Stop; 5] = [
    Stop::GetVringBase,
    Stop::ResetOwner,
    Stop::Close,
    Stop::Sigkill,
    Stop::AliasedRings,
];

/// Requests in flight when the queue stops.
const DEPTH: usize = 32;
/// Each request moves 4 KiB (8 sectors).
const IO_SECTORS: u64 = 8;
/// The in-flight I/O stays below this sector; each round's verification lies above it.
const VERIFY_BASE: u64 = 64 << 11; // 64 MiB
/// The image: 128 MiB.
const IMAGE_MIB: u64 = 128;

/// The environment variable that turns this binary into a frontend process for
/// [`Stop::Sigkill`]: its value is the export's socket path.
const CHILD_ENV: &str = "EXPORT_STRESS_CHILD_SOCKET";

fn rounds() -> usize {
    std::env::var("EXPORT_STRESS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
}

fn uring_available() -> bool {
    io_uring::IoUring::new(2).is_ok()
}

#[test]
fn queue_stops_with_io_in_flight_buffered() {
    stress("export_stress_buffered", false);
}

#[test]
fn queue_stops_with_io_in_flight_o_direct() {
    stress("export_stress_direct", true);
}

fn stress(name: &str, direct: bool) {
    if !uring_available() {
        eprintln!("SKIPPED {name}: io_uring is not available");
        return;
    }
    let img = image(&format!("{name}.img"), IMAGE_MIB);
    let sock = socket_path(&format!("{name}.sock"));
    let cache = if direct {
        ",cache.direct=on,aio=io_uring"
    } else {
        ""
    };
    let blockdev = format!(
        "driver=file,node-name=file0,filename={}{cache}",
        img.display()
    );
    let export_opt = format!(
        "type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path={},writable=on,num-queues=2",
        sock.display()
    );
    let mut export = Export::start_args(&["--blockdev", &blockdev, "--export", &export_opt], &sock);
    let n = rounds();
    for round in 0..n {
        let stop = STOPS[round % STOPS.len()];
        let write = round % 2 == 1;
        let what = format!(
            "round {round} of {n} ({stop:?}, {})",
            if write { "writes" } else { "reads" }
        );
        run_round(&sock, stop, write, round)
            .unwrap_or_else(|e| panic!("{what}: {e}\ndaemon stderr:\n{}", export.daemon.stderr()));
        assert!(
            export.alive(),
            "{what}: the daemon died: {}",
            export.daemon.stderr()
        );
        verify(&sock, round).unwrap_or_else(|e| {
            panic!(
                "{what}: a fresh frontend was not served (the export wedged): {e}\ndaemon stderr:\n{}",
                export.daemon.stderr()
            )
        });
    }
    eprintln!("{name}: {n} rounds passed");
}

/// Posts [`DEPTH`] requests on queue `q` (the first ring) and kicks.
fn fill(f: &mut Frontend, q: u16, write: bool, round: usize) {
    let data: Vec<u8> = (0..IO_SECTORS * 512)
        .map(|i| (i as usize ^ round) as u8)
        .collect();
    for i in 0..DEPTH as u64 {
        let sector = ((round as u64 * DEPTH as u64 + i) * IO_SECTORS) % VERIFY_BASE;
        let io = if write {
            Io::Write {
                sector,
                data: &data,
            }
        } else {
            Io::Read {
                sector,
                len: IO_SECTORS * 512,
            }
        };
        f.post(q, io);
    }
    f.kick(q);
}

fn run_round(sock: &Path, stop: Stop, write: bool, round: usize) -> std::io::Result<()> {
    let opts = Options::default();
    match stop {
        Stop::GetVringBase => {
            let mut f = Frontend::start(sock, &opts)?;
            fill(&mut f, 0, write, round);
            let base = f.get_vring_base(0)?;
            // Nothing lost: every request the backend popped has completed (the drain
            // finished before the reply), and no more than were posted.
            let done = f.reap(0);
            assert!(base as usize <= DEPTH, "GET_VRING_BASE returned {base}");
            assert_eq!(
                done.len(),
                base as usize,
                "requests taken from the ring but not completed at GET_VRING_BASE"
            );
            assert!(
                done.iter().all(|c| c.status == Some(S_OK)),
                "I/O error: {done:?}"
            );
        }
        Stop::ResetOwner => {
            let mut f = Frontend::start(sock, &opts)?;
            fill(&mut f, 0, write, round);
            f.reset_owner()?;
        }
        Stop::Close => {
            let mut f = Frontend::start(sock, &opts)?;
            fill(&mut f, 0, write, round);
            drop(f);
        }
        Stop::Sigkill => sigkill_frontend(sock, write, round)?,
        Stop::AliasedRings => {
            let mut f = Frontend::start(sock, &opts)?;
            // Queue 1 is told queue 0's rings: two workers pop one avail ring.
            let (desc, avail, used) = {
                let q0 = f.queue(0);
                (q0.desc, q0.avail, q0.used)
            };
            let kick = f.queue(0).kick.as_raw_fd();
            let call = f.queue(0).call.as_raw_fd();
            f.set_vring_num(1, opts.queue_size)?;
            f.set_vring_addr(1, desc, avail, used)?;
            f.set_vring_base(1, 0)?;
            f.set_vring_fd(FrontendReq::SET_VRING_CALL, 1, Some(call))?;
            f.set_vring_fd(FrontendReq::SET_VRING_KICK, 1, Some(kick))?;
            f.set_vring_enable(1, true)?;
            fill(&mut f, 0, write, round);
            // Both stop: each reply must come (what the used ring holds is garbage by
            // construction and not looked at).
            f.get_vring_base(0)?;
            f.get_vring_base(1)?;
        }
    }
    Ok(())
}

/// Starts this binary as a frontend process that fills a queue and then waits to be
/// killed; kills it with SIGKILL once it says its I/O is in flight.
fn sigkill_frontend(sock: &Path, write: bool, round: usize) -> std::io::Result<()> {
    let mut child = Command::new(std::env::current_exe()?)
        .args([
            "--exact",
            "frontend_process",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, sock)
        .env("EXPORT_STRESS_CHILD_WRITE", if write { "1" } else { "0" })
        .env("EXPORT_STRESS_CHILD_ROUND", round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    // The test harness prints its own lines first; ours says the I/O is in flight.
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let ready = loop {
        match lines.next() {
            // The harness's "test frontend_process ... " has no newline of its own.
            Some(Ok(line)) if line.trim_end().ends_with("IN FLIGHT") => break true,
            Some(Ok(line)) => seen.push(line),
            _ => break false,
        }
    };
    child.kill()?;
    child.wait()?;
    if !ready {
        return Err(std::io::Error::other(format!(
            "the frontend process did not get its I/O in flight: {seen:?}"
        )));
    }
    Ok(())
}

/// Not a test of its own: the frontend process of [`Stop::Sigkill`] (does nothing
/// unless this binary was started by [`sigkill_frontend`]).
#[test]
fn frontend_process() {
    let Some(sock) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let write = std::env::var("EXPORT_STRESS_CHILD_WRITE").as_deref() == Ok("1");
    let round: usize = std::env::var("EXPORT_STRESS_CHILD_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let mut f = Frontend::start(Path::new(&sock), &Options::default()).expect("child connects");
    fill(&mut f, 0, write, round);
    // Straight to fd 1: `println!` would be captured by the test harness.
    let mut out = std::io::stdout().lock();
    writeln!(out, "IN FLIGHT")
        .and_then(|()| out.flush())
        .unwrap();
    drop(out);
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

/// A fresh frontend writes a round-specific pattern above the stress area, reads it
/// back and compares; also reads the first in-flight sector (the backend must answer).
fn verify(sock: &Path, round: usize) -> std::io::Result<()> {
    let mut f = Frontend::start(sock, &Options::default())?;
    let sector = VERIFY_BASE + (round as u64 % 1024) * IO_SECTORS;
    let pattern: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(31) as usize ^ round) as u8)
        .collect();
    let status = f.write(0, sector, &pattern)?;
    if status != S_OK {
        return Err(std::io::Error::other(format!("write status {status}")));
    }
    let (status, data) = f.read(0, sector, 4096)?;
    if status != S_OK || data != pattern {
        return Err(std::io::Error::other(format!(
            "read back status {status}, data {}",
            if data == pattern { "equal" } else { "differs" }
        )));
    }
    let (status, _) = f.read(0, 0, 4096)?;
    if status != S_OK {
        return Err(std::io::Error::other(format!("read status {status}")));
    }
    Ok(())
}
