//! The vhost-user export's costs per message and per request, against a frontend in
//! this process (the `vhost` crate's `Frontend` on the export's Unix socket; criterion
//! groups):
//!
//! - `message/KIND`: one request/reply round trip of the protocol through
//!   [`ExportServer`]: the frontend frames the message (12-byte header, payload), the
//!   server reads it, checks its fd count, the protocol library parses it and the
//!   device state answers. `get_features`: a header-only request with an 8-byte reply;
//!   `get_config`: a 12-byte config header plus 16 bytes of payload each way. A
//!   frontend's start-up and every reconnect are a few dozen of these.
//! - `request/batch`: the data path per request: the frontend publishes `batch` chains
//!   in the shared memory (a memfd it passed with `SET_MEM_TABLE`) and writes the kick
//!   eventfd; the export's iothread pops them through virtio-core's runner, a device
//!   that completes every chain at once returns them, and the call eventfd is written
//!   (through io_uring). With no disk behind it, this is what the export itself adds to
//!   each request a vhost-user frontend sends.
//!
//! `cargo bench -p vhost-user-export --bench protocol -- --warm-up-time 1 --measurement-time 2`

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use aio_context::{AioContext, IoThread};
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use ram_block::{Backing, RamBlock, RamBlocks, RamList};
use vhost::vhost_user::message::{VhostUserConfigFlags, VhostUserProtocolFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vhost_user_export::{ExportServer, VhostUserDevice};
use virtio_core::{
    Completion, Desc, InFlight, QueueError, QueueHandler, QueueSet, QueueSetup, VirtioDevice,
};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// Ring size.
const SIZE: u16 = 256;
/// Guest-physical layout of the shared memory: rings, then 512-byte buffers.
const DESC: u64 = 0x1_0000;
const AVAIL: u64 = 0x2_0000;
const USED: u64 = 0x3_0000;
const DATA: u64 = 0x4_0000;
/// Bytes of the device config `get_config` reads.
const CONFIG_BYTES: u32 = 16;

/// A device whose one queue returns every chain untouched.
struct Null {
    queues: QueueSet,
}

/// Nothing to cancel: a chain completes as it starts.
#[derive(Clone)]
struct Done;

impl InFlight for Done {
    fn is_parked(&self) -> bool {
        false
    }
    fn cancel(&self) {}
}

struct NullQueue;

impl QueueHandler for NullQueue {
    type Request = ();
    type InFlight = Done;
    fn parse(&self, _mem: &RamBlocks, _descs: &[Desc]) {}
    fn start(&self, _ctx: &AioContext, _request: (), done: Completion) -> Option<Done> {
        done.complete(0);
        None
    }
}

impl VirtioDevice for Null {
    fn device_type(&self) -> u32 {
        2
    }
    fn num_queues(&self) -> u16 {
        1
    }
    fn queue_max_size(&self) -> u16 {
        SIZE
    }
    fn features(&self) -> u64 {
        1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1
    }
    fn ack_features(&mut self, _: u64) {}
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        virtio_core::read_config_bytes(&[0x5a; CONFIG_BYTES as usize], offset, data);
    }
    fn write_config(&mut self, _: u64, _: &[u8]) {}
    fn start_queue(&mut self, index: u16, setup: QueueSetup) -> Result<(), QueueError> {
        self.queues.start(index, setup, false, NullQueue)
    }
    fn stop_queue(&mut self, index: u16) -> Option<Queue> {
        self.queues.stop(index)
    }
}

/// The export, serving on a socket in a temporary directory until dropped.
struct Export {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    stop: Arc<AtomicBool>,
    serving: Option<std::thread::JoinHandle<()>>,
}

impl Export {
    fn start() -> Export {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bench.sock");
        let device = Null {
            queues: QueueSet::new("null", 1),
        };
        let iothread = Arc::new(IoThread::spawn("export-io").unwrap());
        let server = Arc::new(
            ExportServer::bind(&path, VhostUserDevice::new(Box::new(device), iothread)).unwrap(),
        );
        let stop = Arc::new(AtomicBool::new(false));
        let serving = {
            let stop = stop.clone();
            std::thread::spawn(move || server.run(&stop))
        };
        Export {
            _dir: dir,
            path,
            stop,
            serving: Some(serving),
        }
    }

    /// A frontend that negotiated the features and protocol features (CONFIG).
    fn frontend(&self) -> Frontend {
        let mut f = Frontend::connect(&self.path, 1).unwrap();
        f.set_owner().unwrap();
        let features = f.get_features().unwrap();
        f.set_features(features).unwrap();
        assert_ne!(features & F_PROTOCOL_FEATURES, 0);
        let protocol = f.get_protocol_features().unwrap();
        f.set_protocol_features(protocol & VhostUserProtocolFeatures::CONFIG)
            .unwrap();
        f
    }
}

impl Drop for Export {
    fn drop(&mut self) {
        // `run` looks at `stop` between connections: one more connection ends it.
        self.stop.store(true, Ordering::Relaxed);
        let _ = std::os::unix::net::UnixStream::connect(&self.path);
        if let Some(t) = self.serving.take() {
            let _ = t.join();
        }
    }
}

fn message(c: &mut Criterion) {
    let mut group = c.benchmark_group("message");
    let export = Export::start();
    let mut f = export.frontend();
    group.bench_function("get_features", |b| b.iter(|| f.get_features().unwrap()));
    group.bench_function("get_config", |b| {
        let buf = [0u8; CONFIG_BYTES as usize];
        b.iter(|| {
            let (_, payload) = f
                .get_config(0, CONFIG_BYTES, VhostUserConfigFlags::WRITABLE, &buf)
                .unwrap();
            assert_eq!(payload[0], 0x5a);
            payload
        });
    });
    group.finish();
    drop(f);
}

/// The frontend's side of one ring in the shared memory.
struct Ring {
    ram: RamList,
    kick: EventFd,
    call: EventFd,
    avail_idx: u16,
    next_head: u16,
}

impl Ring {
    /// Shares 1 MiB of memory with the export and starts queue 0 on it, with one
    /// writable 512-byte descriptor per entry.
    fn start(f: &Frontend) -> Ring {
        let ram = RamList::new();
        let backing = Backing::Memfd { huge_pages: false };
        let block = ram
            .add(RamBlock::new("shared", GuestAddress(0), 1 << 20, backing).unwrap())
            .unwrap();
        let (fd, offset) = block.shared_fd().expect("a memfd");
        let uaddr = block.host_address() as u64;
        f.set_mem_table(&[VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: block.size(),
            userspace_addr: uaddr,
            mmap_offset: offset,
            mmap_handle: fd.as_raw_fd(),
        }])
        .unwrap();
        let mem = ram.memory();
        for i in 0..SIZE {
            let at = DESC + 16 * u64::from(i);
            mem.write_obj(DATA + 512 * u64::from(i), GuestAddress(at))
                .unwrap();
            mem.write_obj(512u32, GuestAddress(at + 8)).unwrap();
            mem.write_obj(2u16, GuestAddress(at + 12)).unwrap(); // WRITE
        }
        drop(mem);
        let kick = EventFd::new(0).unwrap();
        let call = EventFd::new(0).unwrap();
        f.set_vring_num(0, SIZE).unwrap();
        f.set_vring_addr(
            0,
            &VringConfigData {
                queue_max_size: SIZE,
                queue_size: SIZE,
                flags: 0,
                desc_table_addr: uaddr + DESC,
                used_ring_addr: uaddr + USED,
                avail_ring_addr: uaddr + AVAIL,
                log_addr: None,
            },
        )
        .unwrap();
        f.set_vring_base(0, 0).unwrap();
        f.set_vring_call(0, &call).unwrap();
        f.set_vring_kick(0, &kick).unwrap();
        Ring {
            ram,
            kick,
            call,
            avail_idx: 0,
            next_head: 0,
        }
    }

    /// Publishes `n` chains, kicks, and waits until all are used.
    fn round(&mut self, n: u16) {
        let mem = self.ram.memory();
        for _ in 0..n {
            let slot = AVAIL + 4 + 2 * u64::from(self.avail_idx % SIZE);
            mem.write_obj(self.next_head, GuestAddress(slot)).unwrap();
            self.next_head = (self.next_head + 1) % SIZE;
            self.avail_idx = self.avail_idx.wrapping_add(1);
        }
        mem.store(self.avail_idx, GuestAddress(AVAIL + 2), Ordering::Release)
            .unwrap();
        self.kick.write(1).unwrap();
        loop {
            let used: u16 = mem.load(GuestAddress(USED + 2), Ordering::Acquire).unwrap();
            if used == self.avail_idx {
                return;
            }
            self.wait_call();
        }
    }

    /// Waits for the call eventfd (10 s at most: a hang fails the run).
    fn wait_call(&self) {
        // SAFETY: the descriptor belongs to `self.call`, which outlives this borrow.
        let fd = unsafe { BorrowedFd::borrow_raw(self.call.as_raw_fd()) };
        let ready = poll(
            &mut [PollFd::new(fd, PollFlags::POLLIN)],
            PollTimeout::from(10_000u16),
        )
        .unwrap();
        assert_eq!(ready, 1, "the export signals the call eventfd");
        self.call.read().unwrap();
    }
}

fn request(c: &mut Criterion) {
    let mut group = c.benchmark_group("request");
    let export = Export::start();
    let mut f = export.frontend();
    let mut ring = Ring::start(&f);
    f.set_vring_enable(0, true).unwrap();
    for batch in [1u16, 16] {
        group.throughput(Throughput::Elements(u64::from(batch)));
        group.bench_function(BenchmarkId::from_parameter(batch), |b| {
            b.iter(|| ring.round(batch));
        });
    }
    group.finish();
    // Stops the ring after its in-flight requests (none) completed.
    f.get_vring_base(0).unwrap();
}

criterion_group!(benches, message, request);
criterion_main!(benches);
