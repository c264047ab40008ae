//! IDE data paths through the port interface: a PIO READ SECTORS of one sector
//! (IDENTIFY-style polling, 256 data-port reads) and a READ DMA of 64 KiB through a
//! one-entry PRD table. The image is a temp file on io_uring; peers (QEMU) are in
//! `benches/boot-compare`.

use std::io::Write;
use std::sync::Arc;

use aio_context::AioContext;
use block_dma::{DmaMemory, Drive, ErrorPolicy, FileBackend, FileOptions};
use criterion::{Criterion, criterion_group, criterion_main};
use ide::{IdeController, IdeDevice};
use io_bus::BusDevice;
use ram_block::{Backing, RamBlock, RamList};
use vm_memory::{Bytes, GuestAddress};

struct NoIrq;
impl pci::IrqLine for NoIrq {
    fn set_level(&self, _: u32, _: bool) {}
}

fn status(cmd: &Arc<dyn BusDevice>) -> u8 {
    let mut b = [0u8];
    cmd.read(7, &mut b);
    b[0]
}

fn bench(c: &mut Criterion) {
    let ctx = AioContext::new().expect("AioContext");
    if !ctx.supports_io_uring_ops() {
        eprintln!("SKIPPED ide_io: io_uring operations are not available on this kernel");
        return;
    }
    let mut img = tempfile::NamedTempFile::new().expect("temp file");
    img.write_all(&vec![0x5a; 1 << 20]).expect("image");
    let backend = FileBackend::open(&FileOptions::new(img.path())).expect("open");
    let drive = Drive::new("d", "d", Arc::new(backend), ErrorPolicy::default(), None);
    let ram = RamList::new();
    ram.add(
        RamBlock::new(
            "ram",
            GuestAddress(0),
            1 << 20,
            Backing::Anonymous { huge_pages: false },
        )
        .expect("ram"),
    )
    .expect("add");
    let ide = IdeController::new(
        DmaMemory::new(ram.clone()),
        Arc::new(NoIrq),
        ctx.handle(),
        [[Some(IdeDevice::disk("d", drive)), None], [None, None]],
    )
    .expect("controller");
    let cmd = ide.command_block(0);
    let bm = ide.bus_master();
    let wait = |cmd: &Arc<dyn BusDevice>| {
        while status(cmd) & 0x80 != 0 {
            ctx.poll(true);
        }
    };
    let mut g = c.benchmark_group("ide");
    g.bench_function("pio_read_sector", |b| {
        b.iter(|| {
            for (reg, v) in [(6, 0xe0), (2, 1), (3, 8), (4, 0), (5, 0), (7, 0x20)] {
                cmd.write(reg, &[v]);
            }
            wait(&cmd);
            let mut w = [0u8; 2];
            for _ in 0..256 {
                cmd.read(0, &mut w);
            }
        })
    });
    // PRD table at 0x1000: one 64 KiB entry (count 0) at 0x10000.
    let prd = 0x10000u64 | 1 << 63;
    ram.memory()
        .write_obj(prd.to_le(), GuestAddress(0x1000))
        .expect("prd");
    bm.write(4, &0x1000u32.to_le_bytes());
    g.bench_function("dma_read_64k", |b| {
        b.iter(|| {
            for (reg, v) in [(6, 0xe0), (2, 128), (3, 0), (4, 0), (5, 0), (7, 0xc8)] {
                cmd.write(reg, &[v]);
            }
            bm.write(0, &[0x09]);
            wait(&cmd);
            while status(&cmd) & 0x08 != 0 {
                ctx.poll(true);
            }
            bm.write(0, &[0x08]);
            bm.write(2, &[0x06]);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
