//! Option parsing (dotted and JSON `-blockdev`, `-drive`) and node lookup.

use std::hint::black_box;

use block_node::{AttachOptions, BlockdevOptions, NodeRegistry, drive};
use criterion::{Criterion, criterion_group, criterion_main};

const DOTTED: &str = "driver=raw,node-name=disk0,read-only=off,discard=unmap,\
    file.driver=file,file.filename=/var/lib/images/disk0.img,file.cache.direct=on,\
    file.aio=io_uring,file.discard=unmap";
const JSON: &str = r#"{"driver":"raw","node-name":"disk0","read-only":false,"discard":"unmap",
    "file":{"driver":"file","filename":"/var/lib/images/disk0.img","cache":{"direct":true},
    "aio":"io_uring","discard":"unmap"}}"#;

fn parsing(c: &mut Criterion) {
    let mut g = c.benchmark_group("parse");
    g.bench_function("blockdev-dotted", |b| {
        b.iter(|| BlockdevOptions::parse("-blockdev", black_box(DOTTED)).unwrap())
    });
    g.bench_function("blockdev-json", |b| {
        b.iter(|| BlockdevOptions::parse("-blockdev", black_box(JSON)).unwrap())
    });
    g.bench_function("drive", |b| {
        b.iter(|| {
            drive::parse(
                "-drive",
                black_box("file=/img,format=raw,if=none,id=d0,cache=none,werror=stop"),
                &[],
            )
            .unwrap()
        })
    });
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let img = tempfile::NamedTempFile::new().unwrap();
    img.as_file().set_len(1 << 20).unwrap();
    let nodes = NodeRegistry::new();
    for i in 0..64 {
        let text = format!(
            "driver=file,node-name=n{i},filename={}",
            img.path().display()
        );
        nodes
            .add(&BlockdevOptions::parse("-blockdev", &text).unwrap())
            .unwrap();
    }
    let mut g = c.benchmark_group("nodes");
    g.bench_function("contains-64", |b| {
        b.iter(|| nodes.contains(black_box("n42")))
    });
    g.bench_function("attach-release-64", |b| {
        b.iter(|| {
            nodes
                .attach(black_box("n42"), AttachOptions::default())
                .unwrap()
        })
    });
    g.bench_function("query-named-block-nodes-64", |b| {
        b.iter(|| nodes.query_named_block_nodes())
    });
    g.finish();
}

criterion_group!(benches, parsing, lookup);
criterion_main!(benches);
