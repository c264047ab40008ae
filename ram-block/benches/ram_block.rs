//! Guest address lookup and translation: ram-block against vm-memory's
//! `GuestMemoryAtomic<GuestMemoryMmap>` (arc-swap snapshot + binary search), each
//! measured per access the way a device model does it: enter (`rcu::read()` or
//! `memory()`), look up, leave.
//!
//! Maps of 1, 8 and 64 blocks of 64 KiB, 1 MiB apart (holes between). "MRU hit" looks
//! up the same block every time; "MRU miss" walks the blocks round-robin so that every
//! lookup misses the cache (with one block no RAM address can miss, so that row looks
//! up a hole instead). Peers share a group, so ratios come from one run:
//! `cargo bench -p ram-block --bench ram_block`, then `ram-block/benches/table.sh`.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ram_block::{Backing, RamBlock, RamList};
use vm_memory::{
    GuestAddress, GuestAddressSpace, GuestMemoryAtomic, GuestMemoryBackend, GuestMemoryMmap,
};

const BLOCK: u64 = 0x1_0000;
const SPACING: u64 = 0x10_0000;
const LEN: usize = 512;

fn block_start(i: u64) -> u64 {
    SPACING * (i + 1)
}

struct Maps {
    ours: RamList,
    theirs: GuestMemoryAtomic<GuestMemoryMmap<()>>,
}

fn maps(n: u64) -> Maps {
    let ours = RamList::new();
    let mut ranges = Vec::new();
    for i in 0..n {
        let start = GuestAddress(block_start(i));
        let block = RamBlock::new(
            format!("b{i}"),
            start,
            BLOCK,
            Backing::Anonymous { huge_pages: false },
        );
        ours.add(block.unwrap()).unwrap();
        ranges.push((start, BLOCK as usize));
    }
    let theirs = GuestMemoryAtomic::new(GuestMemoryMmap::from_ranges(&ranges).unwrap());
    Maps { ours, theirs }
}

/// An address in the middle block, 0x100 into it.
fn hit_address(n: u64) -> GuestAddress {
    GuestAddress(block_start(n / 2) + 0x100)
}

/// Addresses that miss the MRU cache on every lookup (round-robin over the blocks).
fn miss_addresses(n: u64) -> Vec<GuestAddress> {
    if n == 1 {
        return vec![GuestAddress(block_start(0) + BLOCK + 0x100)]; // a hole
    }
    (0..n)
        .map(|i| GuestAddress(block_start(i) + 0x100))
        .collect()
}

fn lookup(c: &mut Criterion) {
    for (group_name, hit) in [("lookup MRU hit", true), ("lookup MRU miss", false)] {
        let mut group = c.benchmark_group(group_name);
        for n in [1u64, 8, 64] {
            let m = maps(n);
            let addrs = if hit {
                vec![hit_address(n)]
            } else {
                miss_addresses(n)
            };
            let mut i = 0;
            // A compare, not `%`: a division per iteration would blur the ratios.
            let mut next = move || {
                i += 1;
                if i == addrs.len() {
                    i = 0;
                }
                addrs[i]
            };
            group.bench_function(BenchmarkId::new("ram-block read()+find", n), |b| {
                b.iter(|| {
                    let guard = rcu::read();
                    black_box(m.ours.find(&guard, black_box(next())).is_some())
                })
            });
            group.bench_function(BenchmarkId::new("ram-block memory()+find_region", n), |b| {
                b.iter(|| black_box(m.ours.memory().find_region(black_box(next())).is_some()))
            });
            group.bench_function(BenchmarkId::new("vm-memory memory()+find_region", n), |b| {
                b.iter(|| black_box(m.theirs.memory().find_region(black_box(next())).is_some()))
            });
        }
        group.finish();
    }
}

fn translate(c: &mut Criterion) {
    let mut group = c.benchmark_group("translate MRU hit");
    for n in [1u64, 8, 64] {
        let m = maps(n);
        let addr = hit_address(n);
        group.bench_function(BenchmarkId::new("ram-block read()+translate", n), |b| {
            b.iter(|| {
                let guard = rcu::read();
                black_box(
                    m.ours
                        .translate(&guard, black_box(addr), LEN)
                        .unwrap()
                        .len(),
                )
            })
        });
        group.bench_function(BenchmarkId::new("ram-block memory()+get_slice", n), |b| {
            b.iter(|| {
                black_box(
                    m.ours
                        .memory()
                        .get_slice(black_box(addr), LEN)
                        .unwrap()
                        .len(),
                )
            })
        });
        group.bench_function(BenchmarkId::new("vm-memory memory()+get_slice", n), |b| {
            b.iter(|| {
                black_box(
                    m.theirs
                        .memory()
                        .get_slice(black_box(addr), LEN)
                        .unwrap()
                        .len(),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookup, translate);
criterion_main!(benches);
