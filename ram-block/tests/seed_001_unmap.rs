//! Seed 001's reclaim rule, observed on the real mapping: a reader holds a guard and a
//! slice of a block while another thread hot-removes it. The reader still reads the
//! old contents (an early `munmap` would make this read fault with SIGSEGV), no grace
//! period can end while the guard lives, and once the guard is gone and the `call_rcu`
//! queue drained, the mapping has left the address space.
//!
//! One test per binary on purpose: it checks that an address range is unmapped, and
//! other tests running in parallel could map something new there.

#![cfg(not(miri))] // real mmap, /proc/self/maps and mincore(2)

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use ram_block::{Backing, RamBlock, RamList};
use vm_memory::{Address, Bytes, GuestAddress};

const START: GuestAddress = GuestAddress(0x4000_0000);
const SIZE: usize = 0x10_0000;

/// Whether every page of `[addr, addr + len)` is mapped: mincore(2) fails with ENOMEM
/// for a range that contains unmapped pages.
fn is_mapped(addr: *mut u8, len: usize) -> bool {
    let mut residency = vec![0u8; len.div_ceil(4096)];
    // SAFETY: mincore only inspects the page tables for the range and writes one byte
    // per page into `residency`, which is large enough; it never touches the range.
    let rc = unsafe { libc::mincore(addr.cast(), len, residency.as_mut_ptr()) };
    rc == 0
}

/// Whether /proc/self/maps lists a mapping of the memfd labelled `label`.
fn memfd_is_mapped(label: &str) -> bool {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .any(|l| l.contains(&format!("/memfd:{label} ")))
}

#[test]
fn a_removed_block_is_unmapped_only_after_the_last_reader_guard_is_gone() {
    let label = format!("seed001-victim-{}", std::process::id());
    let ram = RamList::new();
    let block = RamBlock::new(
        &label,
        START,
        SIZE as u64,
        Backing::Memfd { huge_pages: false },
    )
    .unwrap();
    block
        .volatile_slice()
        .write_slice(&[0x5a; SIZE], 0)
        .unwrap();
    ram.add(block).unwrap();

    // A reader (a vCPU doing DMA, say) translates a guest range and holds the slice.
    let guard = rcu::read();
    let slice = ram
        .translate(&guard, START.unchecked_add(0x1000), 0x1000)
        .unwrap();
    let host = ram.find(&guard, START).unwrap().host_address();

    // Hot remove on another thread. It returns at once: it does not wait for readers.
    let remover = ram.clone();
    thread::spawn(move || remover.remove(START).unwrap())
        .join()
        .unwrap();
    assert!(
        ram.find(&rcu::read(), START).is_none(),
        "new readers must not find the block"
    );

    // No grace period can end while we hold `guard`: a callback queued now stays queued.
    let (tx, rx) = mpsc::channel();
    rcu::call_rcu(move || tx.send(()).unwrap());
    assert!(
        rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "a grace period ended while a reader held its guard"
    );

    // So the block is still mapped and still holds what the guest wrote.
    assert!(memfd_is_mapped(&label) && is_mapped(host, SIZE));
    let mut buf = [0u8; 0x1000];
    slice.read_slice(&mut buf, 0).unwrap();
    assert!(
        buf.iter().all(|&b| b == 0x5a),
        "the removed block's contents changed"
    );
    slice.write_obj(0xa5u8, 7).unwrap(); // and it is still writable memory
    assert_eq!(slice.read_obj::<u8>(7).unwrap(), 0xa5);

    // Leave the read section: the grace period ends, and the reclaim runs.
    drop(guard);
    rx.recv_timeout(Duration::from_secs(10))
        .expect("the grace period did not end after the guard was dropped");
    rcu::barrier();
    assert!(
        !memfd_is_mapped(&label),
        "the memfd mapping survived the grace period"
    );
    assert!(
        !is_mapped(host, SIZE),
        "the block's address range is still mapped"
    );
}
