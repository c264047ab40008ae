//! The virtio-blk device model against a driver written here: a split virtqueue in
//! guest memory, requests good and bad, kicks through the eventfd, completions on an
//! iothread through block-dma on a real io_uring file.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aio_context::{EventNotifier, IoThread};
use block_dma::{Drive, ErrorPolicy, FileBackend, FileOptions};
use ram_block::{Backing, RamBlock, RamList};
use virtio_blk::config::*;
use virtio_blk::{BlkOptions, VirtioBlk};
use virtio_core::{QueueSetup, VirtioDevice, VirtioInterrupt};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

const QSIZE: u16 = 16;
const DESC: u64 = 0x1000;
const AVAIL: u64 = 0x2000;
const USED: u64 = 0x3000;
const INDIRECT: u64 = 0x4000;
const HDR: u64 = 0x8000;
const STATUS: u64 = 0x9000;
const DATA: u64 = 0x10_0000;

struct Counter(AtomicU32);
impl VirtioInterrupt for Counter {
    fn notify_queue(&self, _index: u16) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A tiny split-ring driver.
struct Driver {
    ram: RamList,
    kick: EventNotifier,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

#[derive(Clone, Copy)]
struct D {
    addr: u64,
    len: u32,
    write: bool,
}

impl Driver {
    fn w<T: vm_memory::ByteValued>(&self, addr: u64, v: T) {
        self.ram.memory().write_obj(v, GuestAddress(addr)).unwrap();
    }
    fn r<T: vm_memory::ByteValued>(&self, addr: u64) -> T {
        self.ram.memory().read_obj(GuestAddress(addr)).unwrap()
    }

    fn write_desc(&self, table: u64, i: u16, d: D, next: Option<u16>, indirect: bool) {
        let base = table + u64::from(i) * 16;
        self.w(base, d.addr);
        self.w(base + 8, d.len);
        let flags: u16 =
            u16::from(next.is_some()) | if d.write { 2 } else { 0 } | if indirect { 4 } else { 0 };
        self.w(base + 12, flags);
        self.w(base + 14, next.unwrap_or(0));
    }

    /// Makes a chain available and kicks; returns its head.
    fn submit(&mut self, descs: &[D]) -> u16 {
        let head = self.next_desc;
        for (k, d) in descs.iter().enumerate() {
            let i = (head + k as u16) % QSIZE;
            let next = (k + 1 < descs.len()).then_some((i + 1) % QSIZE);
            self.write_desc(DESC, i, *d, next, false);
        }
        self.next_desc = (head + descs.len() as u16) % QSIZE;
        self.publish(head);
        head
    }

    /// The same through an indirect table.
    fn submit_indirect(&mut self, descs: &[D]) -> u16 {
        for (k, d) in descs.iter().enumerate() {
            let next = (k + 1 < descs.len()).then_some(k as u16 + 1);
            self.write_desc(INDIRECT, k as u16, *d, next, false);
        }
        let head = self.next_desc;
        let table = D {
            addr: INDIRECT,
            len: 16 * descs.len() as u32,
            write: false,
        };
        self.write_desc(DESC, head, table, None, true);
        self.next_desc = (head + 1) % QSIZE;
        self.publish(head);
        head
    }

    fn publish(&mut self, head: u16) {
        self.w(AVAIL + 4 + u64::from(self.avail_idx % QSIZE) * 2, head);
        self.avail_idx = self.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(Ordering::SeqCst);
        self.w(AVAIL + 2, self.avail_idx);
        self.kick.set().unwrap();
    }

    /// Waits for the next used entry: (id, len).
    fn wait_used(&mut self) -> (u32, u32) {
        let start = Instant::now();
        loop {
            let idx: u16 = self.r(USED + 2);
            if idx != self.used_seen {
                let e = USED + 4 + u64::from(self.used_seen % QSIZE) * 8;
                self.used_seen = self.used_seen.wrapping_add(1);
                return (self.r(e), self.r(e + 4));
            }
            assert!(start.elapsed() < Duration::from_secs(10), "no used entry");
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    fn header(&self, kind: u32, sector: u64) -> D {
        self.w(HDR, kind);
        self.w(HDR + 4, 0u32);
        self.w(HDR + 8, sector);
        D {
            addr: HDR,
            len: 16,
            write: false,
        }
    }

    fn status(&self) -> D {
        self.w(STATUS, 0xffu8);
        D {
            addr: STATUS,
            len: 1,
            write: true,
        }
    }

    fn status_byte(&self) -> u8 {
        self.r(STATUS)
    }
}

struct Fixture {
    dev: VirtioBlk,
    driver: Driver,
    irqs: Arc<Counter>,
    img: tempfile::NamedTempFile,
    iothread: Arc<IoThread>,
}

fn fixture(size: usize, read_only: bool, features: u64) -> Option<Fixture> {
    let img = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    img.as_file().set_len(size as u64).unwrap();
    let backend = match FileBackend::open(&FileOptions::new(img.path()).read_only(read_only)) {
        Ok(b) => b,
        Err(block_dma::OpenError::Unsupported(what)) => {
            eprintln!("SKIPPED: io_uring lacks {what}");
            return None;
        }
        Err(e) => panic!("{e}"),
    };
    let drive = Drive::new(
        "vblk0",
        "file0",
        Arc::new(backend),
        ErrorPolicy::default(),
        None,
    );
    Some(fixture_from(drive, img, features))
}

fn fixture_from(drive: Drive, img: tempfile::NamedTempFile, features: u64) -> Fixture {
    let opts = BlkOptions {
        serial: "vmm-core-serial-0001".into(),
        queue_size: QSIZE,
        ..BlkOptions::default()
    };
    let mut dev = VirtioBlk::new(drive, opts).unwrap();
    dev.ack_features(features);
    let ram = RamList::new();
    ram.add(
        RamBlock::new(
            "ram",
            GuestAddress(0),
            4 << 20,
            Backing::Memfd { huge_pages: false },
        )
        .unwrap(),
    )
    .unwrap();
    let kick = EventNotifier::new(false).unwrap();
    let mut queue = Queue::new(QSIZE).unwrap();
    queue.set_size(QSIZE);
    queue.set_desc_table_address(Some(DESC as u32), Some(0));
    queue.set_avail_ring_address(Some(AVAIL as u32), Some(0));
    queue.set_used_ring_address(Some(USED as u32), Some(0));
    queue.set_ready(true);
    let irqs = Arc::new(Counter(AtomicU32::new(0)));
    let iothread = Arc::new(IoThread::spawn("vblk-test").unwrap());
    let setup = QueueSetup {
        queue,
        kick: kick.try_clone().unwrap(),
        memory: ram.clone(),
        interrupt: irqs.clone(),
        iothread: iothread.clone(),
    };
    dev.start_queue(0, setup).unwrap();
    let driver = Driver {
        ram,
        kick,
        next_desc: 0,
        avail_idx: 0,
        used_seen: 0,
    };
    Fixture {
        dev,
        driver,
        irqs,
        img,
        iothread,
    }
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

const ALL: u64 = (1 << 32) | (1 << 28) | (1 << 29);

#[test]
fn write_read_flush_get_id_and_config() {
    let Some(mut f) = fixture(1 << 20, false, ALL) else {
        return;
    };
    let mut cfg = [0u8; 8];
    f.dev.read_config(0, &mut cfg);
    assert_eq!(u64::from_le_bytes(cfg), 2048, "capacity in sectors");
    assert_ne!(f.dev.features() & (1 << F_FLUSH), 0);
    assert_eq!(f.dev.features() & (1 << F_RO), 0);
    let d = &mut f.driver;
    let data = pattern(1, 65536);
    d.ram
        .memory()
        .write_slice(&data, GuestAddress(DATA))
        .unwrap();
    // A write of 64 KiB in two data descriptors at sector 8.
    let h = d.header(T_OUT, 8);
    let descs = [
        h,
        D {
            addr: DATA,
            len: 4096,
            write: false,
        },
        D {
            addr: DATA + 4096,
            len: 61440,
            write: false,
        },
        d.status(),
    ];
    let head = d.submit(&descs);
    assert_eq!(d.wait_used(), (u32::from(head), 1));
    assert_eq!(d.status_byte(), S_OK);
    // Flush.
    let h = d.header(T_FLUSH, 0);
    let s = d.status();
    d.submit(&[h, s]);
    d.wait_used();
    assert_eq!(d.status_byte(), S_OK);
    assert_eq!(
        std::fs::read(f.img.path()).unwrap()[4096..4096 + 65536],
        data[..]
    );
    // Read it back through an indirect table.
    let h = d.header(T_IN, 8);
    let s = d.status();
    d.submit_indirect(&[
        h,
        D {
            addr: DATA + 0x10_0000,
            len: 65536,
            write: true,
        },
        s,
    ]);
    let (_, len) = d.wait_used();
    assert_eq!(len, 65537);
    assert_eq!(d.status_byte(), S_OK);
    let mut back = vec![0; 65536];
    d.ram
        .memory()
        .read_slice(&mut back, GuestAddress(DATA + 0x10_0000))
        .unwrap();
    assert_eq!(back, data);
    // GET_ID.
    let h = d.header(T_GET_ID, 0);
    let s = d.status();
    d.submit(&[
        h,
        D {
            addr: DATA,
            len: 20,
            write: true,
        },
        s,
    ]);
    d.wait_used();
    assert_eq!(d.status_byte(), S_OK);
    let mut id = [0u8; 20];
    d.ram
        .memory()
        .read_slice(&mut id, GuestAddress(DATA))
        .unwrap();
    assert_eq!(&id, b"vmm-core-serial-0001");
    assert!(f.irqs.0.load(Ordering::SeqCst) > 0);
    let _ = &f.iothread;
}

#[test]
fn bad_requests_get_ioerr_or_unsupp_and_the_queue_keeps_going() {
    let Some(mut f) = fixture(1 << 20, false, ALL) else {
        return;
    };
    let d = &mut f.driver;
    let data = D {
        addr: DATA,
        len: 4096,
        write: true,
    };
    let short = D {
        addr: DATA,
        len: 100,
        write: true,
    };
    let far = D {
        addr: 1 << 40,
        len: 4096,
        write: true,
    };
    // (what, header kind and sector or None for a short header, data, expected status)
    type Case = (&'static str, Option<(u32, u64)>, Vec<D>, u8);
    let cases: Vec<Case> = vec![
        ("past the end", Some((T_IN, 2047)), vec![data], S_IOERR),
        (
            "sector overflow",
            Some((T_IN, u64::MAX / 256)),
            vec![data],
            S_IOERR,
        ),
        (
            "length not a sector multiple",
            Some((T_IN, 0)),
            vec![short],
            S_IOERR,
        ),
        ("unknown type", Some((99, 0)), vec![], S_UNSUPP),
        ("short header", None, vec![], S_IOERR),
        ("buffer outside RAM", Some((T_IN, 0)), vec![far], S_IOERR),
        (
            "discard with UNMAP",
            Some((T_DISCARD, 0)),
            vec![D {
                addr: DATA,
                len: 16,
                write: false,
            }],
            S_UNSUPP,
        ),
        (
            "two discard segments",
            Some((T_DISCARD, 0)),
            vec![D {
                addr: DATA,
                len: 32,
                write: false,
            }],
            S_UNSUPP,
        ),
    ];
    for (what, header, body, want) in cases {
        // One segment: sector 0, 8 sectors, flags = 1 (UNMAP: not allowed for discard).
        d.w(DATA, 0u64);
        d.w(DATA + 8, 8u32);
        d.w(DATA + 12, 1u32);
        let h = match header {
            Some((kind, sector)) => d.header(kind, sector),
            None => D {
                addr: HDR,
                len: 8,
                write: false,
            },
        };
        let mut descs = vec![h];
        descs.extend(body);
        descs.push(d.status());
        d.submit(&descs);
        d.wait_used();
        assert_eq!(d.status_byte(), want, "{what}");
    }
    // No writable byte at all: returned with length 0, and the queue is not stuck.
    let h = d.header(T_IN, 0);
    let head = d.submit(&[h]);
    assert_eq!(d.wait_used(), (u32::from(head), 0));
    // A descriptor chain that loops on itself: virtio-queue stops at the queue size.
    let h = d.header(T_FLUSH, 0);
    d.write_desc(DESC, 10, h, Some(11), false);
    d.write_desc(
        DESC,
        11,
        D {
            addr: STATUS,
            len: 1,
            write: true,
        },
        Some(10),
        false,
    );
    d.next_desc = 12;
    d.publish(10);
    d.wait_used();
    // Still serving.
    let h = d.header(T_FLUSH, 0);
    let s = d.status();
    d.submit(&[h, s]);
    d.wait_used();
    assert_eq!(d.status_byte(), S_OK);
}

#[test]
fn read_only_disk_refuses_writes() {
    let Some(mut f) = fixture(1 << 20, true, ALL) else {
        return;
    };
    assert_ne!(f.dev.features() & (1 << F_RO), 0);
    let d = &mut f.driver;
    let h = d.header(T_OUT, 0);
    let s = d.status();
    d.submit(&[
        h,
        D {
            addr: DATA,
            len: 512,
            write: false,
        },
        s,
    ]);
    d.wait_used();
    assert_eq!(d.status_byte(), S_IOERR);
    d.w(DATA, 0u64);
    d.w(DATA + 8, 1u32);
    d.w(DATA + 12, 0u32);
    let h = d.header(T_WRITE_ZEROES, 0);
    let s = d.status();
    d.submit(&[
        h,
        D {
            addr: DATA,
            len: 16,
            write: false,
        },
        s,
    ]);
    d.wait_used();
    assert_eq!(d.status_byte(), S_IOERR);
    let h = d.header(T_IN, 0);
    let s = d.status();
    d.submit(&[
        h,
        D {
            addr: DATA,
            len: 512,
            write: true,
        },
        s,
    ]);
    d.wait_used();
    assert_eq!(d.status_byte(), S_OK);
}

#[test]
fn write_zeroes_and_discard() {
    let Some(mut f) = fixture(1 << 20, false, ALL) else {
        return;
    };
    std::fs::write(f.img.path(), vec![0xaa; 1 << 20]).unwrap();
    let d = &mut f.driver;
    for (kind, sector) in [(T_WRITE_ZEROES, 0u64), (T_DISCARD, 16)] {
        d.w(DATA, sector);
        d.w(DATA + 8, 8u32);
        d.w(DATA + 12, 0u32);
        let h = d.header(kind, 0);
        let s = d.status();
        d.submit(&[
            h,
            D {
                addr: DATA,
                len: 16,
                write: false,
            },
            s,
        ]);
        d.wait_used();
        assert_eq!(d.status_byte(), S_OK);
    }
    let file = std::fs::read(f.img.path()).unwrap();
    assert!(file[..4096].iter().all(|&b| b == 0));
    assert!(file[8192..12288].iter().all(|&b| b == 0));
    assert!(file[4096..8192].iter().all(|&b| b == 0xaa));
}

#[test]
fn stop_returns_the_ring_position_and_a_restart_continues() {
    let Some(mut f) = fixture(1 << 20, false, ALL) else {
        return;
    };
    for _ in 0..3 {
        let d = &mut f.driver;
        let h = d.header(T_FLUSH, 0);
        let s = d.status();
        d.submit(&[h, s]);
        d.wait_used();
    }
    let queue = f.dev.stop_queue(0).expect("running");
    assert_eq!(queue.next_avail(), 3);
    assert_eq!(queue.next_used(), 3);
    // Requests made while stopped wait; a restart from the returned state serves them.
    let d = &mut f.driver;
    let h = d.header(T_FLUSH, 0);
    let s = d.status();
    d.submit(&[h, s]);
    std::thread::sleep(Duration::from_millis(50));
    let idx: u16 = d.r(USED + 2);
    assert_eq!(idx, 3, "not served while stopped");
    let setup = QueueSetup {
        queue,
        kick: d.kick.try_clone().unwrap(),
        memory: d.ram.clone(),
        interrupt: f.irqs.clone(),
        iothread: f.iothread.clone(),
    };
    f.dev.start_queue(0, setup).unwrap();
    f.driver.wait_used();
    assert_eq!(f.driver.status_byte(), S_OK);
    let _ = Mutex::new(0);
}

/// Review finding: a device reset (stop_queue) while a request is parked by
/// werror=stop, or parks during the drain, must not wait for a resume that never
/// comes: parked requests are cancelled and complete with IOERR.
#[test]
fn stop_cancels_requests_parked_by_werror_stop() {
    use block_dma::{Errno, ErrorAction, FaultInjector, FaultRule, OpKind};
    let img = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    img.as_file().set_len(1 << 20).unwrap();
    let Ok(backend) = FileBackend::open(&FileOptions::new(img.path())) else {
        eprintln!("SKIPPED: cannot open an image with io_uring");
        return;
    };
    let faulty = Arc::new(FaultInjector::new(backend));
    faulty.inject(FaultRule::new(Some(OpKind::Write), Errno::EIO));
    let bhs = bottom_half::BhList::new(|| {});
    let vm = runstate::RunStateMachine::new(&bhs.scheduler());
    vm.start().unwrap();
    let policy = ErrorPolicy {
        rerror: ErrorAction::Report,
        werror: ErrorAction::Stop,
    };
    let drive = Drive::new("vblk0", "file0", faulty.clone(), policy, Some(vm.clone()));
    let mut f = fixture_from(drive, img, ALL);
    let d = &mut f.driver;
    let h = d.header(T_OUT, 0);
    let s = d.status();
    d.submit(&[
        h,
        D {
            addr: DATA,
            len: 512,
            write: false,
        },
        s,
    ]);
    let start = Instant::now();
    while faulty.injected() == 0 {
        assert!(start.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(20));
    let stopped = Instant::now();
    let queue = f.dev.stop_queue(0);
    assert!(queue.is_some());
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "stop_queue drained"
    );
    assert_eq!(f.driver.wait_used().1, 1);
    assert_eq!(
        f.driver.status_byte(),
        S_IOERR,
        "the cancelled request reports an error"
    );
    drop(bhs);
}

/// Review finding: a kick that finds nothing (spurious, or racing the driver's next
/// publish) must not be taken for a corrupt ring. A second thread kicks constantly
/// while the driver publishes requests one by one; every request completes.
#[test]
fn spurious_kicks_racing_publishes_do_not_break_the_queue() {
    let Some(mut f) = fixture(1 << 20, false, ALL) else {
        return;
    };
    let kicker = f.driver.kick.try_clone().unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let s2 = stop.clone();
    let spam = std::thread::spawn(move || {
        while !s2.load(Ordering::Relaxed) {
            let _ = kicker.set();
            std::thread::yield_now();
        }
    });
    let n = if cfg!(debug_assertions) { 500 } else { 3000 };
    for _ in 0..n {
        let d = &mut f.driver;
        let h = d.header(T_FLUSH, 0);
        let s = d.status();
        d.submit(&[h, s]);
        d.wait_used();
        assert_eq!(d.status_byte(), S_OK);
    }
    stop.store(true, Ordering::Relaxed);
    spam.join().unwrap();
}
