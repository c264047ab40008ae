//! What the machine computes on the way to a boot and on the interrupt path, measured
//! alone (these have no peer crate to compare with; the machine-level peer comparison
//! is `benches/boot-compare`, our VMM against QEMU):
//!
//! - `firmware_tables/N`: the MP table, the SMBIOS tables and the firmware e820 map for
//!   N vCPUs (built at every boot and every direct-boot reset);
//! - `cpuid/N`: the per-vCPU CPUID table of N vCPUs from a host table of 64 leaves
//!   (topology filter plus two `-cpu` toggles);
//! - `pam_plan`: the KVM slots the 13 PAM segments get for one register write;
//! - `msi_route/same` and `msi_route/changed`: one MSI sent through an irqfd route,
//!   with the message unchanged (an eventfd write) or changed (a whole
//!   `KVM_SET_GSI_ROUTING` commit first). Needs `/dev/kvm`; skipped loudly without.
//!
//! `cargo bench -p kvm-machine --bench tables -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use kvm_bindings::{CpuId, kvm_cpuid_entry2};
use kvm_machine::irq_routing::GsiRouting;
use kvm_machine::layout::{RamLayout, e820_bytes};
use kvm_machine::{cpuid, mptable, pam, smbios};

const CPUS: [u32; 3] = [1, 8, 64];

fn firmware_tables(c: &mut Criterion) {
    let mut group = c.benchmark_group("firmware_tables");
    let layout = RamLayout::new(4 << 30);
    for cpus in CPUS {
        group.bench_with_input(BenchmarkId::from_parameter(cpus), &cpus, |b, &cpus| {
            b.iter(|| {
                let mp = mptable::build(black_box(cpus));
                let smbios = smbios::build(black_box(layout), cpus);
                let e820 = e820_bytes(&layout.firmware_e820());
                black_box((mp, smbios, e820))
            })
        });
    }
    group.finish();
}

/// A host CPUID table of 64 leaves, as `KVM_GET_SUPPORTED_CPUID` returns (the leaves
/// the filter rewrites among them).
fn host_cpuid() -> CpuId {
    let mut entries: Vec<kvm_cpuid_entry2> = (0..60)
        .map(|function| kvm_cpuid_entry2 {
            function,
            eax: u32::MAX,
            ebx: u32::MAX,
            ecx: u32::MAX,
            edx: u32::MAX,
            ..Default::default()
        })
        .collect();
    for index in 0..4 {
        entries.push(kvm_cpuid_entry2 {
            function: 0xb,
            index,
            ..Default::default()
        });
    }
    CpuId::from_entries(&entries).expect("64 entries fit")
}

fn cpuid_tables(c: &mut Criterion) {
    let mut group = c.benchmark_group("cpuid");
    let supported = host_cpuid();
    let toggles = vec![("pdpe1gb".to_string(), false), ("x2apic".to_string(), true)];
    for cpus in CPUS {
        group.bench_with_input(BenchmarkId::from_parameter(cpus), &cpus, |b, &cpus| {
            b.iter(|| {
                for index in 0..cpus {
                    let mut table = supported.clone();
                    cpuid::filter(&mut table, index, cpus);
                    black_box(cpuid::apply_features(&mut table, &supported, &toggles));
                }
            })
        });
    }
    group.finish();
}

fn pam_plan(c: &mut Criterion) {
    let backing = pam::Backing {
        ram_size: 128 << 20,
        bios_size: 256 << 10,
        readonly_mem: true,
    };
    // SeaBIOS's sequence: power-on, shadow writable, shadow read-only.
    let steps: [pam::PamRegisters; 3] = [
        [0; 7],
        [0x30, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33],
        [0x10, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11],
    ];
    c.bench_function("pam_plan", |b| {
        b.iter(|| {
            for registers in &steps {
                black_box(backing.plan_all(black_box(registers)));
            }
        })
    });
}

fn msi_route(c: &mut Criterion) {
    let Some(routing) = kvm_routing() else {
        eprintln!(
            "SKIPPED msi_route benchmarks: /dev/kvm (with an irqchip and GSI routing) unavailable"
        );
        return;
    };
    let route = routing.msi_route().expect("an MSI route");
    let mut group = c.benchmark_group("msi_route");
    group.bench_function("same", |b| {
        b.iter(|| route.send(0xfee0_0000, 0x4041).expect("send"))
    });
    let mut vector = 0u32;
    group.bench_function("changed", |b| {
        b.iter(|| {
            vector = (vector + 1) & 0xff;
            route.send(0xfee0_0000, 0x4000 | vector).expect("send")
        })
    });
    group.finish();
}

/// A VM with an in-kernel irqchip and our routing table, or `None` without KVM.
fn kvm_routing() -> Option<Arc<GsiRouting>> {
    let kvm = kvm_ioctls::Kvm::new().ok()?;
    let vm = Arc::new(kvm.create_vm().ok()?);
    vm.create_irq_chip().ok()?;
    GsiRouting::new(vm).ok().flatten()
}

criterion_group!(benches, firmware_tables, cpuid_tables, pam_plan, msi_route);
criterion_main!(benches);
