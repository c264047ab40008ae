//! The protocol's hot path without a socket: framing, parsing, dispatch and the reply
//! line, for a typical request and for a large one.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use qmp::{Commands, Framer, Session, no_arguments};
use std::hint::black_box;

fn table() -> Commands {
    let c = Commands::new();
    c.register("query-status", |args| {
        no_arguments(args)?;
        Ok(serde_json::json!({"status": "running", "running": true}))
    })
    .expect("fresh table");
    c.register("echo", |args| Ok(serde_json::Value::Object(args.clone())))
        .expect("fresh table");
    c
}

fn bench(c: &mut Criterion) {
    let commands = table();
    let small = br#"{"execute": "query-status", "id": 1}"#.to_vec();
    let big = format!(
        r#"{{"execute": "echo", "arguments": {{"blob": "{}"}}}}"#,
        "x".repeat(64 << 10)
    )
    .into_bytes();
    let mut group = c.benchmark_group("qmp");
    for (name, input) in [("query-status", small), ("echo-64KiB", big)] {
        group.throughput(Throughput::Bytes(input.len() as u64));
        group.bench_function(name, |b| {
            let mut framer = Framer::new(qmp::DEFAULT_MAX_MESSAGE_LEN);
            let mut session = Session::default();
            let mut frames = Vec::new();
            framer.feed(br#"{"execute":"qmp_capabilities"}"#, &mut frames);
            for f in frames.drain(..) {
                session.respond(&commands, f);
            }
            b.iter(|| {
                framer.feed(black_box(&input), &mut frames);
                for f in frames.drain(..) {
                    black_box(session.respond(&commands, f));
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
