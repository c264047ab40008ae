//! Bounds: the guest chooses addresses and lengths, so every edge of every block, every
//! hole and the top of the 64-bit address space must give either exactly the right
//! host bytes or an error, never a pointer outside a mapping.
//!
//! Runs under miri (anonymous blocks come from the heap there).

use ram_block::{Backing, Error, RamBlock, RamList, VolatileSlice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

const PAGE: u64 = 0x1000;
/// The last page of the guest address space: `u64::MAX - 0xfff ..= u64::MAX`.
const TOP: u64 = u64::MAX - (PAGE - 1);

fn anon() -> Backing {
    Backing::Anonymous { huge_pages: false }
}

fn block(name: &str, start: u64, size: u64) -> RamBlock {
    RamBlock::new(name, GuestAddress(start), size, anon()).unwrap()
}

/// `low` and `next` are adjacent, a hole follows, then `high`, and `top` ends at u64::MAX.
///
/// ```text
/// 0x0    0x1000    0x2000    0x3000 ... 0x10000    0x11000 ... TOP      u64::MAX
/// | hole | low     | next    | hole     | high     | hole      | top    |
/// ```
fn guest_map() -> RamList {
    let ram = RamList::new();
    ram.add(block("low", 0x1000, PAGE)).unwrap();
    ram.add(block("next", 0x2000, PAGE)).unwrap();
    ram.add(block("high", 0x1_0000, PAGE)).unwrap();
    ram.add(block("top", TOP, PAGE)).unwrap();
    ram
}

/// Where a slice points on the host.
fn host(slice: &VolatileSlice<'_>) -> *mut u8 {
    slice.ptr_guard_mut().as_ptr()
}

fn name_at(ram: &RamList, addr: u64) -> Option<String> {
    let guard = rcu::read();
    ram.find(&guard, GuestAddress(addr))
        .map(|b| b.name().to_owned())
}

#[test]
fn lookup_at_every_block_edge() {
    let ram = guest_map();
    let cases: &[(u64, Option<&str>)] = &[
        (0, None),
        (0xfff, None),
        (0x1000, Some("low")),
        (0x1fff, Some("low")),
        (0x2000, Some("next")),
        (0x2fff, Some("next")),
        (0x3000, None),
        (0xffff, None),
        (0x1_0000, Some("high")),
        (0x1_0fff, Some("high")),
        (0x1_1000, None),
        (TOP - 1, None),
        (TOP, Some("top")),
        (u64::MAX, Some("top")),
    ];
    // Twice, so that the second round runs with a warm MRU cache pointing elsewhere.
    for _ in 0..2 {
        for &(addr, want) in cases {
            assert_eq!(name_at(&ram, addr).as_deref(), want, "lookup of {addr:#x}");
        }
    }
}

#[test]
fn translate_gives_the_whole_range_in_one_block_or_an_error() {
    let ram = guest_map();
    let guard = rcu::read();
    let blocks = ram.blocks(&guard);
    let low = blocks.find_by_name("low").unwrap().host_address();

    let s = ram
        .translate(&guard, GuestAddress(0x1000), PAGE as usize)
        .unwrap();
    assert_eq!((host(&s), s.len()), (low, PAGE as usize));
    let s = ram.translate(&guard, GuestAddress(0x1fff), 1).unwrap();
    assert_eq!((host(&s), s.len()), (low.wrapping_add(0xfff), 1));

    // One byte past the end of `low` is in `next`, which is adjacent in the guest but
    // not contiguous on the host: an error, not a slice that runs into another mapping.
    assert!(matches!(
        ram.translate(&guard, GuestAddress(0x1000), PAGE as usize + 1),
        Err(Error::RangeLeavesBlock {
            addr: 0x1000,
            len: 0x1001,
            block_start: 0x1000,
            block_last: 0x1fff
        })
    ));
    assert!(matches!(
        ram.translate(&guard, GuestAddress(0x1fff), 2),
        Err(Error::RangeLeavesBlock { .. })
    ));
    // Ending exactly at the block end is fine; one more byte runs into the hole.
    assert!(ram.translate(&guard, GuestAddress(0x2ffe), 2).is_ok());
    assert!(matches!(
        ram.translate(&guard, GuestAddress(0x2ffe), 3),
        Err(Error::RangeLeavesBlock { .. })
    ));
    // Starting in a hole, or one past a block's end.
    assert!(matches!(
        ram.translate(&guard, GuestAddress(0x3000), 1),
        Err(Error::NotRam { addr: 0x3000 })
    ));
    assert!(matches!(
        ram.translate(&guard, GuestAddress(0xfff), 2),
        Err(Error::NotRam { addr: 0xfff })
    ));
}

#[test]
fn translate_prefix_stops_at_the_block_end() {
    let ram = guest_map();
    let guard = rcu::read();
    let low = ram
        .blocks(&guard)
        .find_by_name("low")
        .unwrap()
        .host_address();

    // address_space_map semantics: the contiguous part, and the caller maps the rest.
    let s = ram
        .translate_prefix(&guard, GuestAddress(0x1f00), 0x1000)
        .unwrap();
    assert_eq!((host(&s), s.len()), (low.wrapping_add(0xf00), 0x100));
    let rest = ram
        .translate_prefix(&guard, GuestAddress(0x2000), 0x1000 - 0x100)
        .unwrap();
    assert_eq!(rest.len(), 0xf00);
    // Shorter than the room left: all of it.
    assert_eq!(
        ram.translate_prefix(&guard, GuestAddress(0x1000), 16)
            .unwrap()
            .len(),
        16
    );
    // The start must still be RAM.
    assert!(matches!(
        ram.translate_prefix(&guard, GuestAddress(0x3000), 1),
        Err(Error::NotRam { .. })
    ));
    // Huge requests are clamped, not overflowed.
    assert_eq!(
        ram.translate_prefix(&guard, GuestAddress(0x1_0001), usize::MAX)
            .unwrap()
            .len(),
        0xfff
    );
}

#[test]
fn zero_length_ranges_are_empty_slices_in_ram_and_errors_elsewhere() {
    let ram = guest_map();
    let guard = rcu::read();
    assert_eq!(
        ram.translate(&guard, GuestAddress(0x1000), 0)
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        ram.translate(&guard, GuestAddress(0x1fff), 0)
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        ram.translate(&guard, GuestAddress(u64::MAX), 0)
            .unwrap()
            .len(),
        0
    );
    assert!(matches!(
        ram.translate(&guard, GuestAddress(0x3000), 0),
        Err(Error::NotRam { .. })
    ));
    assert!(matches!(
        ram.translate(&guard, GuestAddress(0), 0),
        Err(Error::NotRam { .. })
    ));
    assert_eq!(
        ram.translate_prefix(&guard, GuestAddress(0x2000), 0)
            .unwrap()
            .len(),
        0
    );
}

#[test]
fn the_top_of_the_address_space_does_not_wrap() {
    let ram = guest_map();
    let guard = rcu::read();
    let top = ram
        .blocks(&guard)
        .find_by_name("top")
        .unwrap()
        .host_address();

    let s = ram.translate(&guard, GuestAddress(u64::MAX), 1).unwrap();
    assert_eq!((host(&s), s.len()), (top.wrapping_add(0xfff), 1));
    assert_eq!(
        ram.translate(&guard, GuestAddress(TOP), PAGE as usize)
            .unwrap()
            .len(),
        PAGE as usize
    );
    // addr + len would wrap to 0 (where there is a hole, and then `low`).
    assert!(matches!(
        ram.translate(&guard, GuestAddress(u64::MAX), 2),
        Err(Error::RangeLeavesBlock { .. })
    ));
    assert!(matches!(
        ram.translate(&guard, GuestAddress(TOP), PAGE as usize + 1),
        Err(Error::RangeLeavesBlock { .. })
    ));
    assert_eq!(
        ram.translate_prefix(&guard, GuestAddress(u64::MAX), 2)
            .unwrap()
            .len(),
        1
    );

    // Through vm-memory: the access stops at the top instead of wrapping around.
    let mem = ram.memory();
    mem.write_obj(0xabu8, GuestAddress(u64::MAX)).unwrap();
    assert_eq!(mem.read_obj::<u8>(GuestAddress(u64::MAX)).unwrap(), 0xab);
    assert!(mem.write_obj(0u16, GuestAddress(u64::MAX)).is_err());
    assert!(mem.read_obj::<u64>(GuestAddress(u64::MAX - 3)).is_err());
    assert_eq!(mem.last_addr(), GuestAddress(u64::MAX));
}

#[test]
fn huge_lengths_are_errors_not_overflows() {
    let ram = guest_map();
    let guard = rcu::read();
    for addr in [0x1000, 0x1fff, 0x2000, TOP, u64::MAX] {
        for len in [usize::MAX, usize::MAX - 1, isize::MAX as usize, 1 << 63] {
            assert!(
                matches!(
                    ram.translate(&guard, GuestAddress(addr), len),
                    Err(Error::RangeLeavesBlock { .. })
                ),
                "translate({addr:#x}, {len:#x})"
            );
        }
    }
}

#[test]
fn placement_rejects_overlap_and_allows_adjacency() {
    let ram = RamList::new();
    ram.add(block("a", 0x10_000, 0x4000)).unwrap(); // 0x10000..=0x13fff
    for (start, size) in [
        (0x10_000, 0x4000),  // identical
        (0xf_000, 0x2000),   // overlaps the start
        (0x13_fff, 0x1000),  // overlaps the last byte
        (0x11_000, 0x1000),  // inside
        (0x8_000, 0x10_000), // around
    ] {
        let err = ram.add(block("b", start, size)).unwrap_err();
        assert!(
            matches!(err, Error::Overlap { .. }),
            "{start:#x}+{size:#x}: {err}"
        );
    }
    ram.add(block("below", 0xf_000, 0x1000)).unwrap(); // ends at 0xfffff: adjacent
    ram.add(block("above", 0x14_000, 0x1000)).unwrap(); // starts right after "a"
    assert!(matches!(
        ram.add(block("a", 0x40_000, 0x1000)),
        Err(Error::DuplicateName { .. })
    ));

    let guard = rcu::read();
    let names: Vec<_> = ram.blocks(&guard).iter().map(|b| b.name()).collect();
    assert_eq!(names, ["below", "a", "above"]); // kept in address order
}

#[test]
fn block_sizes_and_addresses_are_validated() {
    let err = RamBlock::new("empty", GuestAddress(0), 0, anon()).unwrap_err();
    assert!(matches!(err, Error::EmptyBlock { .. }));
    let err = RamBlock::new("wraps", GuestAddress(u64::MAX), 2, anon()).unwrap_err();
    assert!(matches!(
        err,
        Error::PastTopOfAddressSpace {
            start: u64::MAX,
            size: 2,
            ..
        }
    ));
    let err = RamBlock::new("wraps", GuestAddress(TOP), PAGE + 1, anon()).unwrap_err();
    assert!(matches!(err, Error::PastTopOfAddressSpace { .. }));
    let err = RamBlock::new("huge", GuestAddress(0), u64::MAX, anon()).unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }));
    // A one-byte block at the very top is fine, and so is a size that is not a page
    // multiple (the mapping is rounded up; the guest sees `size` bytes).
    let one = RamBlock::new("one", GuestAddress(u64::MAX), 1, anon()).unwrap();
    assert_eq!(one.last_addr(), GuestAddress(u64::MAX));
    let odd = RamBlock::new("odd", GuestAddress(0x1000), 10, anon()).unwrap();
    assert!(odd.slice(GuestAddress(0x1009), 1).is_ok());
    assert!(odd.slice(GuestAddress(0x1009), 2).is_err());
    assert!(odd.slice(GuestAddress(0x100a), 0).is_err());
}

#[test]
fn remove_needs_the_exact_start() {
    let ram = guest_map();
    assert!(matches!(
        ram.remove(GuestAddress(0x1001)),
        Err(Error::NoSuchBlock { start: 0x1001 })
    ));
    assert!(matches!(
        ram.remove(GuestAddress(0x3000)),
        Err(Error::NoSuchBlock { .. })
    ));
    ram.remove(GuestAddress(0x1000)).unwrap();
    assert!(matches!(
        ram.remove(GuestAddress(0x1000)),
        Err(Error::NoSuchBlock { .. })
    ));
    assert_eq!(name_at(&ram, 0x1000), None);
    assert_eq!(name_at(&ram, 0x2000).as_deref(), Some("next"));
}

#[test]
fn vm_memory_accesses_span_adjacent_blocks_but_stop_at_holes() {
    let ram = guest_map();
    let mem = ram.memory();
    // vm-memory splits an access at block boundaries itself: across `low`/`next` works.
    mem.write_slice(&[1, 2, 3, 4], GuestAddress(0x1ffe))
        .unwrap();
    let mut buf = [0u8; 4];
    mem.read_slice(&mut buf, GuestAddress(0x1ffe)).unwrap();
    assert_eq!(buf, [1, 2, 3, 4]);
    // Into the hole after `next`: a partial write, reported as an error by write_slice.
    assert!(mem.write_slice(&[0; 4], GuestAddress(0x2ffe)).is_err());
    assert_eq!(mem.write(&[9; 4], GuestAddress(0x2ffe)).unwrap(), 2);
    assert!(mem.read_obj::<u32>(GuestAddress(0x3000)).is_err());
    assert!(!mem.address_in_range(GuestAddress(0x3000)));
    assert!(GuestMemoryBackend::check_range(
        &*mem,
        GuestAddress(0x1000),
        0x2000
    ));
    assert!(!GuestMemoryBackend::check_range(
        &*mem,
        GuestAddress(0x1000),
        0x2001
    ));
    assert_eq!(mem.num_regions(), 4);
}

#[test]
fn region_offsets_follow_vm_memory_conventions() {
    let b = block("r", 0x5000, PAGE);
    assert_eq!(
        b.get_slice(MemoryRegionAddress(0), PAGE as usize)
            .unwrap()
            .len(),
        PAGE as usize
    );
    assert_eq!(b.get_slice(MemoryRegionAddress(PAGE), 0).unwrap().len(), 0); // as GuestRegionMmap
    assert!(b.get_slice(MemoryRegionAddress(PAGE), 1).is_err());
    assert!(b.get_slice(MemoryRegionAddress(1), PAGE as usize).is_err());
    assert!(b.get_slice(MemoryRegionAddress(u64::MAX), 1).is_err());
    assert!(b.get_slice(MemoryRegionAddress(1), usize::MAX).is_err());
    assert!(b.get_host_address(MemoryRegionAddress(PAGE - 1)).is_ok());
    assert!(b.get_host_address(MemoryRegionAddress(PAGE)).is_err());
    assert_eq!(
        b.to_region_addr(GuestAddress(0x5fff)),
        Some(MemoryRegionAddress(0xfff))
    );
    assert_eq!(b.to_region_addr(GuestAddress(0x6000)), None);
    assert_eq!(b.to_region_addr(GuestAddress(0x4fff)), None);
    assert!(b.file_offset().is_none() && b.shared_fd().is_none());
}

#[test]
fn errors_name_the_bad_input() {
    let ram = guest_map();
    let guard = rcu::read();
    let msg = |r: Result<_, Error>| r.map(|_| ()).unwrap_err().to_string();
    assert_eq!(
        msg(ram.translate(&guard, GuestAddress(0x3000), 1)),
        "guest address 0x3000 is not RAM"
    );
    assert_eq!(
        msg(ram.translate(&guard, GuestAddress(0x1ff0), 0x20)),
        "guest range 0x1ff0 + 0x20 bytes leaves the RAM block 0x1000..=0x1fff"
    );
    assert_eq!(
        ram.add(block("x", 0x1800, PAGE)).unwrap_err().to_string(),
        "RAM block \"x\" at 0x1800..=0x27ff overlaps block \"low\" at 0x1000..=0x1fff"
    );
    assert_eq!(
        ram.remove(GuestAddress(0x42)).unwrap_err().to_string(),
        "no RAM block starts at guest address 0x42"
    );
}

#[test]
fn replace_all_swaps_the_map_at_once() {
    use ram_block::{Backing, RamBlock, RamList};
    use vm_memory::GuestAddress;
    let anon = || Backing::Anonymous { huge_pages: false };
    let ram = RamList::new();
    ram.add(RamBlock::new("a", GuestAddress(0), 0x1000, anon()).unwrap())
        .unwrap();
    let guard = rcu::read();
    let old = ram.translate(&guard, GuestAddress(0), 4).unwrap();
    ram.replace_all(vec![
        RamBlock::new("b", GuestAddress(0x10_0000), 0x2000, anon()).unwrap(),
        RamBlock::new("c", GuestAddress(0x2000), 0x1000, anon()).unwrap(),
    ])
    .unwrap();
    // The old slice stays valid under the old guard; new readers see only the new map.
    old.write_obj(7u32, 0).unwrap();
    drop(guard);
    let g = rcu::read();
    assert!(ram.find(&g, GuestAddress(0)).is_none());
    assert_eq!(ram.find(&g, GuestAddress(0x2000)).unwrap().name(), "c");
    assert_eq!(ram.blocks(&g).len(), 2);
    drop(g);
    // Overlaps and duplicate names are refused, leaving the map alone.
    let err = ram.replace_all(vec![
        RamBlock::new("x", GuestAddress(0), 0x2000, anon()).unwrap(),
        RamBlock::new("y", GuestAddress(0x1000), 0x1000, anon()).unwrap(),
    ]);
    assert!(err.is_err());
    let err = ram.replace_all(vec![
        RamBlock::new("x", GuestAddress(0), 0x1000, anon()).unwrap(),
        RamBlock::new("x", GuestAddress(0x1000), 0x1000, anon()).unwrap(),
    ]);
    assert!(err.is_err());
    assert_eq!(ram.blocks(&rcu::read()).len(), 2);
    rcu::barrier();
}
