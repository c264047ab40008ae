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
