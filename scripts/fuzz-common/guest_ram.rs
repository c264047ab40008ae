//! Shared by the fuzz targets (included with `#[path]`): guest memory of two 64 KiB
//! RAM blocks with a hole between them, `0..64K` and `128K..192K`, kept between runs.

use std::sync::OnceLock;

use ram_block::{Backing, RamBlock, RamList};
use vm_memory::GuestAddress;

/// The two RAM blocks: (start, size).
pub(crate) const BLOCKS: [(u64, u64); 2] = [(0, 0x1_0000), (0x2_0000, 0x1_0000)];

/// Block `i` of [`BLOCKS`], freshly mapped (zeroed).
pub(crate) fn block(i: usize) -> RamBlock {
    let (start, size) = BLOCKS[i];
    RamBlock::new(
        format!("ram{i}"),
        GuestAddress(start),
        size,
        Backing::Anonymous { huge_pages: false },
    )
    .expect("an anonymous 64 KiB block maps")
}

/// Guest memory with both blocks present and zeroed: kept between runs (mapping it
/// anew for each run costs more than the run).
pub(crate) fn fresh_ram() -> &'static RamList {
    static RAM: OnceLock<RamList> = OnceLock::new();
    let ram = RAM.get_or_init(RamList::new);
    for (i, &(start, size)) in BLOCKS.iter().enumerate() {
        let mem = ram.memory();
        match mem.find(GuestAddress(start)) {
            // SAFETY: the block maps `size` bytes at its host address for as long as
            // `mem` (a read guard) lives, and nothing else touches guest memory between
            // two runs.
            Some(b) => unsafe { std::ptr::write_bytes(b.host_address(), 0, size as usize) },
            None => {
                drop(mem);
                ram.add(block(i)).expect("a fresh block fits");
            }
        }
    }
    ram
}

/// Hot-removes block `i` if present, re-adds it if not (memory that shrinks and
/// grows under the device); `present` tracks which are there.
pub(crate) fn toggle(ram: &RamList, present: &mut [bool; 2], i: usize) -> Option<()> {
    if present[i] {
        ram.remove(GuestAddress(BLOCKS[i].0)).ok()?;
    } else {
        ram.add(block(i)).ok()?;
    }
    present[i] = !present[i];
    Some(())
}
