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
    let stderr = daemon.stderr();
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(1),
        "the daemon accepted {args:?} (it was still serving at the deadline, or exited otherwise); stderr: {stderr}"
    );
    assert!(
        stderr.contains(message),
        "{args:?}: wanted '{message}' in: {stderr}"
    );
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
/// logged error, and the export serves the next frontend.
#[test]
fn too_many_fds_close_the_connection() {
    use std::os::fd::AsRawFd;
    let img = image("hostile-fds.img", 1);
    let sock = socket_path("hostile-fds.sock");
    let mut export = Export::start(&img, &sock, "");
    let mut f = Frontend::connect(&sock, &Options::default()).unwrap();
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

/// Issue 14 section 4: a write whose chain is longer than one submission (1024
/// iovecs) and whose last buffer lies outside guest memory returned IOERR after its
/// first part had reached the image. The whole chain is checked before any I/O: IOERR
/// and the image untouched (qemu-storage-daemon refuses the chain before any I/O too).
#[test]
fn chain_with_a_bad_last_buffer_leaves_the_image_untouched() {
    const BUFFERS: u64 = 1100;
    let img = image("hostile-chain.img", 4);
    let sock = socket_path("hostile-chain.sock");
    let mut export = Export::start(&img, &sock, "");
    let mut f = Frontend::start(&sock, &Options::default()).unwrap();
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
