//! REPORT LUNS and command dispatch racing hot-plug and unplug of LUNs: the bus-children
//! seed (QEMU "device-core: use RCU for list of children of a bus") in its original
//! context.
//!
//! Reader threads, each with its own event loop and guest RAM, send REPORT LUNS to the
//! fixed LUN 0 and to absent LUNs (the target answers), and INQUIRY / TEST UNIT READY to
//! random LUNs, while the main thread plugs and unplugs LUNs 1..=8 as fast as it can.
//! What would show a bug:
//! - use after free or after unrealize: every hot-plugged LUN carries a canary checked
//!   on every command and poisoned in `Drop`, and a `realized` flag cleared in
//!   `unrealize` (a command dispatched to a reclaimed LUN panics the reader);
//! - a torn list: every REPORT LUNS answer must have a LUN LIST LENGTH equal to 8 times
//!   its entries, LUN 0 first, the others strictly ascending and within 1..=8;
//! - a lost or early DEVICE_DELETED: events arrive only after their device's `Drop` and,
//!   after `rcu::barrier()`, equal the number of unplugs.
//!
//! `SCSI_STRESS_SECS` sets the duration (default 1.5 s).

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aio_context::AioContext;
use block_dma::DmaMemory;
use common::*;
use qdev_bus::{Device, HotplugHandler};
use scsi::{
    DataBuffer, DataDirection, HdOptions, InFlightCounter, ScsiBus, ScsiDevice, ScsiDone,
    ScsiInFlight, ScsiRequest, ScsiResponse, status,
};

const ALIVE: u64 = 0x5C51_A11E;
const POISON: u64 = 0xDEAD_DEAD;
const LUNS: u16 = 8;

#[derive(Default)]
struct Stats {
    dropped: Mutex<HashSet<String>>,
    events: AtomicU64,
    early_events: AtomicU64,
    commands: AtomicU64,
    reports: AtomicU64,
}

/// A LUN that panics when used after `unrealize` or `Drop`.
struct CanaryLun {
    id: String,
    canary: AtomicU64,
    realized: AtomicBool,
    in_flight: InFlightCounter,
    stats: Arc<Stats>,
}

impl CanaryLun {
    fn check(&self) {
        assert_eq!(
            self.canary.load(Ordering::SeqCst),
            ALIVE,
            "{} used after drop",
            self.id
        );
        assert!(
            self.realized.load(Ordering::SeqCst),
            "{} used after unrealize",
            self.id
        );
    }
}

impl Device for CanaryLun {
    fn id(&self) -> &str {
        &self.id
    }
    fn realize(&self) -> qdev_bus::Result<()> {
        self.realized.store(true, Ordering::SeqCst);
        Ok(())
    }
    fn unrealize(&self) {
        self.check();
        self.realized.store(false, Ordering::SeqCst);
    }
}

impl Drop for CanaryLun {
    fn drop(&mut self) {
        self.canary.store(POISON, Ordering::SeqCst);
        self.stats.dropped.lock().unwrap().insert(self.id.clone());
    }
}

impl ScsiDevice for CanaryLun {
    fn execute(&self, _: &AioContext, _: ScsiRequest, done: ScsiDone) -> Option<ScsiInFlight> {
        self.check();
        self.stats.commands.fetch_add(1, Ordering::Relaxed);
        // Take some time inside the read section, so unplugs overlap it.
        std::hint::black_box((0..200).fold(0u64, |a, b| a.wrapping_mul(31).wrapping_add(b)));
        self.check();
        done.complete(ScsiResponse::good(0));
        None
    }
    fn take_unit_attention(&self) -> Option<scsi::Sense> {
        self.check();
        None
    }
    fn in_flight(&self) -> &InFlightCounter {
        &self.in_flight
    }
}

fn canary(id: String, stats: &Arc<Stats>) -> Box<CanaryLun> {
    Box::new(CanaryLun {
        id,
        canary: AtomicU64::new(ALIVE),
        realized: AtomicBool::new(false),
        in_flight: InFlightCounter::default(),
        stats: stats.clone(),
    })
}

/// A root bus whose DEVICE_DELETED sink counts events and early ones.
fn counted_bus(stats: &Arc<Stats>) -> Arc<ScsiBus> {
    let st = stats.clone();
    Arc::new(ScsiBus::root("scsi0.0", move |e| {
        if !st.dropped.lock().unwrap().contains(&e.id) {
            st.early_events.fetch_add(1, Ordering::SeqCst);
        }
        st.events.fetch_add(1, Ordering::SeqCst);
    }))
}

/// Checks one REPORT LUNS answer; returns the LUNs.
fn check_report(data: &[u8]) -> Vec<u16> {
    assert!(data.len() >= 16, "short REPORT LUNS data: {data:02x?}");
    let len = u32::from_be_bytes([data[0], data[1], data[2], data[3]]) as usize;
    assert_eq!(len % 8, 0, "LUN LIST LENGTH {len}");
    assert_eq!(
        data.len(),
        8 + len,
        "LUN LIST LENGTH {len} vs {} bytes",
        data.len()
    );
    let luns: Vec<u16> = data[8..]
        .chunks_exact(8)
        .map(|e| {
            assert_eq!(&e[2..], &[0; 6], "entry {e:02x?}");
            assert_eq!(e[0], 0, "entry {e:02x?}");
            u16::from(e[1])
        })
        .collect();
    assert_eq!(luns[0], 0, "LUN 0 first: {luns:?}");
    for w in luns[1..].windows(2) {
        assert!(w[0] < w[1], "not strictly ascending: {luns:?}");
    }
    assert!(
        luns[1..].iter().all(|&l| (1..=LUNS).contains(&l)),
        "{luns:?}"
    );
    luns
}

fn run(
    bus: &ScsiBus,
    ctx: &AioContext,
    mem: &DmaMemory,
    lun: u16,
    cdb: &[u8],
) -> (ScsiResponse, Vec<u8>) {
    let req = ScsiRequest {
        cdb: cdb.into(),
        data: DataBuffer {
            mem: mem.clone(),
            sg: [(BUF, 4096)].into_iter().collect(),
            dir: DataDirection::FromDevice,
        },
    };
    let out = std::rc::Rc::new(std::cell::RefCell::new(None));
    let o = out.clone();
    bus.execute(
        ctx,
        0,
        lun,
        req,
        scsi::ScsiDone::new(move |r| *o.borrow_mut() = Some(r)),
    );
    let resp: ScsiResponse = out.take().expect("emulated commands complete at once");
    let mut data = vec![0u8; resp.transferred as usize];
    vm_memory::Bytes::read_slice(
        &*mem.ram().memory(),
        &mut data,
        vm_memory::GuestAddress(BUF),
    )
    .unwrap();
    (resp, data)
}

#[test]
fn report_luns_races_hotplug_and_unplug() {
    // Probed on a thread of its own: an AioContext makes its thread a QSBR reader,
    // and this thread calls rcu::barrier() at the end.
    let uring = std::thread::spawn(|| {
        let ctx = AioContext::new().unwrap();
        have_uring(&ctx, "report_luns_races_hotplug")
    });
    if !uring.join().unwrap() {
        return;
    }
    let secs: f64 = std::env::var("SCSI_STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.5);
    let stats = Arc::new(Stats::default());
    let bus = counted_bus(&stats);
    let img = image(1 << 20);
    bus.plug(0, 0, disk("disk0", drive(&img), HdOptions::default()))
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let mut readers = Vec::new();
    for seed in 0..3u64 {
        let (bus, stop, stats) = (bus.clone(), stop.clone(), stats.clone());
        readers.push(std::thread::spawn(move || {
            let ctx = AioContext::new().unwrap();
            let mem = DmaMemory::new(ram());
            let mut rng = fastrand::Rng::with_seed(seed);
            let report = [0xa0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0];
            let mut seen = HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                // REPORT LUNS through a present and an absent LUN.
                let lun = if rng.bool() { 0 } else { rng.u16(1..=LUNS) };
                let (r, d) = run(&bus, &ctx, &mem, lun, &report);
                if r.status == status::GOOD {
                    seen.extend(check_report(&d));
                    stats.reports.fetch_add(1, Ordering::Relaxed);
                }
                // Direct inventory reads.
                let d = bus.report_luns(0);
                check_report(&d);
                // Commands to LUNs that come and go.
                let lun = rng.u16(1..=LUNS);
                let cdb: &[u8] = if rng.bool() {
                    &[0x12, 0, 0, 0, 36, 0]
                } else {
                    &[0; 6]
                };
                let (r, _) = run(&bus, &ctx, &mem, lun, cdb);
                assert_eq!(r.host, scsi::HostStatus::Ok);
            }
            seen.len()
        }));
    }

    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let mut rng = fastrand::Rng::with_seed(99);
    let mut plugged: Vec<Option<String>> = vec![None; usize::from(LUNS) + 1];
    let (mut plugs, mut unplugs, mut generation) = (0u64, 0u64, 0u64);
    while Instant::now() < deadline {
        let lun = rng.u16(1..=LUNS);
        match plugged[usize::from(lun)].take() {
            None => {
                generation += 1;
                let id = format!("lun{lun}g{generation}");
                let dev = canary(id.clone(), &stats);
                bus.plug(0, lun, dev).unwrap();
                plugged[usize::from(lun)] = Some(id);
                plugs += 1;
            }
            Some(id) => {
                bus.bus().unplug(&id).unwrap();
                unplugs += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let seen: usize = readers.into_iter().map(|r| r.join().unwrap()).sum();
    for id in plugged.into_iter().flatten() {
        bus.bus().unplug(&id).unwrap();
        unplugs += 1;
    }
    rcu::barrier();
    assert!(plugs > 10, "only {plugs} plugs");
    assert!(seen > 3, "REPORT LUNS never saw hot-plugged LUNs");
    assert_eq!(
        stats.events.load(Ordering::SeqCst),
        unplugs,
        "one DEVICE_DELETED per unplug"
    );
    assert_eq!(
        stats.early_events.load(Ordering::SeqCst),
        0,
        "DEVICE_DELETED before drop"
    );
    eprintln!(
        "{plugs} plugs, {unplugs} unplugs, {} REPORT LUNS, {} commands to hot-plugged LUNs",
        stats.reports.load(Ordering::Relaxed),
        stats.commands.load(Ordering::Relaxed)
    );
}

/// The same race on the REPORT LUNS inventory and the dispatch lookup, without I/O or
/// event loops, so that miri can check it for use after free and data races:
/// `MIRIFLAGS=-Zmiri-ignore-leaks cargo +nightly miri test -p scsi-bus --test
/// report_luns_hotplug inventory` (the leak is rcu's call_rcu thread).
#[test]
fn report_luns_inventory_races_unplug() {
    let ops = if cfg!(miri) { 40 } else { 5000 };
    let stats = Arc::new(Stats::default());
    let bus = counted_bus(&stats);
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|_| {
            let (bus, stop) = (bus.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    check_report(&bus.report_luns(0));
                    for lun in 1..=LUNS {
                        let guard = rcu::read();
                        if let Some(d) = bus.bus().get(&guard, qdev_bus::ScsiAddress::new(0, lun)) {
                            d.take_unit_attention();
                        }
                    }
                }
            })
        })
        .collect();
    let mut rng = fastrand::Rng::with_seed(7);
    let mut plugged: Vec<Option<String>> = vec![None; usize::from(LUNS) + 1];
    let mut unplugs = 0u64;
    for n in 0..ops {
        let lun = rng.u16(1..=LUNS);
        match plugged[usize::from(lun)].take() {
            None => {
                let id = format!("lun{lun}n{n}");
                bus.plug(0, lun, canary(id.clone(), &stats)).unwrap();
                plugged[usize::from(lun)] = Some(id);
            }
            Some(id) => {
                bus.bus().unplug(&id).unwrap();
                unplugs += 1;
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().unwrap();
    }
    for id in plugged.into_iter().flatten() {
        bus.bus().unplug(&id).unwrap();
        unplugs += 1;
    }
    rcu::barrier();
    assert_eq!(stats.events.load(Ordering::SeqCst), unplugs);
    assert_eq!(stats.early_events.load(Ordering::SeqCst), 0);
}
