//! The virtio-blk device model's per-request costs, without a transport (criterion
//! groups):
//!
//! - `parse/KIND`: turning a chain's descriptors into a request (`request::parse`):
//!   the header read from guest memory, the sector range checked against the capacity,
//!   every descriptor checked to lie in guest RAM, the data buffers as a
//!   scatter-gather list. It runs for every request a guest sends, before any I/O.
//! - `request/KIND`: one request end to end through the device model at queue depth
//!   1: the driver side (this thread) writes the chain and kicks; the queue's iothread
//!   parses it, runs it on the drive (io_uring, against an image on tmpfs so that the
//!   disk does not dominate), writes the status and the used entry and notifies. The
//!   latency a guest sees from its kick to its interrupt, less the transport.
//!
//! KIND: a 4 KiB read, a 4 KiB write, a flush, a discard of 4 KiB.
//!
//! `cargo bench -p virtio-blk --bench requests -- --warm-up-time 1 --measurement-time 2`

use std::hint::black_box;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use aio_context::{EventNotifier, IoThread};
use block_dma::{Drive, ErrorPolicy, FileBackend, FileOptions, OpenError};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use ram_block::{Backing, RamBlock, RamList};
use virtio_blk::config::{S_OK, T_DISCARD, T_FLUSH, T_IN, T_OUT};
use virtio_blk::request::{Action, DiskLimits, parse};
use virtio_blk::{BlkOptions, VirtioBlk};
use virtio_core::{Desc, QueueSetup, VirtioDevice, VirtioInterrupt};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

/// The image: 16 MiB.
const DISK_BYTES: u64 = 16 << 20;
/// Guest-physical layout: the rings, the request header, its payload (data buffer or
/// discard segment), the status byte.
const RING_DESC: u64 = 0x1000;
const RING_AVAIL: u64 = 0x2000;
const RING_USED: u64 = 0x3000;
const HEADER: u64 = 0x4000;
const PAYLOAD: u64 = 0x5000;
const STATUS: u64 = 0x7000;
/// The queue's size.
const QUEUE_SIZE: u16 = 16;

/// One kind of request: its type, and the payload descriptor between header and
/// status (`None`: none; `Some(write)`: 4 KiB, device-writable or not).
struct Kind {
    name: &'static str,
    ty: u32,
    payload: Option<bool>,
}

const KINDS: [Kind; 4] = [
    Kind {
        name: "read_4k",
        ty: T_IN,
        payload: Some(true),
    },
    Kind {
        name: "write_4k",
        ty: T_OUT,
        payload: Some(false),
    },
    Kind {
        name: "flush",
        ty: T_FLUSH,
        payload: None,
    },
    Kind {
        name: "discard",
        ty: T_DISCARD,
        payload: Some(false),
    },
];

impl Kind {
    /// Writes the header (and a discard's segment) into guest memory and returns the
    /// chain: header, payload, status.
    fn prepare(&self, ram: &RamList) -> Vec<Desc> {
        let mem = ram.memory();
        // struct virtio_blk_outhdr { le32 type; le32 ioprio; le64 sector }
        mem.write_obj(self.ty, GuestAddress(HEADER)).unwrap();
        mem.write_obj(0u32, GuestAddress(HEADER + 4)).unwrap();
        mem.write_obj(8u64, GuestAddress(HEADER + 8)).unwrap();
        let mut descs = vec![Desc {
            addr: HEADER,
            len: 16,
            write: false,
        }];
        if let Some(write) = self.payload {
            let len = if self.ty == T_DISCARD {
                // struct virtio_blk_discard_write_zeroes { le64 sector; le32 num_sectors; le32 flags }
                mem.write_obj(8u64, GuestAddress(PAYLOAD)).unwrap();
                mem.write_obj(8u32, GuestAddress(PAYLOAD + 8)).unwrap();
                mem.write_obj(0u32, GuestAddress(PAYLOAD + 12)).unwrap();
                16
            } else {
                4096
            };
            descs.push(Desc {
                addr: PAYLOAD,
                len,
                write,
            });
        }
        descs.push(Desc {
            addr: STATUS,
            len: 1,
            write: true,
        });
        descs
    }
}

/// 1 MiB of guest RAM at 0.
fn guest_ram() -> RamList {
    let ram = RamList::new();
    let backing = Backing::Memfd { huge_pages: false };
    let block = RamBlock::new("ram", GuestAddress(0), 1 << 20, backing).unwrap();
    ram.add(block).unwrap();
    ram
}

fn parse_requests(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse");
    let ram = guest_ram();
    let limits = DiskLimits {
        size: DISK_BYTES,
        read_only: false,
        discard: true,
        write_zeroes: true,
    };
    for kind in &KINDS {
        let descs = kind.prepare(&ram);
        group.bench_function(kind.name, |b| {
            b.iter(|| {
                let mem = ram.memory();
                let req = parse(&*mem, black_box(&descs), &limits);
                assert!(!matches!(req.action, Action::Status(_)), "{req:?}");
                req
            });
        });
    }
    group.finish();
}

/// Tells the driver side that the used ring moved.
struct Notify(Mutex<mpsc::Sender<()>>);

impl VirtioInterrupt for Notify {
    fn notify_queue(&self, _index: u16) {
        let _ = self.0.lock().unwrap().send(());
    }
}

/// The driver's side of one queue, one request at a time: the chain always occupies
/// descriptors 0.., the avail index moves by one per request.
struct Driver {
    ram: RamList,
    kick: EventNotifier,
    notified: mpsc::Receiver<()>,
    avail_idx: u16,
}

impl Driver {
    /// Writes `descs` as the chain at descriptor 0.
    fn write_chain(&self, descs: &[Desc]) {
        let mem = self.ram.memory();
        for (i, d) in descs.iter().enumerate() {
            let entry = RING_DESC + 16 * i as u64;
            let more = i + 1 < descs.len();
            let flags = u16::from(more) | if d.write { 2 } else { 0 };
            mem.write_obj(d.addr, GuestAddress(entry)).unwrap();
            mem.write_obj(d.len, GuestAddress(entry + 8)).unwrap();
            mem.write_obj(flags, GuestAddress(entry + 12)).unwrap();
            mem.write_obj(i as u16 + 1, GuestAddress(entry + 14))
                .unwrap();
        }
    }

    /// Makes the chain available, kicks, and waits for it in the used ring; returns
    /// the status byte.
    fn submit(&mut self) -> u8 {
        let mem = self.ram.memory();
        let slot = RING_AVAIL + 4 + 2 * u64::from(self.avail_idx % QUEUE_SIZE);
        mem.write_obj(0u16, GuestAddress(slot)).unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        mem.store(
            self.avail_idx,
            GuestAddress(RING_AVAIL + 2),
            Ordering::Release,
        )
        .unwrap();
        drop(mem);
        self.kick.set().unwrap();
        self.notified
            .recv_timeout(Duration::from_secs(10))
            .expect("the request completes");
        let mem = self.ram.memory();
        let used: u16 = mem
            .load(GuestAddress(RING_USED + 2), Ordering::Acquire)
            .unwrap();
        assert_eq!(used, self.avail_idx, "one notification per request");
        mem.read_obj(GuestAddress(STATUS)).unwrap()
    }
}

/// The image on tmpfs, or `None` (with a SKIPPED line) where io_uring lacks what the
/// backend needs.
fn drive(dir: &std::path::Path) -> Option<Drive> {
    let path = dir.join("disk.img");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(DISK_BYTES))
        .expect("image on tmpfs");
    match FileBackend::open(&FileOptions::new(&path)) {
        Ok(backend) => Some(Drive::new(
            "vblk0",
            "file0",
            Arc::new(backend),
            ErrorPolicy::default(),
            None,
        )),
        Err(OpenError::Unsupported(what)) => {
            eprintln!("SKIPPED virtio-blk request benchmarks: io_uring lacks {what}");
            None
        }
        Err(e) => panic!("cannot open the image: {e}"),
    }
}

fn requests(c: &mut Criterion) {
    // tmpfs where there is one: the device model's cost, not the disk's.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    }
    .unwrap();
    let Some(drive) = drive(dir.path()) else {
        return;
    };
    let mut blk = VirtioBlk::new(
        drive,
        BlkOptions {
            queue_size: QUEUE_SIZE,
            ..BlkOptions::default()
        },
    )
    .unwrap();
    // No feature acked, EVENT_IDX included: every request notifies (the driver side
    // waits for each one).
    let ram = guest_ram();
    let mut queue = Queue::new(QUEUE_SIZE).unwrap();
    queue.set_size(QUEUE_SIZE);
    queue.set_desc_table_address(Some(RING_DESC as u32), Some(0));
    queue.set_avail_ring_address(Some(RING_AVAIL as u32), Some(0));
    queue.set_used_ring_address(Some(RING_USED as u32), Some(0));
    queue.set_ready(true);
    let kick = EventNotifier::new(false).unwrap();
    let (tx, notified) = mpsc::channel();
    let setup = QueueSetup {
        queue,
        kick: kick.try_clone().unwrap(),
        memory: ram.clone(),
        interrupt: Arc::new(Notify(Mutex::new(tx))),
        iothread: Arc::new(IoThread::spawn("vblk0-io").unwrap()),
    };
    blk.start_queue(0, setup).unwrap();
    let mut driver = Driver {
        ram: ram.clone(),
        kick,
        notified,
        avail_idx: 0,
    };
    let mut group = c.benchmark_group("request");
    for kind in &KINDS {
        let descs = kind.prepare(&ram);
        driver.write_chain(&descs);
        group.bench_function(BenchmarkId::from_parameter(kind.name), |b| {
            b.iter(|| assert_eq!(driver.submit(), S_OK, "{}", kind.name));
        });
    }
    group.finish();
    blk.stop_queue(0).expect("the queue was running");
}

criterion_group!(benches, parse_requests, requests);
criterion_main!(benches);
