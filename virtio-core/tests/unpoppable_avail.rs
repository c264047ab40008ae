//! A queue whose avail index says "more" while virtio-queue pops nothing must not make
//! the runner spin: found by the vhost-user `messages` fuzz target (FUZZING.md). Here
//! the avail ring sits at guest address 0, which virtio-queue takes for "not ready"
//! (its iterator refuses it) while the avail index there reads fine.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

#[test]
fn an_avail_entry_that_cannot_be_popped_breaks_the_queue_instead_of_spinning() {
    let ram = common::one_mib_ram();
    // Avail ring at 0: entry 0 names head 0, the index says one entry.
    let mem = ram.memory();
    mem.write_obj(0u16, GuestAddress(4)).unwrap();
    mem.store(1u16, GuestAddress(2), Ordering::Release).unwrap();
    drop(mem);
    let mut queue = Queue::new(16).unwrap();
    queue.set_size(16);
    queue.set_desc_table_address(Some(0x1000), Some(0));
    queue.set_avail_ring_address(Some(0), Some(0));
    queue.set_used_ring_address(Some(0x2000), Some(0));
    queue.set_ready(true);
    let errors = common::run_first_round(&ram, queue);
    errors
        .recv_timeout(Duration::from_secs(10))
        .expect("the broken ring was reported (device_error)");
}
