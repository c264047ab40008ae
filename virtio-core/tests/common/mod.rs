//! Shared by virtio-core's tests and benchmarks.

#![allow(dead_code)] // Each test binary uses its own part of this module.

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use aio_context::{AioContext, EventNotifier, IoThread};
use ram_block::{Backing, RamBlock, RamBlocks, RamList};
use virtio_core::{
    Completion, Desc, InFlight, QueueHandler, QueueSet, QueueSetup, VirtioInterrupt,
};
use virtio_queue::Queue;
use vm_memory::GuestAddress;

/// What a handler that completes every chain at once tracks: nothing to cancel.
#[derive(Clone)]
pub(crate) struct NeverParked;

impl InFlight for NeverParked {
    fn is_parked(&self) -> bool {
        false
    }
    fn cancel(&self) {}
}

/// Completes every chain at once, with a used length of 0.
pub(crate) struct Echo;

impl QueueHandler for Echo {
    type Request = ();
    type InFlight = NeverParked;
    fn parse(&self, _mem: &RamBlocks, _descs: &[Desc]) {}
    fn start(&self, _ctx: &AioContext, _req: (), done: Completion) -> Option<NeverParked> {
        done.complete(0);
        None
    }
}

/// Reports `device_error` on a channel.
pub(crate) struct Errors(Mutex<mpsc::Sender<()>>);

impl VirtioInterrupt for Errors {
    fn notify_queue(&self, _index: u16) {}
    fn device_error(&self) {
        let _ = self.0.lock().unwrap().send(());
    }
}

/// 1 MiB of guest RAM at address 0.
pub(crate) fn one_mib_ram() -> RamList {
    let ram = RamList::new();
    let block = RamBlock::new(
        "ram",
        GuestAddress(0),
        1 << 20,
        Backing::Anonymous { huge_pages: false },
    )
    .unwrap();
    ram.add(block).unwrap();
    ram
}

/// Starts `queue` with [`Echo`] on an iothread, runs its first pop round and stops it.
/// The start runs that round on the iothread and waits for it: a round that spins
/// never returns, so it runs on a thread of its own and this fails after 30 s. Returns
/// the `device_error` reports.
pub(crate) fn run_first_round(ram: &RamList, queue: Queue) -> mpsc::Receiver<()> {
    let (tx, errors) = mpsc::channel();
    let setup = QueueSetup {
        queue,
        kick: EventNotifier::new(false).unwrap(),
        memory: ram.clone(),
        interrupt: Arc::new(Errors(Mutex::new(tx))),
        iothread: Arc::new(IoThread::spawn("first-round").unwrap()),
    };
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let mut queues = QueueSet::new("test", 1);
        let started = queues.start(0, setup, false, Echo).is_ok();
        // Leaked on a spin (the iothread never returns); stopped otherwise.
        queues.stop(0);
        let _ = done_tx.send(started);
    });
    let started = done
        .recv_timeout(Duration::from_secs(30))
        .expect("the queue start returned (the runner did not spin)");
    assert!(started);
    errors
}
