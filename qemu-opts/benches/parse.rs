//! qemu-opts alone: parsing the option strings vmm-bin and its storage daemon meet, and
//! taking their keys with the typed accessors. No peer: QEMU's parsers are C inside QEMU.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use qemu_opts::{BootOptions, Grammar, Opts, SizeUnit, SmpTopology, parse_size};

const DRIVE: &str = "file=/var/lib/images/disk,,0.img,format=raw,if=none,id=d0,werror=stop,\
                     rerror=report,cache=none,aio=io_uring,discard=unmap";
const EXPORT: &str = "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,\
                      addr.path=/tmp/vhost.sock,writable=on,num-queues=4,logical-block-size=4096";

fn parse(c: &mut Criterion) {
    let mut g = c.benchmark_group("qemu-opts");
    g.bench_function("parse -drive (QemuOpts)", |b| {
        b.iter(|| Opts::parse("-drive", black_box(DRIVE), Grammar::opts()))
    });
    g.bench_function("parse -device (implied driver)", |b| {
        b.iter(|| {
            Opts::parse(
                "-device",
                black_box("virtio-blk-pci,drive=d0,iothread=io0,id=vblk0,num-queues=2"),
                Grammar::opts().implied("driver"),
            )
        })
    });
    g.bench_function("parse+take --export (keyval)", |b| {
        b.iter(|| -> qemu_opts::Result<u16> {
            let mut kv = Opts::parse("--export", black_box(EXPORT), Grammar::keyval())?;
            for key in ["type", "id", "node-name", "addr.type", "addr.path"] {
                kv.required(key)?;
            }
            kv.flag("writable", false)?;
            kv.number::<u32>("logical-block-size")?;
            let queues = kv.number::<u16>("num-queues")?.unwrap_or(1);
            kv.finish()?;
            Ok(queues)
        })
    });
    g.bench_function("-smp topology", |b| {
        b.iter(|| SmpTopology::parse("-smp", black_box("8,sockets=2,cores=4"), "pc", 255))
    });
    g.bench_function("-boot", |b| {
        b.iter(|| BootOptions::default().apply("-boot", black_box("order=cdn,menu=on,strict=on")))
    });
    g.bench_function("parse_size 1.5G", |b| {
        b.iter(|| parse_size(black_box("1.5G"), SizeUnit::MiB))
    });
    g.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
