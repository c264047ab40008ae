//! The virtio-pci transport's register paths, each what one guest MMIO exit costs in
//! user space (criterion groups):
//!
//! - `common_cfg`: reads and writes of the common configuration (device status, queue
//!   size, queue select, a queue address): drivers poll and program these during
//!   bring-up and every reset, and each access takes the transport lock.
//! - `notify`: a doorbell written through the BAR (the MMIO-exit path a notification
//!   takes when no ioeventfd is registered, e.g. through the `pci_cfg` window SeaBIOS
//!   uses): find the queue's kick eventfd and set it.
//! - `msix_table`: a driver's MSI-X table writes: the message data of an entry, and a
//!   mask/unmask pair of its vector control (an unmask delivers what was pending).
//!   Linux masks and unmasks vectors around interrupt migration and affinity changes.
//! - `isr`: the ISR read alone (INTx mode: read clears and lowers the line), and the
//!   whole INTx cycle: a queue's interrupt sets the ISR and raises INTx, the driver's
//!   handler reads the ISR. This is the per-interrupt cost of a guest without MSI-X.
//!
//! `cargo bench -p virtio-pci --bench registers -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use aio_context::IoThread;
use criterion::{Criterion, criterion_group, criterion_main};
use io_bus::BusDevice;
use pci::{PciFunction, Space};
use ram_block::RamList;
use virtio_core::{QueueError, QueueSetup, VirtioDevice, VirtioInterrupt};
use virtio_pci::{MsiSender, VirtioPci};
use virtio_queue::Queue;

/// Where BAR 1 (MSI-X) and BAR 4 (virtio registers) are placed.
const BAR1: u64 = 0xfd00_0000;
const BAR4: u64 = 0xfe00_0000;
/// BAR 4 offsets (the crate's layout, as QEMU's).
const STATUS: u64 = 0x14;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_DESC: u64 = 0x20;
const ISR: u64 = 0x1000;
const NOTIFY: u64 = 0x3000;

/// A one-queue device that serves nothing; it keeps the interrupt its queue got.
struct Mock(Arc<Mutex<Option<Arc<dyn VirtioInterrupt>>>>);

impl VirtioDevice for Mock {
    fn device_type(&self) -> u32 {
        2
    }
    fn num_queues(&self) -> u16 {
        1
    }
    fn queue_max_size(&self) -> u16 {
        256
    }
    fn features(&self) -> u64 {
        1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1
    }
    fn ack_features(&mut self, _: u64) {}
    fn read_config(&self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write_config(&mut self, _: u64, _: &[u8]) {}
    fn start_queue(&mut self, _: u16, setup: QueueSetup) -> Result<(), QueueError> {
        *self.0.lock().unwrap() = Some(setup.interrupt);
        Ok(())
    }
    fn stop_queue(&mut self, _: u16) -> Option<Queue> {
        None
    }
}

struct NoMsi;

impl MsiSender for NoMsi {
    fn send(&self, _: u16, _: u64, _: u32) {}
}

/// A function with both BARs placed and decoded, MSI-X off.
struct Function {
    _pci: VirtioPci,
    bar: Arc<dyn BusDevice>,
    msix: Arc<dyn BusDevice>,
    interrupt: Arc<Mutex<Option<Arc<dyn VirtioInterrupt>>>>,
    intx: Arc<AtomicBool>,
}

impl Function {
    fn new() -> Function {
        let interrupt = Arc::new(Mutex::new(None));
        let intx = Arc::new(AtomicBool::new(false));
        let line = intx.clone();
        let pci = VirtioPci::new(
            "bench",
            Box::new(Mock(interrupt.clone())),
            RamList::new(), // the mock never touches guest memory
            Arc::new(IoThread::spawn("bench-io").unwrap()),
            Arc::new(NoMsi),
            Arc::new(move |level| line.store(level, Ordering::Relaxed)),
        )
        .unwrap();
        // Firmware: BAR 1, BAR 4 (64-bit: low and high dword), then memory decoding
        // and bus mastering on in the command register.
        let bar4 = BAR4 as u32;
        for (register, value) in [(0x14, BAR1 as u32), (0x20, bar4), (0x24, 0), (0x04, 6)] {
            pci.config_write(register, &value.to_le_bytes());
        }
        let (mut bar, mut msix) = (None, None);
        for m in pci.mappings().into_iter().filter(|m| m.space == Space::Mem) {
            match m.base {
                BAR1 => msix = Some(m.device),
                BAR4 => bar = Some(m.device),
                _ => {}
            }
        }
        let (bar, msix) = (bar.expect("BAR 4 decoded"), msix.expect("BAR 1 decoded"));
        Function {
            _pci: pci,
            bar,
            msix,
            interrupt,
            intx,
        }
    }

    fn write(&self, offset: u64, value: u32, len: usize) {
        self.bar.write(offset, &value.to_le_bytes()[..len]);
    }

    /// Negotiates VERSION_1 and starts queue 0 (rings anywhere: the mock ignores
    /// them); returns the queue's interrupt.
    fn bring_up(&self) -> Arc<dyn VirtioInterrupt> {
        self.write(STATUS, 3, 1); // ACKNOWLEDGE | DRIVER
        self.write(0x08, 1, 4); // driver_feature_select: high word
        self.write(0x0c, 1, 4); // VERSION_1
        self.write(STATUS, 3 | 8, 1); // FEATURES_OK
        self.write(QUEUE_SELECT, 0, 2);
        for (offset, addr) in [(0x20, 0x1000), (0x28, 0x2000), (0x30, 0x3000)] {
            self.write(offset, addr, 4);
        }
        self.write(0x1c, 1, 2); // queue_enable
        self.write(STATUS, 3 | 8 | 4, 1); // DRIVER_OK
        self.interrupt
            .lock()
            .unwrap()
            .clone()
            .expect("queue 0 started")
    }
}

fn common_cfg(c: &mut Criterion) {
    let mut group = c.benchmark_group("common_cfg");
    let f = Function::new();
    group.bench_function("read_status", |b| {
        let mut d = [0u8; 1];
        b.iter(|| {
            f.bar.read(STATUS, &mut d);
            d[0]
        });
    });
    group.bench_function("read_queue_size", |b| {
        let mut d = [0u8; 2];
        b.iter(|| {
            f.bar.read(QUEUE_SIZE, &mut d);
            d
        });
    });
    group.bench_function("write_queue_select", |b| {
        b.iter(|| f.write(QUEUE_SELECT, black_box(0), 2));
    });
    group.bench_function("write_queue_desc", |b| {
        b.iter(|| f.write(QUEUE_DESC, black_box(0x1000), 4));
    });
    group.finish();
}

fn notify(c: &mut Criterion) {
    let f = Function::new();
    c.bench_function("notify", |b| {
        b.iter(|| f.write(NOTIFY, black_box(0), 2));
    });
}

fn msix_table(c: &mut Criterion) {
    let mut group = c.benchmark_group("msix_table");
    let f = Function::new();
    // Entry 1: address at +0, data at +8, vector control at +12.
    group.bench_function("write_data", |b| {
        b.iter(|| f.msix.write(0x10 + 8, &black_box(0x4041u32).to_le_bytes()));
    });
    group.bench_function("mask_unmask", |b| {
        b.iter(|| {
            f.msix.write(0x10 + 12, &1u32.to_le_bytes());
            f.msix.write(0x10 + 12, &0u32.to_le_bytes());
        });
    });
    group.finish();
}

fn isr(c: &mut Criterion) {
    let mut group = c.benchmark_group("isr");
    let f = Function::new();
    let interrupt = f.bring_up();
    group.bench_function("read", |b| {
        let mut d = [0u8; 1];
        b.iter(|| {
            f.bar.read(ISR, &mut d);
            d[0]
        });
    });
    group.bench_function("intx_cycle", |b| {
        let mut d = [0u8; 1];
        b.iter(|| {
            interrupt.notify_queue(0);
            f.bar.read(ISR, &mut d);
            assert_eq!(d[0], 1, "the queue's interrupt set the ISR");
        });
    });
    assert!(!f.intx.load(Ordering::Relaxed), "INTx lowered by the read");
    group.finish();
}

criterion_group!(benches, common_cfg, notify, msix_table, isr);
criterion_main!(benches);
