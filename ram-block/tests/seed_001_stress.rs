//! Seed 001 under load: reader threads translate guest addresses in a loop (memb
//! guards, `memory()` views and a QSBR thread) while a writer hot-adds and hot-removes
//! blocks. Every block is filled with a tag derived from its name before it is added
//! and never written afterwards, so a reader that reached freed or reused memory would
//! see a wrong tag (or fault).
//!
//! Runs for `RAM_BLOCK_STRESS_SECS` seconds (default 1); under miri, a few iterations.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use ram_block::{Backing, RamBlock, RamList};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace};

const SLOTS: u64 = 6;
const SLOT_SPACING: u64 = 0x100_0000;
const BLOCK_SIZE: u64 = if cfg!(miri) { 0x100 } else { 0x1_0000 };

fn slot_start(slot: u64) -> GuestAddress {
    GuestAddress((slot + 1) * SLOT_SPACING)
}

/// The byte every block of generation `generation` is filled with (never 0).
fn tag(generation: u64) -> u8 {
    (generation % 251) as u8 + 1
}

fn block_name(slot: u64, generation: u64) -> String {
    format!("slot{slot}-gen{generation}")
}

fn tag_of(block: &RamBlock) -> u8 {
    let generation = block.name().rsplit("gen").next().unwrap().parse().unwrap();
    tag(generation)
}

fn new_block(slot: u64, generation: u64) -> RamBlock {
    let block = RamBlock::new(
        block_name(slot, generation),
        slot_start(slot),
        BLOCK_SIZE,
        Backing::Anonymous { huge_pages: false },
    )
    .unwrap();
    let fill = vec![tag(generation); BLOCK_SIZE as usize];
    block.volatile_slice().write_slice(&fill, 0).unwrap();
    block
}

/// A cheap per-thread pseudo-random sequence (xorshift).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// A guest address in some slot, sometimes just past a block (a hole).
    fn address(&mut self) -> GuestAddress {
        let slot = self.next() % SLOTS;
        let offset = self.next() % (BLOCK_SIZE + 16);
        GuestAddress(slot_start(slot).0 + offset)
    }
}

/// Checks that `len` bytes at `addr`, if the list maps them, all carry the tag of the
/// block that maps them. Returns whether the address was RAM.
///
/// The lookup and the translation use one version of the map (`blocks`): two calls of
/// `ram.find` and `ram.translate` could each load a different version, and see a block
/// that was removed and re-added between them.
fn check<G: rcu::ReadSide>(ram: &RamList, guard: &G, addr: GuestAddress, len: usize) -> bool {
    let Some(block) = ram.blocks(guard).find(addr) else {
        return false;
    };
    let expected = tag_of(block);
    let Ok(slice) = block.slice(addr, len) else {
        return true; // runs past the block end: an error, as it must be
    };
    let mut buf = vec![0u8; len];
    slice.read_slice(&mut buf, 0).unwrap();
    assert!(
        buf.iter().all(|&b| b == expected),
        "read {buf:?} from {}, expected {expected}",
        block.name()
    );
    true
}

fn run_for() -> Duration {
    let secs = std::env::var("RAM_BLOCK_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    Duration::from_secs(secs)
}

#[test]
fn lookups_race_with_hot_add_and_remove() {
    let ram = RamList::new();
    for slot in 0..SLOTS {
        ram.add(new_block(slot, slot)).unwrap();
    }
    let stop = AtomicBool::new(false);
    let hits = AtomicU64::new(0);
    let rounds = if cfg!(miri) { 150 } else { u64::MAX };

    thread::scope(|s| {
        // memb readers: plain guards, and slices held across a yield.
        for seed in 1..=2u64 {
            let (ram, stop, hits) = (&ram, &stop, &hits);
            s.spawn(move || {
                let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < rounds {
                    n += 1;
                    let guard = rcu::read();
                    let addr = rng.address();
                    if check(ram, &guard, addr, 8) {
                        hits.fetch_add(1, Ordering::Relaxed);
                    }
                    if n % 16 == 0 {
                        // Hold a slice across a reschedule: the writer may remove the
                        // block meanwhile; the memory must stay what it was.
                        if let Ok(slice) = ram.translate_prefix(&guard, addr, 64) {
                            let before: u8 = slice.read_obj(0).unwrap();
                            thread::yield_now();
                            assert_eq!(slice.read_obj::<u8>(slice.len() - 1).unwrap(), before);
                        }
                    }
                }
            });
        }
        // A reader through vm-memory's GuestAddressSpace, one view per access.
        {
            let (ram, stop) = (&ram, &stop);
            s.spawn(move || {
                let mut rng = Rng(0x1234_5678);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < rounds {
                    n += 1;
                    let mem = GuestAddressSpace::memory(ram);
                    let addr = rng.address();
                    if let Some(block) = mem.find(addr) {
                        let expected = tag_of(block);
                        if let Ok(byte) = mem.read_obj::<u8>(addr) {
                            assert_eq!(byte, expected);
                        }
                    }
                }
            });
        }
        // A QSBR reader (an event-loop thread), reporting quiescent states.
        {
            let (ram, stop) = (&ram, &stop);
            s.spawn(move || {
                let mut thread = rcu::QsbrThread::register().unwrap();
                let mut rng = Rng(0xfeed_f00d);
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < rounds {
                    n += 1;
                    for _ in 0..8 {
                        check(ram, &thread.read(), rng.address(), 4);
                    }
                    thread.quiescent_state();
                }
            });
        }
        // The writer: flip slots between present and absent, with new contents each time.
        let deadline = Instant::now() + run_for();
        let mut rng = Rng(42);
        let mut generation = SLOTS;
        let mut present = [true; SLOTS as usize];
        let mut ops = 0u64;
        let more = |ops| {
            if cfg!(miri) {
                ops < 60
            } else {
                Instant::now() < deadline
            }
        };
        while more(ops) {
            let slot = rng.next() % SLOTS;
            if present[slot as usize] {
                ram.remove(slot_start(slot)).unwrap();
            } else {
                generation += 1;
                ram.add(new_block(slot, generation)).unwrap();
            }
            present[slot as usize] ^= true;
            ops += 1;
            if ops % 8 == 0 {
                thread::yield_now(); // let the readers run between changes (2-core CI boxes)
            }
        }
        stop.store(true, Ordering::Relaxed);
        println!(
            "{ops} hot add/remove operations, {} reader hits",
            hits.load(Ordering::Relaxed)
        );
    });
    rcu::barrier(); // every removed block is unmapped by now
}
