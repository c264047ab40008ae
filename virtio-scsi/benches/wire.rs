//! Request layout parsing and response encoding (the per-request cost of the wire
//! format, without queues or I/O).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use virtio_scsi::wire;

fn bench(c: &mut Criterion) {
    let mut req = vec![0u8; wire::CMD_HDR + 32];
    req[..8].copy_from_slice(&wire::encode_lun(0, 1));
    req[wire::CMD_HDR] = 0x28;
    let mut g = c.benchmark_group("virtio-scsi");
    g.bench_function("parse command header", |b| {
        b.iter(|| wire::parse_cmd(black_box(&req), 32))
    });
    let resp = wire::CmdResponse {
        sense_len: 0,
        resid: 0,
        status: 0,
        response: 0,
        sense: Default::default(),
    };
    g.bench_function("encode response", |b| {
        b.iter(|| black_box(&resp).encode(96))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
