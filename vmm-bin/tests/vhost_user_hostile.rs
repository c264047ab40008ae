//! The vhost-user-blk export (`vmm-bin storage-daemon`) against frontends that
//! misbehave (issue 14, sections 2 to 4): each test plays one hostile frontend with
//! the raw frontend of `common::vhost_frontend`, then checks that the daemon still
//! runs and that a fresh frontend can write and read back.

mod common;

use common::vhost_frontend::*;

/// The test frontend itself: 32 writes in flight, then 32 reads of them, a flush.
#[test]
fn frontend_runs_queue_depth_32() {
    let img = image("hostile-qd32.img", 16);
    let sock = socket_path("hostile-qd32.sock");
    let mut export = Export::start(&img, &sock, ",num-queues=2");
    let mut f = Frontend::start(
        &sock,
        &Options {
            num_queues: 2,
            ..Options::default()
        },
    )
    .unwrap();
    assert_eq!(f.capacity().unwrap(), 16 << 11);
    for q in 0..2u16 {
        let pattern = |i: u64| vec![(i as u8) ^ (q as u8 * 0x55); 4096];
        for i in 0..32u64 {
            f.post(
                q,
                Io::Write {
                    sector: (u64::from(q) * 32 + i) * 8,
                    data: &pattern(i),
                },
            );
        }
        f.kick(q);
        let done = f.wait(q, 32, TIMEOUT).unwrap();
        assert!(done.iter().all(|c| c.status == Some(S_OK)));
        let heads: Vec<u16> = (0..32u64)
            .map(|i| {
                f.post(
                    q,
                    Io::Read {
                        sector: (u64::from(q) * 32 + i) * 8,
                        len: 4096,
                    },
                )
            })
            .collect();
        f.kick(q);
        let done = f.wait(q, 32, TIMEOUT).unwrap();
        for c in done {
            let i = heads.iter().position(|h| *h == c.head).unwrap() as u64;
            assert_eq!(c.status, Some(S_OK));
            assert!(
                c.data == pattern(i),
                "queue {q} request {i} read back wrong data"
            );
        }
        assert_eq!(f.flush(q).unwrap(), S_OK);
    }
    assert_eq!(f.get_vring_base(0).unwrap(), 65);
    drop(f);
    assert!(export.alive());
    export.check_serves(4096);
}

/// Runs `vmm-bin storage-daemon ARGS`, which must refuse to start: exit status 1
/// within the deadline (not serving) and `message` on stderr.
fn refused(args: &[&str], message: &str) {
    let mut all = vec!["storage-daemon"];
    all.extend_from_slice(args);
    let mut daemon = common::Vm::start(&all);
    let status = daemon.wait_exit(std::time::Duration::from_secs(10));
    let logged = daemon.wait_stderr(message, std::time::Duration::from_secs(5));
    let stderr = daemon.stderr();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "the daemon accepted {args:?} (it was still serving at the deadline, or exited otherwise); stderr: {stderr}"
    );
    assert!(logged, "{args:?}: wanted '{message}' in: {stderr}");
}

/// Issue 14 section 4: `addr.path=` (empty) bound a Linux abstract socket, which has
/// no permissions, so any local user could use a writable export. Refused.
/// (qemu-storage-daemon 10 listens on a random /tmp/qemu-socket-XXXXXX instead.)
#[test]
fn empty_socket_path_is_refused() {
    let img = image("hostile-abstract.img", 1);
    let blockdev = format!("driver=file,node-name=file0,filename={}", img.display());
    refused(
        &[
            "--blockdev",
            &blockdev,
            "--export",
            "type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path=,writable=on",
        ],
        "addr.path must not be empty",
    );
}

/// Issue 14 section 4: two exports on one socket path (the second unlinked the
/// first's socket), a duplicate node-name and a duplicate export id were accepted.
/// qemu-storage-daemon 10 refuses the two duplicates ("Duplicate nodes with
/// node-name='f0'", "Block export id 'e0' is already in use") and accepts the shared
/// path (the second export steals it); we refuse all three.
#[test]
fn duplicate_paths_nodes_and_ids_are_refused() {
    let img = image("hostile-dup.img", 1);
    let sock = socket_path("hostile-dup.sock");
    let sock2 = socket_path("hostile-dup2.sock");
    let file = |node: &str| format!("driver=file,node-name={node},filename={}", img.display());
    let export = |id: &str, node: &str, path: &std::path::Path| {
        format!(
            "type=vhost-user-blk,id={id},node-name={node},addr.type=unix,addr.path={}",
            path.display()
        )
    };
    let (f0, f1) = (file("f0"), file("f1"));
    let same_path = format!(
        "{}/../{}/hostile-dup.sock",
        sock.parent().unwrap().display(),
        sock.parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
    );
    let e0 = export("e0", "f0", &sock);
    // Two blockdevs and two exports.
    let two = |b: [&str; 2], e: [&str; 2], message: &str| {
        refused(
            &[
                "--blockdev",
                b[0],
                "--blockdev",
                b[1],
                "--export",
                e[0],
                "--export",
                e[1],
            ],
            message,
        )
    };
    let e1 = export("e1", "f1", same_path.as_ref());
    two(
        [&f0, &f1],
        [&e0, &e1],
        "is already the socket of export 'e0'",
    );
    let e1 = export("e1", "f0", &sock2);
    two(
        [&f0, &f0],
        [&e0, &e1],
        "Duplicate nodes with node-name='f0'",
    );
    let e0b = export("e0", "f1", &sock2);
    two(
        [&f0, &f1],
        [&e0, &e0b],
        "Block export id 'e0' is already in use",
    );
}

/// Issue 14 section 4: a `serial` longer than virtio-blk's 20-byte device ID was cut
/// silently; refused (qemu-storage-daemon's export has no `serial` option).
#[test]
fn long_serial_is_refused() {
    let img = image("hostile-serial.img", 1);
    let sock = socket_path("hostile-serial.sock");
    let blockdev = format!("driver=file,node-name=file0,filename={}", img.display());
    let export = format!(
        "type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path={},serial=abcdefghijklmnopqrstu",
        sock.display()
    );
    refused(
        &["--blockdev", &blockdev, "--export", &export],
        "at most 20",
    );
}

/// Issue 14 section 4: a message with more fds than the protocol library takes (32)
/// lost its first bytes with the fds and the connection hung. It is closed with a
/// logged error, and the export serves the next frontend (qemu-storage-daemon 10 does
/// the same: "A maximum of 8 fds are allowed, however got 16 fds now").
#[test]
fn too_many_fds_close_the_connection() {
    use std::os::fd::AsRawFd;
    let (_, mut export) = Export::scratch("hostile-fds", 1, "");
    let mut f = Frontend::connect(&export.sock, &Options::default()).unwrap();
    f.negotiate().unwrap();
    let fd = f.mem().fd().as_raw_fd();
    f.send(
        vhost::vhost_user::message::FrontendReq::GET_FEATURES,
        &[],
        &[fd; 40],
        false,
    )
    .unwrap();
    assert!(
        f.closed_within(TIMEOUT),
        "the connection hangs after a message with 40 fds"
    );
    assert!(export.wait_log("more than the 32 supported", TIMEOUT));
    assert!(export.alive());
    export.check_serves(0);
}

/// A `GET_FEATURES` header (version 1, no payload), to be sent in pieces.
fn get_features_header() -> Vec<u8> {
    let code = u32::from(vhost::vhost_user::message::FrontendReq::GET_FEATURES);
    [code, 1, 0].iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// Found by fuzzing (`messages`): a header whose first 8 bytes the export had read
/// when its last 4 came, in a segment of their own with 40 fds. The protocol library's
/// read of those 4 bytes failed with ENOBUFS (fds truncated) after the kernel had
/// consumed them, and it retried as if nothing had been read: the next bytes finished
/// the header, and the export answered a request that was never sent as such. The
/// server now waits until the whole header is there, peeks at it with its fds, and
/// refuses it: the connection closes, unanswered, with a logged error.
///
/// The frontend sends the header's last 4 bytes only once the export has consumed the
/// first 8 (the socket's unread bytes, `SIOCOUTQ`, drop to zero), or after 2 s: the
/// fixed export never consumes a partial header.
#[test]
fn too_many_fds_on_a_header_s_second_segment_close_the_connection() {
    use std::io::Read;
    use std::os::fd::AsRawFd;
    let (_, mut export) = Export::scratch("hostile-split-fds", 1, "");
    let f = Frontend::connect(&export.sock, &Options::default()).unwrap();
    let fd = f.mem().fd().as_raw_fd();
    let header = get_features_header();
    f.send_segment(&header[..8], &[]).unwrap();
    let unread = || {
        let mut n: libc::c_int = 0;
        // SAFETY: SIOCOUTQ writes one int, `n`, which outlives the call.
        let rc = unsafe { libc::ioctl(f.socket().as_raw_fd(), libc::TIOCOUTQ, &mut n) };
        assert_eq!(rc, 0, "SIOCOUTQ: {}", std::io::Error::last_os_error());
        n
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while unread() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    f.send_segment(&header[8..], &[fd; 40]).unwrap();
    // What the old export read as the rest of the header (a size of 0), then a whole
    // GET_FEATURES: it answered both.
    f.send_segment(&0u32.to_le_bytes(), &[]).unwrap();
    f.send_segment(&header, &[]).unwrap();
    let mut sock = f.socket().try_clone().unwrap();
    let mut answered = Vec::new();
    let end = sock.read_to_end(&mut answered);
    assert!(
        answered.is_empty(),
        "the export answered {} bytes after losing a header with 40 fds",
        answered.len()
    );
    assert!(
        end.is_ok()
            || end
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the connection stayed open after a header with 40 fds: {end:?}"
    );
    assert!(export.wait_log("more than the 32 supported", TIMEOUT));
    assert!(export.alive());
    export.check_serves(0);
}

/// A header split after a first segment that carries fds is refused: the library's
/// read of the rest could meet more fds than it takes (the test above).
#[test]
fn a_header_split_after_its_fds_closes_the_connection() {
    use std::os::fd::AsRawFd;
    let (_, mut export) = Export::scratch("hostile-split-header", 1, "");
    let mut f = Frontend::connect(&export.sock, &Options::default()).unwrap();
    f.negotiate().unwrap();
    let fd = f.mem().fd().as_raw_fd();
    let header = get_features_header();
    f.send_segment(&header[..8], &[fd]).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(50));
    // The export may have refused the first part already (then this fails: EPIPE).
    let _ = f.send_segment(&header[8..], &[]);
    assert!(
        f.closed_within(TIMEOUT),
        "a header split after its fds was served"
    );
    assert!(export.wait_log("split after its first 8 bytes and their 1 fd(s)", TIMEOUT));
    assert!(export.alive());
    export.check_serves(0);
}

/// Found by fuzzing (`messages`), in the fix above: a frontend that sent part of a header
/// and then shut down its writing side hung the export's connection. The wait for the
/// rest of the header asked nix's `poll` for POLLRDHUP, which nix has no name for: its
/// `revents()` read the answer as "nothing", so the export waited for bytes that could
/// not come. Now it sees the hang-up, the library reads the partial header, and the
/// connection closes.
#[test]
fn part_of_a_header_then_a_hang_up_closes_the_connection() {
    let (_, mut export) = Export::scratch("hostile-partial-header", 1, "");
    let mut f = Frontend::connect(&export.sock, &Options::default()).unwrap();
    f.negotiate().unwrap();
    f.send_segment(&get_features_header()[..1], &[]).unwrap();
    f.socket().shutdown(std::net::Shutdown::Write).unwrap();
    assert!(
        f.closed_within(TIMEOUT),
        "the export waits for the rest of a header after the frontend hung up"
    );
    assert!(export.alive());
    export.check_serves(0);
}

/// A header that arrives in pieces without fds is still served (a slow frontend):
/// the server waits for the whole header before it lets the library read.
#[test]
fn a_header_in_pieces_without_fds_is_served() {
    let (_, export) = Export::scratch("hostile-slow-header", 1, "");
    let mut f = Frontend::connect(&export.sock, &Options::default()).unwrap();
    f.negotiate().unwrap();
    let code = vhost::vhost_user::message::FrontendReq::GET_FEATURES;
    let header = get_features_header();
    for piece in header.chunks(5) {
        f.send_segment(piece, &[]).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let features = f.recv_reply(code).unwrap();
    assert_eq!(features.len(), 8);
    assert_eq!(
        u64::from_le_bytes(features.try_into().unwrap()),
        f.get_features().unwrap()
    );
    drop(export);
}

/// Issue 14 section 4: a write whose chain is longer than one submission (1024
/// iovecs) and whose last buffer lies outside guest memory returned IOERR after its
/// first part had reached the image. The whole chain is checked before any I/O: IOERR
/// and the image untouched (qemu-storage-daemon 10 refuses the chain before any I/O,
/// "vu_panic: virtio: too many descriptors in indirect table", and drops the
/// connection).
#[test]
fn chain_with_a_bad_last_buffer_leaves_the_image_untouched() {
    const BUFFERS: u64 = 1100;
    let (img, mut export) = Export::scratch("hostile-chain", 4, "");
    let mut f = export.frontend();
    assert_ne!(
        f.features & F_INDIRECT_DESC,
        0,
        "indirect descriptors offered"
    );
    let base = f.scratch();
    let (header, status, table, data) = (base, base + 16, base + 32, base + 32 + 16 * 1200);
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&T_OUT.to_le_bytes());
    f.mem().write(header, &h);
    f.mem().write(data, &vec![0xa5; 512 * BUFFERS as usize]);
    let mut chain = vec![RawDesc {
        addr: header,
        len: 16,
        write: false,
    }];
    chain.extend((0..BUFFERS).map(|i| RawDesc {
        addr: if i + 1 == BUFFERS {
            f.mem().len() + (1 << 30)
        } else {
            data + 512 * i
        },
        len: 512,
        write: false,
    }));
    chain.push(RawDesc {
        addr: status,
        len: 1,
        write: true,
    });
    f.mem().write(status, &[0xff]);
    f.post_indirect(0, table, &chain);
    f.kick(0);
    f.wait(0, 1, TIMEOUT).unwrap();
    assert_eq!(f.mem().read(status, 1)[0], S_IOERR);
    let image = std::fs::read(&img).unwrap();
    let written = image.iter().filter(|b| **b != 0).count();
    assert_eq!(
        written, 0,
        "{written} bytes of a failed write reached the image"
    );
    drop(f);
    assert!(export.alive());
    export.check_serves(0);
}

/// Clears `O_NONBLOCK` on `fd`'s open file description, which the daemon's copy of
/// the fd shares: what a hostile frontend can do to every fd it passes.
fn make_blocking(fd: std::os::fd::BorrowedFd<'_>) {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    fcntl(fd, FcntlArg::F_SETFL(OFlag::empty())).unwrap();
}

/// Stops every thread of `pid` (SIGSTOP, then waits until each task reads as
/// stopped), so that the test can change shared state between two of its steps.
fn freeze(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::SIGSTOP,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        let running = tasks.flatten().any(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let state = stat.rsplit(')').next().unwrap_or("").trim_start();
            !state.starts_with('T') && !state.starts_with('t')
        });
        if !running {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never stopped"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

fn thaw(pid: u32) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::SIGCONT,
    )
    .unwrap();
}

/// Issue 14 section 3: the frontend clears `O_NONBLOCK` on its kick eventfd and
/// drains it itself between the daemon's wakeup and its read. The iothread blocked
/// in read forever, and the next GET_VRING_BASE (a queue stop) wedged the export.
/// The daemon is frozen for the two steps so that the interleaving is exact.
/// (qemu-storage-daemon 10 is not affected: its GET_VRING_BASE replies.)
#[test]
fn kick_fd_made_blocking_and_drained_by_the_frontend() {
    let (_, mut export) = Export::scratch("hostile-kick", 1, "");
    let mut f = export.frontend();
    assert_eq!(f.write(0, 0, &[7; 512]).unwrap(), S_OK);
    use std::os::fd::AsFd;
    make_blocking(f.queue(0).kick.as_fd());
    let pid = export.daemon.child.id();
    freeze(pid);
    f.kick(0); // the daemon's poll of the kick fd completes now...
    f.queue(0).kick.read().unwrap(); // ...and the frontend takes the count back
    thaw(pid);
    // Let the iothread run its kick handler (if it blocks, this test cannot miss it:
    // the handler has no other way out).
    std::thread::sleep(std::time::Duration::from_millis(300));
    let base = f.get_vring_base(0);
    assert!(
        base.is_ok(),
        "GET_VRING_BASE got no reply: the iothread is blocked ({base:?})"
    );
    drop(f);
    assert!(export.alive());
    export.check_serves(8);
}

/// Two requests one after the other on a connection whose call fd was sabotaged:
/// both must complete (the iothread still runs) and a queue stop must reply.
fn still_serves_without_calls(f: &mut Frontend) {
    for i in 0..2u64 {
        f.post(
            0,
            Io::Write {
                sector: i,
                data: &[1; 512],
            },
        );
        f.kick(0);
        let done = f.wait_polling(0, 1, TIMEOUT);
        assert!(
            done.is_ok(),
            "request {i} never completed: the iothread is blocked on the call fd"
        );
    }
    assert!(f.get_vring_base(0).is_ok(), "GET_VRING_BASE got no reply");
}

/// Issue 14 section 3: a call eventfd at its maximum count with `O_NONBLOCK` cleared
/// blocked the iothread in write() at the first completion (qemu-storage-daemon 10
/// too: its second request never completes, GET_VRING_BASE gets no reply).
#[test]
fn call_eventfd_at_its_maximum_count() {
    let (_, mut export) = Export::scratch("hostile-call", 1, "");
    let mut f = export.frontend();
    use std::os::fd::AsFd;
    let _ = f.queue(0).call.read(); // zero, so that the next write fills it exactly
    make_blocking(f.queue(0).call.as_fd());
    f.queue(0).call.write(u64::MAX - 1).unwrap();
    still_serves_without_calls(&mut f);
    drop(f);
    assert!(export.alive());
    export.check_serves(8);
}

/// Issue 14 section 3: a full pipe (`O_NONBLOCK` cleared) as the call fd blocked the
/// iothread in write(). Refused at SET_VRING_CALL (the spec's call fd is an eventfd);
/// if it were accepted, it must not block. (qemu-storage-daemon 10 accepts the pipe
/// and blocks as the call-eventfd case does.)
#[test]
fn full_pipe_as_call_fd() {
    use std::os::fd::{AsFd, AsRawFd};
    let (_, mut export) = Export::scratch("hostile-pipe", 1, "");
    let mut f = export.frontend();
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_NONBLOCK).unwrap();
    while nix::unistd::write(&w, &[0u8; 4096]).is_ok() {}
    let set = f.set_vring_fd(
        vhost::vhost_user::message::FrontendReq::SET_VRING_CALL,
        0,
        Some(w.as_raw_fd()),
    );
    if set.is_ok() {
        // After the daemon has set O_NONBLOCK on it, if it does.
        make_blocking(w.as_fd());
        still_serves_without_calls(&mut f);
    }
    drop((f, r, w));
    assert!(export.alive());
    export.check_serves(8);
}

/// Issue 14 section 2: SET_MEM_TABLE, then `ftruncate(memfd, 0)`, then a kick killed
/// the daemon with SIGBUS (qemu-storage-daemon 10 dies too, signal 7). The fault ends only that
/// connection, with a logged error: the export serves the next frontend, and another
/// export of the same daemon, with requests in flight meanwhile, never notices.
#[test]
fn truncated_frontend_memory_ends_only_that_connection() {
    let (img_a, img_b) = (
        image("hostile-sigbus-a.img", 1),
        image("hostile-sigbus-b.img", 1),
    );
    let (sock_a, sock_b) = (
        socket_path("hostile-sigbus-a.sock"),
        socket_path("hostile-sigbus-b.sock"),
    );
    let blockdev = |node: &str, img: &std::path::Path| {
        format!("driver=file,node-name={node},filename={}", img.display())
    };
    let export = |id: &str, node: &str, sock: &std::path::Path| {
        format!(
            "type=vhost-user-blk,id={id},node-name={node},addr.type=unix,addr.path={},writable=on",
            sock.display()
        )
    };
    let (ba, bb) = (blockdev("a", &img_a), blockdev("b", &img_b));
    let (ea, eb) = (export("ea", "a", &sock_a), export("eb", "b", &sock_b));
    // The second export binds last: its socket means both listen.
    let mut daemon = Export::start_args(
        &[
            "--blockdev",
            &ba,
            "--blockdev",
            &bb,
            "--export",
            &ea,
            "--export",
            &eb,
        ],
        &sock_b,
    );
    let mut good = Frontend::start(&sock_b, &Options::default()).unwrap();
    let data = [0x5a; 4096];
    for i in 0..16 {
        good.post(
            0,
            Io::Write {
                sector: i * 8,
                data: &data,
            },
        );
    }
    let mut bad = Frontend::start(&sock_a, &Options::default()).unwrap();
    assert_eq!(bad.write(0, 0, &[1; 512]).unwrap(), S_OK);
    // From here on the test must not touch `bad`'s memory: it faults for us too.
    nix::unistd::ftruncate(bad.mem().fd(), 0).unwrap();
    bad.kick(0); // the daemon reads the avail ring
    good.kick(0);
    assert!(
        bad.closed_within(TIMEOUT),
        "the faulting connection stays open"
    );
    let logged = daemon.wait_log("faulted", TIMEOUT);
    let status = daemon.daemon.child.try_wait().unwrap();
    assert!(status.is_none(), "the daemon died: {status:?}");
    assert!(logged, "no log line about the fault");
    let done = good.wait(0, 16, TIMEOUT).unwrap();
    assert!(done.iter().all(|c| c.status == Some(S_OK)));
    let (status, read) = good.read(0, 8, 4096).unwrap();
    assert_eq!((status, read.as_slice()), (S_OK, &data[..]));
    drop((bad, good));
    check_serves(&sock_a, 16);
}
