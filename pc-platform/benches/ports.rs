//! The PC platform's port paths, each what one guest port exit costs in user space
//! (criterion groups). Firmware and early boot run on exactly these: SeaBIOS loads its
//! tables and the kernel through fw_cfg, reads the memory size from CMOS and prints
//! through the UART; a guest without MSI-X takes every PCI interrupt through the
//! PIIX3's PIRQ routing.
//!
//! - `serial`: a THR write (one byte of console output, polled), an LSR read (what a
//!   polling console reads before every byte), and an interrupt-driven byte (THR
//!   write raising the THR-empty interrupt through the irqfd, then the handler's IIR
//!   read).
//! - `cmos`: an index write and data read, of a memory-size register and of an RTC
//!   register (computed from the host clock).
//! - `fw_cfg`: selecting a file's key, one byte through the data port (the traditional
//!   interface reads byte by byte), and a DMA read of a whole 4 KiB file into guest RAM
//!   (descriptor in RAM, address written to the DMA register, transfer in the write).
//! - `piix3_intx`: one level-triggered interrupt through the PIRQ routing (assert,
//!   then deassert), alone on its PIRQ and with another device sharing it.
//!
//! `cargo bench -p pc-platform --bench ports -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use io_bus::BusDevice;
use pc_platform::Piix3Isa;
use pc_platform::cmos::{Cmos, CmosLayout};
use pc_platform::fw_cfg::{FwCfg, dma_control};
use pc_platform::serial::{SerialOut, SerialPort};
use pci::{IrqLine, PciFunction};
use ram_block::{Backing, RamBlock, RamList};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EFD_NONBLOCK, EventFd};

/// UART registers (offsets from COM1's base).
const THR: u64 = 0;
const IER: u64 = 1;
const IIR: u64 = 2;
const LSR: u64 = 5;

fn serial(c: &mut Criterion) {
    let mut group = c.benchmark_group("serial");
    let port = SerialPort::new(EventFd::new(EFD_NONBLOCK).unwrap(), SerialOut::Sink);
    group.bench_function("thr_write", |b| {
        b.iter(|| port.write(THR, &[black_box(b'x')]))
    });
    group.bench_function("lsr_read", |b| {
        let mut d = [0u8];
        b.iter(|| {
            port.read(LSR, &mut d);
            d[0]
        });
    });
    // THR-empty interrupt enabled: the interrupt-driven transmit of one byte. The THR
    // write raises the interrupt (an irqfd write), the guest's handler reads IIR,
    // which acknowledges it (without the read the UART raises it only once).
    let port = SerialPort::new(EventFd::new(EFD_NONBLOCK).unwrap(), SerialOut::Sink);
    port.write(IER, &[0x02]);
    group.bench_function("thr_irq_cycle", |b| {
        let mut iir = [0u8];
        b.iter(|| {
            port.write(THR, &[black_box(b'x')]);
            port.read(IIR, &mut iir);
            assert_eq!(iir[0] & 0x0f, 0x02, "THR empty interrupt pending");
        });
    });
    group.finish();
}

fn cmos(c: &mut Criterion) {
    let mut group = c.benchmark_group("cmos");
    let cmos = Cmos::new(CmosLayout {
        below_4g: 3 << 30,
        above_4g: 1 << 30,
        cpus: 4,
    });
    for (name, index) in [("memory_size", 0x34u8), ("rtc_seconds", 0x00)] {
        group.bench_function(name, |b| {
            let mut d = [0u8];
            b.iter(|| {
                cmos.write(0, &[black_box(index)]);
                cmos.read(1, &mut d);
                d[0]
            });
        });
    }
    group.finish();
}

/// Guest RAM for the fw_cfg DMA buffers.
const DESC: u64 = 0x1000;
const BUFFER: u64 = 0x2000;
const FILE_BYTES: usize = 4096;

fn fw_cfg(c: &mut Criterion) {
    let mut group = c.benchmark_group("fw_cfg");
    // 1 MiB of guest RAM for the descriptor and the buffer.
    let ram = RamList::new();
    let memfd = Backing::Memfd { huge_pages: false };
    ram.add(RamBlock::new("ram", GuestAddress(0), 1 << 20, memfd).unwrap())
        .unwrap();
    let cfg = Arc::new(FwCfg::with_dma(ram.clone()));
    for i in 0..16 {
        cfg.add_file(&format!("etc/bench-{i}"), vec![i as u8; 64])
            .unwrap();
    }
    let key = cfg.add_file("etc/e820", vec![0x5a; FILE_BYTES]).unwrap();
    group.bench_function("select", |b| {
        b.iter(|| cfg.write(0, &black_box(key).to_le_bytes()));
    });
    group.bench_function("data_byte", |b| {
        cfg.write(0, &key.to_le_bytes());
        let mut d = [0u8];
        b.iter(|| {
            cfg.read(1, &mut d);
            d[0]
        });
    });
    let dma = cfg.dma_register();
    group.throughput(Throughput::Bytes(FILE_BYTES as u64));
    group.bench_function("dma_read_4k", |b| {
        let control = u32::from(key) << 16 | dma_control::SELECT | dma_control::READ;
        let mut desc = [0u8; 16];
        desc[..4].copy_from_slice(&control.to_be_bytes());
        desc[4..8].copy_from_slice(&(FILE_BYTES as u32).to_be_bytes());
        desc[8..].copy_from_slice(&BUFFER.to_be_bytes());
        b.iter(|| {
            // The firmware writes the descriptor (the device zeroes its control when
            // done), then its address: high half, then low half, which starts it.
            ram.memory().write_slice(&desc, GuestAddress(DESC)).unwrap();
            dma.write(0, &0u32.to_be_bytes());
            dma.write(4, &(DESC as u32).to_be_bytes());
        });
        let done: u32 = ram.memory().read_obj(GuestAddress(DESC)).unwrap();
        assert_eq!(done, 0, "the transfer completed without ERROR");
        let byte: u8 = ram.memory().read_obj(GuestAddress(BUFFER)).unwrap();
        assert_eq!(byte, 0x5a, "the file reached guest RAM");
    });
    group.finish();
}

/// The interrupt controller's lines: the cost of the irqchip call is not ours.
struct Lines;

impl IrqLine for Lines {
    fn set_level(&self, gsi: u32, level: bool) {
        black_box((gsi, level));
    }
}

fn piix3_intx(c: &mut Criterion) {
    let mut group = c.benchmark_group("piix3_intx");
    let (isa, router) = Piix3Isa::new(Arc::new(Lines));
    // Firmware: PIRQA..D to IRQs 10, 10, 11, 11 (as SeaBIOS does).
    isa.config_write(0x60, &[10, 10, 11, 11]);
    group.bench_function("assert_deassert", |b| {
        b.iter(|| {
            router.set_level(black_box(3), 1, true);
            router.set_level(black_box(3), 1, false);
        });
    });
    // Slot 7 pin 1 lands on the same PIRQ as slot 3 pin 1 (four slots apart), and
    // stays asserted: the line is the OR of both.
    router.set_level(7, 1, true);
    group.bench_function("assert_deassert_shared", |b| {
        b.iter(|| {
            router.set_level(black_box(3), 1, true);
            router.set_level(black_box(3), 1, false);
        });
    });
    group.finish();
}

criterion_group!(benches, serial, cmos, fw_cfg, piix3_intx);
criterion_main!(benches);
