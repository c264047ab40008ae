//! The hot paths of the PCI model, measured in criterion groups:
//!
//! - `config_read/N`: a dword config read through 0xCF8/0xCFC (address write, data
//!   read) with N functions plugged, through [`PciHost`] (functions on an RCU bus)
//!   against the obvious peer, a host whose functions sit in a `Mutex<BTreeMap>`;
//! - `msix_signal`: one interrupt through an [`MsixTable`] (unmasked: the message out;
//!   masked: the pending bit), the per-interrupt cost a transport adds.
//!
//! `cargo bench -p pci-bus --bench config_cycle -- --warm-up-time 1 --measurement-time 2`

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::{Arc, Mutex};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use io_bus::{BusDevice, IoBus};
use pci::msix::{CONTROL_ENABLE, MsixTable};
use pci::{PciConfig, PciFunction, PciHost, SimpleFunction};
use qdev_bus::PciAddress;

const SIZES: [u8; 3] = [1, 8, 31];

fn select(slot: u8) -> [u8; 4] {
    (0x8000_0000u32 | u32::from(slot) << 11).to_le_bytes()
}

fn function(slot: u8) -> SimpleFunction {
    let config = PciConfig::new(0x1af4, 0x1000 + u16::from(slot), 0xff_00_00, 0);
    SimpleFunction::new(format!("dev{slot}"), config, Vec::new())
}

/// The peer: config cycles that look the function up in a locked map.
struct LockedHost {
    address: Mutex<u32>,
    functions: Mutex<BTreeMap<u8, Box<dyn PciFunction>>>,
}

impl BusDevice for LockedHost {
    fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        if offset == 4 {
            let slot = ((*self.address.lock().unwrap() >> 11) & 0x1f) as u8;
            if let Some(f) = self.functions.lock().unwrap().get(&slot) {
                f.config_read(0, data);
            }
        }
    }
    fn write(&self, offset: u64, data: &[u8]) {
        if offset == 0 {
            *self.address.lock().unwrap() = u32::from_le_bytes(data.try_into().unwrap());
        }
    }
}

fn config_read(c: &mut Criterion) {
    let mut group = c.benchmark_group("config_read");
    for n in SIZES {
        let host = PciHost::new(
            Arc::new(IoBus::new("pio")),
            Arc::new(IoBus::new("mmio")),
            Arc::new(|_| {}),
            |_| {},
        );
        let locked = LockedHost {
            address: Mutex::new(0),
            functions: Mutex::new(BTreeMap::new()),
        };
        for slot in 0..n {
            let address = PciAddress::new(slot, 0).unwrap();
            host.plug(address, Box::new(function(slot))).unwrap();
            locked
                .functions
                .lock()
                .unwrap()
                .insert(slot, Box::new(function(slot)));
        }
        let slot = n / 2;
        group.bench_with_input(BenchmarkId::new("pci_host", n), &slot, |b, &slot| {
            let mut d = [0u8; 4];
            b.iter(|| {
                host.write(0, &select(black_box(slot)));
                host.read(4, &mut d);
            });
        });
        group.bench_with_input(BenchmarkId::new("mutex_btree", n), &slot, |b, &slot| {
            let mut d = [0u8; 4];
            b.iter(|| {
                locked.write(0, &select(black_box(slot)));
                locked.read(4, &mut d);
            });
        });
    }
    group.finish();
}

fn msix_signal(c: &mut Criterion) {
    let mut group = c.benchmark_group("msix_signal");
    let mut table = MsixTable::new(4, 0x800);
    table.set_control(CONTROL_ENABLE);
    table.write(0x10 + 12, &0u32.to_le_bytes()); // unmask vector 1
    group.bench_function("unmasked", |b| b.iter(|| table.signal(black_box(1))));
    group.bench_function("masked", |b| b.iter(|| table.signal(black_box(2))));
    group.finish();
}

criterion_group!(benches, config_read, msix_signal);
criterion_main!(benches);
