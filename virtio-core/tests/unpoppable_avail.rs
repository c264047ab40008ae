//! A queue whose avail index says "more" while virtio-queue pops nothing must not make
//! the runner spin: found by the vhost-user `messages` fuzz target (FUZZING.md). Here
//! the avail ring sits at guest address 0, which virtio-queue takes for "not ready"
//! (its iterator refuses it) while the avail index there reads fine.

mod common;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use aio_context::{AioContext, EventNotifier, IoThread};
use common::NeverParked;
use ram_block::{Backing, RamBlock, RamBlocks, RamList};
use virtio_core::{Completion, Desc, QueueHandler, QueueSet, QueueSetup, VirtioInterrupt};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Completes every chain at once.
struct Echo;

impl QueueHandler for Echo {
    type Request = ();
    type InFlight = NeverParked;
    fn parse(&self, _mem: &RamBlocks, _descs: &[Desc]) {}
    fn start(&self, _ctx: &AioContext, _req: (), done: Completion) -> Option<NeverParked> {
        done.complete(0);
        None
    }
}

/// Reports `device_error`.
struct Errors(Mutex<mpsc::Sender<()>>);

impl VirtioInterrupt for Errors {
    fn notify_queue(&self, _index: u16) {}
    fn device_error(&self) {
        let _ = self.0.lock().unwrap().send(());
    }
}

#[test]
fn an_avail_entry_that_cannot_be_popped_breaks_the_queue_instead_of_spinning() {
    let ram = RamList::new();
    let block = RamBlock::new(
        "ram",
        GuestAddress(0),
        1 << 20,
        Backing::Anonymous { huge_pages: false },
    )
    .unwrap();
    ram.add(block).unwrap();
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
    let (tx, errors) = mpsc::channel();
    let setup = QueueSetup {
        queue,
        kick: EventNotifier::new(false).unwrap(),
        memory: ram.clone(),
        interrupt: Arc::new(Errors(Mutex::new(tx))),
        iothread: Arc::new(IoThread::spawn("unpoppable").unwrap()),
    };
    // The start runs the first pop round on the iothread and waits for it: a spinning
    // round never returns, so it runs on a thread of its own, under a deadline.
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let mut queues = QueueSet::new("test", 1);
        let started = queues.start(0, setup, false, Echo).is_ok();
        let _ = done_tx.send(started);
        // Leaked on a spin (the iothread never returns); stopped otherwise.
        queues.stop(0);
    });
    let started = done
        .recv_timeout(Duration::from_secs(30))
        .expect("the queue start returned (the runner did not spin)");
    assert!(started);
    errors
        .recv_timeout(Duration::from_secs(10))
        .expect("the broken ring was reported (device_error)");
}
