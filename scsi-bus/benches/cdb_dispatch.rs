//! CDB dispatch: parsing alone, and whole emulated commands through the bus (lookup
//! under an RCU guard, unit-attention check, the disk's answer copied to guest RAM).
//! No I/O: the numbers are the per-command cost of the SCSI layer itself.

use std::hint::black_box;
use std::sync::Arc;

use aio_context::AioContext;
use block_dma::{
    BackendInfo, BlockBackend, BlockOp, DmaMemory, Done, Drive, Errno, ErrorPolicy, Ticket,
};
use criterion::{Criterion, criterion_group, criterion_main};
use ram_block::{Backing, RamBlock, RamList};
use scsi::{DataBuffer, DataDirection, HdOptions, ScsiBus, ScsiHd, ScsiRequest};
use vm_memory::GuestAddress;

/// A backend the emulated commands never reach.
struct NoIo(BackendInfo);

impl BlockBackend for NoIo {
    fn info(&self) -> &BackendInfo {
        &self.0
    }
    fn submit(&self, _: &AioContext, _: BlockOp, _: Done) -> Result<Ticket, Errno> {
        Err(Errno::EIO)
    }
    fn cancel(&self, _: &AioContext, _: Ticket) {}
}

fn bench(c: &mut Criterion) {
    let info = BackendInfo {
        size: 1 << 30,
        read_only: false,
        request_alignment: 1,
        memory_alignment: 1,
        discard: true,
        write_zeroes: true,
        direct: false,
    };
    let drive = Drive::new("d", "n", Arc::new(NoIo(info)), ErrorPolicy::default(), None);
    let bus = ScsiBus::root("scsi0.0", |_| {});
    let hd = ScsiHd::new("disk0", drive, HdOptions::default()).unwrap();
    let _ = hd.control();
    bus.plug(0, 0, Box::new(hd)).unwrap();
    let ram = RamList::new();
    ram.add(
        RamBlock::new(
            "ram",
            GuestAddress(0),
            1 << 20,
            Backing::Memfd { huge_pages: false },
        )
        .unwrap(),
    )
    .unwrap();
    let ctx = AioContext::new().unwrap();
    let mem = DmaMemory::new(ram);

    let mut g = c.benchmark_group("cdb");
    let read16 = [0x88, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 8, 0, 0];
    g.bench_function("parse READ(16)", |b| {
        b.iter(|| scsi::cdb::parse(black_box(&read16)))
    });
    let cmds: [(&str, &[u8]); 4] = [
        ("TEST UNIT READY", &[0, 0, 0, 0, 0, 0]),
        ("INQUIRY", &[0x12, 0, 0, 0, 36, 0]),
        (
            "READ CAPACITY(16)",
            &[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        ),
        ("REPORT LUNS", &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]),
    ];
    for (name, cdb) in cmds {
        g.bench_function(format!("dispatch {name}"), |b| {
            b.iter(|| {
                let req = ScsiRequest {
                    cdb: cdb.into(),
                    data: DataBuffer {
                        mem: mem.clone(),
                        sg: [(0x1000, 512)].into_iter().collect(),
                        dir: DataDirection::FromDevice,
                    },
                };
                bus.execute(
                    &ctx,
                    0,
                    0,
                    req,
                    scsi::ScsiDone::new(|r| {
                        black_box(r);
                    }),
                )
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
