//! The monitor's own paths, without a machine: `device_add`'s JSON arguments turned
//! into the properties a device factory reads, and a run state command (`query-status`)
//! dispatched through the VM monitor's command table. The plug itself (KVM, PCI, a
//! drive) is the device crates' and kvm-machine's to measure.

use std::hint::black_box;
use std::rc::Rc;

use aio_context::AioContext;
use criterion::{Criterion, criterion_group, criterion_main};
use pc_devices::device_opts;
use pc_devices::monitor::{MachineHooks, Monitor};
use runstate::RunStateMachine;
use serde_json::{Value, json};

fn object(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        _ => unreachable!("an object"),
    }
}

fn bench(c: &mut Criterion) {
    let args = object(json!({
        "driver": "scsi-hd", "drive": "d1", "bus": "scsi0.0", "scsi-id": 3, "lun": 0,
        "id": "hd1", "write-cache": false, "bootindex": 2
    }));
    c.bench_function("device_add_arguments_to_properties", |b| {
        b.iter(|| {
            let mut opts = device_opts(black_box(&args)).expect("scalar arguments");
            black_box(opts.string("drive"))
        })
    });

    let ctx = AioContext::new().expect("AioContext");
    let vm = RunStateMachine::new(ctx.handle().bh_scheduler());
    let monitor =
        Monitor::new(&ctx, &vm, Rc::new(MachineHooks::new(|| {}, || {}))).expect("monitor");
    let none = serde_json::Map::new();
    c.bench_function("query_status_dispatch", |b| {
        b.iter(|| black_box(monitor.commands().call("query-status", black_box(&none))))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
