//! The virtqueue hot paths every virtio device pays per request, in criterion groups:
//!
//! - `pop_push/N`: one split-virtqueue round of a chain of N descriptors (1: a bare
//!   buffer, 3: the usual header/data/status request, 16: a scattered one) in guest
//!   memory: the driver publishes the head in the avail ring, the device pops the chain,
//!   walks it into [`Desc`]s as the runner does and returns it in the used ring. This is
//!   the ring work the runner does for every request before and after the device's own
//!   handling, so it bounds the request rate of every queue.
//! - `runner/batch`: the generic queue runner end to end, per request: the driver side
//!   (this thread) publishes `batch` chains and kicks; the runner on its iothread wakes,
//!   pops them, hands each to a handler that completes at once, writes the used entries
//!   and signals one (coalesced) notification. What is left over the ring work above is
//!   the runner's own overhead (eventfd wake-up, in-flight tracking, the notification
//!   BH), paid by virtio-blk, virtio-scsi and the vhost-user export alike.
//! - `event_idx`: the interrupt-suppression decision after a used entry (EVENT_IDX): with
//!   the driver asking for a notification, with the driver's `used_event` behind (the
//!   notification suppressed), and without EVENT_IDX. It runs once per loop iteration
//!   of every queue, and the interrupt it saves is the most expensive thing a request
//!   can cost.
//!
//! `cargo bench -p virtio-core --bench queue -- --warm-up-time 1 --measurement-time 2`

#[path = "../tests/common/mod.rs"]
mod common;

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use aio_context::{AioContext, EventNotifier, IoThread};
use common::NeverParked;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use ram_block::{Backing, RamBlock, RamBlocks, RamList};
use virtio_core::{Completion, Desc, QueueHandler, QueueSet, QueueSetup, VirtioInterrupt};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// Ring size of every queue here.
const SIZE: u16 = 256;
/// Guest-physical layout: descriptor table, avail ring, used ring, data buffers.
const DESC: u64 = 0x1_0000;
const AVAIL: u64 = 0x2_0000;
const USED: u64 = 0x3_0000;
const DATA: u64 = 0x4_0000;
/// Descriptor flags.
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;

/// 1 MiB of guest RAM at 0.
fn guest_ram() -> RamList {
    let ram = RamList::new();
    let block = RamBlock::new(
        "ram",
        GuestAddress(0),
        1 << 20,
        Backing::Memfd { huge_pages: false },
    )
    .expect("guest RAM");
    ram.add(block).expect("guest RAM added");
    ram
}

/// Writes descriptor `i` (512-byte buffer `i`; chained to `i + 1` unless `last`; the
/// last of a chain device-writable).
fn write_desc(ram: &RamList, i: u16, last: bool) {
    let mem = ram.memory();
    let at = DESC + 16 * u64::from(i);
    let flags = if last { F_WRITE } else { F_NEXT };
    mem.write_obj(DATA + 512 * u64::from(i), GuestAddress(at))
        .unwrap();
    mem.write_obj(512u32, GuestAddress(at + 8)).unwrap();
    mem.write_obj(flags, GuestAddress(at + 12)).unwrap();
    mem.write_obj(i + 1, GuestAddress(at + 14)).unwrap();
}

/// Fills the descriptor table with chains of `len` descriptors, back to back; returns
/// their heads.
fn write_chains(ram: &RamList, len: u16) -> Vec<u16> {
    let chains = SIZE / len;
    for c in 0..chains {
        for d in 0..len {
            write_desc(ram, c * len + d, d + 1 == len);
        }
    }
    (0..chains).map(|c| c * len).collect()
}

/// A ready queue over the rings above.
fn queue(event_idx: bool) -> Queue {
    let mut q = Queue::new(SIZE).unwrap();
    q.set_size(SIZE);
    q.set_desc_table_address(Some(DESC as u32), Some(0));
    q.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    q.set_used_ring_address(Some(USED as u32), Some(0));
    q.set_event_idx(event_idx);
    q.set_ready(true);
    q
}

/// The driver's side of the avail ring.
struct Driver {
    avail_idx: u16,
}

impl Driver {
    /// Publishes `head` (the ring entry, then the index).
    fn publish(&mut self, mem: &RamBlocks, head: u16) {
        let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % SIZE);
        mem.write_obj(head, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.store(self.avail_idx, GuestAddress(AVAIL + 2), Ordering::Release)
            .unwrap();
    }
}

/// Walks a chain into descriptors, as the runner does.
fn walk<M>(chain: virtio_queue::DescriptorChain<M>) -> smallvec::SmallVec<[Desc; 8]>
where
    M: std::ops::Deref<Target: vm_memory::GuestMemory>,
{
    chain
        .map(|d| Desc {
            addr: d.addr().0,
            len: d.len(),
            write: d.is_write_only(),
        })
        .collect()
}

fn pop_push(c: &mut Criterion) {
    let mut group = c.benchmark_group("pop_push");
    for len in [1u16, 3, 16] {
        let ram = guest_ram();
        let heads = write_chains(&ram, len);
        let mut q = queue(false);
        let mut driver = Driver { avail_idx: 0 };
        let mut next = heads.iter().copied().cycle();
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::from_parameter(len), |b| {
            b.iter(|| {
                let mem = ram.memory();
                driver.publish(&mem, next.next().unwrap());
                let chain = q.pop_descriptor_chain(mem.clone()).expect("a chain");
                let head = chain.head_index();
                let descs = walk(chain);
                assert_eq!(descs.len(), usize::from(len));
                q.add_used(&*mem, head, black_box(512)).unwrap();
            });
        });
    }
    group.finish();
}

/// Completes every chain at once with its writable length.
struct Echo;

impl QueueHandler for Echo {
    type Request = u32;
    type InFlight = NeverParked;
    fn parse(&self, _mem: &RamBlocks, descs: &[Desc]) -> u32 {
        descs.iter().filter(|d| d.write).map(|d| d.len).sum()
    }
    fn start(&self, _ctx: &AioContext, writable: u32, done: Completion) -> Option<NeverParked> {
        done.complete(writable);
        None
    }
}

/// Tells the bench thread that the used ring moved.
struct Notify(Mutex<mpsc::Sender<()>>);

impl VirtioInterrupt for Notify {
    fn notify_queue(&self, _index: u16) {
        let _ = self.0.lock().unwrap().send(());
    }
}

fn runner(c: &mut Criterion) {
    let mut group = c.benchmark_group("runner");
    for batch in [1u16, 16] {
        let ram = guest_ram();
        let heads = write_chains(&ram, 3);
        let kick = EventNotifier::new(false).unwrap();
        let (tx, rx) = mpsc::channel();
        let mut queues = QueueSet::new("bench", 1);
        let setup = QueueSetup {
            queue: queue(false),
            kick: kick.try_clone().unwrap(),
            memory: ram.clone(),
            interrupt: Arc::new(Notify(Mutex::new(tx))),
            iothread: Arc::new(IoThread::spawn("bench-io").unwrap()),
        };
        queues.start(0, setup, false, Echo).unwrap();
        let mut driver = Driver { avail_idx: 0 };
        let mut next = heads.iter().copied().cycle();
        group.throughput(Throughput::Elements(u64::from(batch)));
        group.bench_function(BenchmarkId::from_parameter(batch), |b| {
            b.iter(|| {
                {
                    let mem = ram.memory();
                    for _ in 0..batch {
                        driver.publish(&mem, next.next().unwrap());
                    }
                }
                kick.set().unwrap();
                // Notifications are coalesced: wait until every chain is back.
                loop {
                    rx.recv_timeout(Duration::from_secs(10))
                        .expect("the runner completes the batch");
                    let used: u16 = ram
                        .memory()
                        .load(GuestAddress(USED + 2), Ordering::Acquire)
                        .unwrap();
                    if used == driver.avail_idx {
                        break;
                    }
                }
            });
        });
        queues.stop(0).expect("the queue was running");
    }
    group.finish();
}

fn event_idx(c: &mut Criterion) {
    let mut group = c.benchmark_group("event_idx");
    let ram = guest_ram();
    // `used_event` sits after the avail ring's entries.
    let used_event = GuestAddress(AVAIL + 4 + 2 * u64::from(SIZE));
    // (name, EVENT_IDX on, where the driver's `used_event` points relative to the
    // entry about to be used: 0 asks for it; half the index space away does not).
    for (name, on, distance) in [
        ("notify", true, 0u16),
        ("suppressed", true, 0x8000),
        ("off", false, 0x8000),
    ] {
        let mut q = queue(on);
        let expect = !on || distance == 0;
        group.bench_function(name, |b| {
            b.iter(|| {
                let mem = ram.memory();
                let at = q.next_used().wrapping_add(distance);
                mem.store(at, used_event, Ordering::Release).unwrap();
                q.add_used(&*mem, 0, 0).unwrap();
                let notify = q.needs_notification(&*mem).unwrap();
                assert_eq!(notify, expect);
                notify
            });
        });
    }
    group.finish();
}

criterion_group!(benches, pop_push, runner, event_idx);
criterion_main!(benches);
