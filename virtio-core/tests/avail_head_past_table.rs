//! An avail ring entry naming a descriptor past the table (`head >= size`) breaks the
//! device, as QEMU's `virtqueue_get_head` does ("Guest says index %u is available",
//! `virtio_error`: NEEDS_RESET), instead of being skipped (virtio-queue pops it as an
//! empty chain). Seen by the `chains` fuzz target (FUZZING.md).

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;

#[test]
fn an_avail_entry_naming_a_descriptor_past_the_table_breaks_the_device() {
    let ram = common::one_mib_ram();
    let mem = ram.memory();
    // Descriptor 0: 16 writable bytes at 0x8000 (VIRTQ_DESC_F_WRITE, no next).
    mem.write_obj(0x8000u64, GuestAddress(DESC)).unwrap();
    mem.write_obj(16u32, GuestAddress(DESC + 8)).unwrap();
    mem.write_obj(2u16, GuestAddress(DESC + 12)).unwrap();
    // Avail: head 0 (fine), head 16 (past a 16-entry table), head 0 again; index 3.
    for (slot, head) in [0u16, 16, 0].into_iter().enumerate() {
        mem.write_obj(head, GuestAddress(AVAIL + 4 + 2 * slot as u64))
            .unwrap();
    }
    mem.store(3u16, GuestAddress(AVAIL + 2), Ordering::Release)
        .unwrap();
    drop(mem);
    let mut queue = Queue::new(16).unwrap();
    queue.set_size(16);
    queue.set_desc_table_address(Some(DESC as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    queue.set_used_ring_address(Some(USED as u32), Some(0));
    queue.set_ready(true);
    let errors = common::run_first_round(&ram, queue);
    errors
        .recv_timeout(Duration::from_secs(10))
        .expect("the device reported the bad avail entry (device_error)");
    // The chain before the bad entry ran; nothing after it was popped.
    let mem = ram.memory();
    let used_idx: u16 = mem.read_obj(GuestAddress(USED + 2)).unwrap();
    assert_eq!(used_idx, 1, "only the chain before the bad entry is used");
    let id: u32 = mem.read_obj(GuestAddress(USED + 4)).unwrap();
    assert_eq!(id, 0);
}
