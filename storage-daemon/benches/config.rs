//! The daemon's own hot path: reading a command line (or a QMP `block-export-add`'s
//! options, which take the same reader) into a configuration.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};

/// A command line of the size a management tool writes: two images, four exports on
/// two iothreads, a QMP monitor.
fn command_line() -> Vec<String> {
    let mut args = vec![
        "--object".to_owned(),
        "iothread,id=io0,poll-max-ns=0".to_owned(),
        "--object".to_owned(),
        "iothread,id=io1".to_owned(),
        "--chardev".to_owned(),
        "socket,id=mon0,path=/run/sd/qmp.sock,server=on,wait=off".to_owned(),
        "--monitor".to_owned(),
        "chardev=mon0".to_owned(),
    ];
    for i in 0..2 {
        args.push("--blockdev".to_owned());
        args.push(format!(
            "driver=file,node-name=file{i},filename=/var/lib/images/disk{i}.img,\
             cache.direct=on,aio=io_uring"
        ));
        args.push("--blockdev".to_owned());
        args.push(format!("driver=raw,node-name=disk{i},file=file{i}"));
    }
    for i in 0..4 {
        let kind = ["vhost-user-blk", "vhost-user-scsi"][i % 2];
        args.push("--export".to_owned());
        args.push(format!(
            "type={kind},id=exp{i},node-name=disk{},addr.type=unix,\
             addr.path=/run/sd/exp{i}.sock,writable=on,num-queues=4,iothread=io{}",
            i % 2,
            i / 2
        ));
    }
    args
}

fn parse(c: &mut Criterion) {
    let args = command_line();
    c.bench_function("parse_args/4-exports", |b| {
        b.iter(|| storage_daemon::parse_args(black_box(&args)).unwrap())
    });
    let bad = ["--export".to_owned(), "type=nbd,id=e".to_owned()];
    c.bench_function("parse_args/refused", |b| {
        b.iter(|| storage_daemon::parse_args(black_box(&bad)).unwrap_err())
    });
}

criterion_group!(benches, parse);
criterion_main!(benches);
