//! Seed 001 ("exec: protect mru_block with RCU"): the most-recently-used cache is read
//! under the read guard, removal clears it before the grace period starts, and a
//! removed block is reclaimed only after every reader that could see it has finished.
//!
//! These tests replay the interleavings deterministically, with one reader and one
//! writer thread. Under miri (where anonymous blocks live on the heap) an early reclaim
//! or a stale cache entry that named a freed block would be reported as a
//! use-after-free; in a normal build it would read unmapped memory.

use std::sync::mpsc;
use std::thread;

use ram_block::{Backing, RamBlock, RamList};
use vm_memory::{Bytes, GuestAddress, GuestAddressSpace, GuestMemoryBackend};

const SIZE: u64 = 0x1000;

/// Three blocks, each filled with its own byte, so a reader can tell which one it read.
fn ram_with(blocks: &[(&str, u64, u8)]) -> RamList {
    let ram = RamList::new();
    for &(name, start, fill) in blocks {
        let block = RamBlock::new(
            name,
            GuestAddress(start),
            SIZE,
            Backing::Anonymous { huge_pages: false },
        )
        .unwrap();
        block
            .volatile_slice()
            .write_slice(&[fill; SIZE as usize], 0)
            .unwrap();
        ram.add(block).unwrap();
    }
    ram
}

fn abc() -> RamList {
    ram_with(&[
        ("a", 0x1_0000, 0xaa),
        ("b", 0x2_0000, 0xbb),
        ("c", 0x3_0000, 0xcc),
    ])
}

fn byte_at(ram: &RamList, addr: u64) -> Option<u8> {
    let guard = rcu::read();
    let slice = ram.translate(&guard, GuestAddress(addr), 1).ok()?;
    Some(slice.read_obj(0).unwrap())
}

#[test]
fn a_cached_block_is_used_only_for_addresses_it_contains() {
    let ram = abc();
    // Alternate so that each lookup starts with the cache naming another block.
    for _ in 0..3 {
        assert_eq!(byte_at(&ram, 0x1_0010), Some(0xaa));
        assert_eq!(byte_at(&ram, 0x2_0010), Some(0xbb));
        assert_eq!(byte_at(&ram, 0x2_0fff), Some(0xbb)); // a hit
        assert_eq!(byte_at(&ram, 0x2_1000), None); // one past the cached block: a hole
        assert_eq!(byte_at(&ram, 0x3_0000), Some(0xcc));
    }
}

#[test]
fn removal_clears_the_cache_for_new_readers() {
    let ram = abc();
    assert_eq!(byte_at(&ram, 0x2_0000), Some(0xbb)); // "b" is now the cached block
    ram.remove(GuestAddress(0x2_0000)).unwrap();
    // A reader that starts after the removal must not get "b" back from the cache.
    assert_eq!(byte_at(&ram, 0x2_0000), None);
    assert_eq!(byte_at(&ram, 0x1_0000), Some(0xaa));
    rcu::barrier();
}

/// The interleaving in the seed's comment: a reader that read the cache before the
/// removal keeps using the block until it unlocks, and the reclaim waits for it.
///
/// ```text
/// reader                              writer
/// rcu_read_lock(); block = mru (b)
///                                     remove b: unlink, mru = NULL, call_rcu(reclaim b)
/// use block (b's memory)
/// rcu_read_unlock()
///                                     ... grace period ends, reclaim b
/// ```
#[test]
fn a_reader_holding_the_cached_block_across_removal_keeps_valid_memory() {
    let ram = abc();
    assert_eq!(byte_at(&ram, 0x2_0000), Some(0xbb));

    let guard = rcu::read();
    let b = ram.find(&guard, GuestAddress(0x2_0000)).unwrap(); // from the cache
    thread::scope(|s| {
        s.spawn(|| ram.remove(GuestAddress(0x2_0000)).unwrap());
    });
    // Removed, unlinked, and reclaim queued; but our guard holds it.
    assert_eq!(b.name(), "b");
    assert_eq!(b.volatile_slice().read_obj::<u8>(0x42).unwrap(), 0xbb);
    // A fresh load (under a nested guard) sees the map without "b".
    assert!(ram.find(&rcu::read(), GuestAddress(0x2_0000)).is_none());
    drop(guard);
    rcu::barrier(); // the reclaim ran after our section
    assert_eq!(byte_at(&ram, 0x2_0000), None);
}

/// The interleaving the seed's comment does not show: a reader that found the block by
/// walking the list before the removal, and stores it in the cache *after* the writer
/// cleared it. With QEMU's single global `mru_block`, that late store outlives the
/// grace period and hands the freed block to the next reader. Here the cache belongs
/// to the version the reader holds, which is reclaimed together with the block.
///
/// ```text
/// reader R                           writer                         reader N
/// lock; walk list, find b
///                                    unlink b; mru = NULL
///                                    call_rcu(reclaim b)
/// mru = b   (late store)
/// unlock
///                                    grace period ends, b freed
///                                                                   lock; read mru
/// ```
#[test]
fn a_late_cache_store_cannot_resurrect_a_removed_block() {
    let ram = abc();
    let (entered_tx, entered_rx) = mpsc::channel();
    let (removed_tx, removed_rx) = mpsc::channel();
    let (found_tx, found_rx) = mpsc::channel();

    thread::scope(|s| {
        // Reader R: enters its section, lets the writer remove "b", then looks "b" up
        // in the version it holds, which stores "b" in that version's cache.
        let ram = &ram;
        s.spawn(move || {
            let guard = rcu::read();
            let blocks = ram.blocks(&guard);
            assert_eq!(byte_at(ram, 0x1_0000), Some(0xaa)); // cache names "a" (nested guard)
            entered_tx.send(()).unwrap();
            removed_rx.recv().unwrap();
            let b = blocks
                .find(GuestAddress(0x2_0000))
                .expect("the old version still has b");
            assert_eq!(b.volatile_slice().read_obj::<u8>(0).unwrap(), 0xbb);
            found_tx.send(()).unwrap();
        });
        // Writer: removes "b" while R is inside its section.
        entered_rx.recv().unwrap();
        ram.remove(GuestAddress(0x2_0000)).unwrap();
        removed_tx.send(()).unwrap();
        found_rx.recv().unwrap();
    });
    // R has finished; wait until "b" is reclaimed, then look it up as reader N.
    rcu::barrier();
    for addr in [0x2_0000, 0x2_0fff] {
        assert_eq!(
            byte_at(&ram, addr),
            None,
            "a removed block came back from the cache"
        );
    }
    assert_eq!(byte_at(&ram, 0x3_0000), Some(0xcc));
}

#[test]
fn a_guard_sees_one_consistent_version() {
    let ram = abc();
    let guard = rcu::read();
    let before = ram.blocks(&guard);
    ram.add(
        RamBlock::new(
            "d",
            GuestAddress(0x4_0000),
            SIZE,
            Backing::Anonymous { huge_pages: false },
        )
        .unwrap(),
    )
    .unwrap();
    ram.remove(GuestAddress(0x1_0000)).unwrap();
    // The version loaded under `guard` is immutable: still a, b, c.
    let names: Vec<_> = before.iter().map(|b| b.name()).collect();
    assert_eq!(names, ["a", "b", "c"]);
    assert!(before.find(GuestAddress(0x4_0000)).is_none());
    // A fresh load sees the new map.
    let after: Vec<_> = ram.blocks(&guard).iter().map(|b| b.name()).collect();
    assert_eq!(after, ["b", "c", "d"]);
    drop(guard);
    rcu::barrier();
}

#[test]
fn a_memory_view_outlives_the_list_it_came_from() {
    let ram = abc();
    ram.remove(GuestAddress(0x3_0000)).unwrap();
    let mem = ram.memory(); // the current version: a and b
    let copy = mem.clone(); // a nested guard, the same version
    drop(mem);
    // The last handle goes: the current version is unpublished and reclaimed after a
    // grace period, not freed under the view.
    drop(ram);
    assert_eq!(copy.read_obj::<u8>(GuestAddress(0x2_0abc)).unwrap(), 0xbb);
    assert_eq!(copy.num_regions(), 2);
    drop(copy);
    rcu::barrier(); // everything is unmapped now
}

#[test]
fn qsbr_readers_look_up_without_a_memb_guard() {
    let ram = abc();
    thread::scope(|s| {
        s.spawn(|| {
            let mut thread = rcu::QsbrThread::register().unwrap();
            for _ in 0..3 {
                {
                    let guard = thread.read();
                    let slice = ram.translate(&guard, GuestAddress(0x1_0100), 16).unwrap();
                    assert_eq!(slice.read_obj::<u8>(15).unwrap(), 0xaa);
                    // `&RamBlocks` is a vm-memory address space of its own.
                    let blocks = ram.blocks(&guard);
                    assert_eq!(
                        blocks
                            .memory()
                            .read_obj::<u8>(GuestAddress(0x3_0000))
                            .unwrap(),
                        0xcc
                    );
                }
                thread.quiescent_state();
            }
        });
        ram.remove(GuestAddress(0x2_0000)).unwrap(); // meanwhile, hot remove elsewhere
    });
    rcu::barrier();
}
