//! Seed 004 replay: QEMU commit "device-core: use RCU for list of children of a bus".
//!
//! The interleaving: vCPU/iothreads dispatch SCSI requests to LUNs, answer REPORT LUNS,
//! reset and search the bus, while the main thread hot-plugs and unplugs LUNs. Before
//! the fix the child list was a plain `QTAILQ`, freed at once on unplug: a reader
//! walking it could step onto a freed `BusChild` or call into a freed device.
//!
//! Symptoms this test would see, and how:
//! - use after free or after unrealize: every LUN carries a canary checked on each
//!   access and poisoned in `Drop`, and a `realized` flag cleared in `unrealize`;
//! - a lost or early DEVICE_DELETED: the event sink counts events and checks that the
//!   device was already dropped; after `rcu::barrier()` events must equal unplugs;
//! - an inconsistent REPORT LUNS: count and contents come from one `addresses()`
//!   version and must agree, sorted and without duplicates.
//!
//! `QDEV_BUS_REPLAY_SECS` sets the duration (default 1.5 s); under miri it runs a few
//! dozen hotplug operations:
//! `MIRIFLAGS=-Zmiri-ignore-leaks cargo +nightly miri test -p qdev-bus --test seed_004_hotplug_race`
//! (the leak is `rcu`'s call_rcu worker thread, which outlives the test).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use qdev_bus::{Bus, Device, DeviceDeleted, HotplugHandler, ScsiAddress, UnplugStatus};

/// LUNs 0..LUNS of target 0.
const LUNS: u16 = 8;
const ALIVE: u64 = 0x5C51_A11E;
const POISON: u64 = 0xDEAD_DEAD;

#[derive(Default)]
struct Stats {
    /// Ids whose device has been dropped.
    dropped: Mutex<HashSet<String>>,
    events: AtomicU64,
    /// DEVICE_DELETED events that arrived before their device's `Drop`.
    early_events: AtomicU64,
    dispatches: AtomicU64,
    reports: AtomicU64,
}

/// A SCSI disk that panics if used after `unrealize` or `Drop`.
struct Lun {
    id: String,
    canary: AtomicU64,
    realized: AtomicBool,
    stats: Arc<Stats>,
}

impl Lun {
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

impl Device for Lun {
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
    fn reset(&self) {
        self.check();
    }
}

impl Drop for Lun {
    fn drop(&mut self) {
        self.canary.store(POISON, Ordering::SeqCst);
        self.stats.dropped.lock().unwrap().insert(self.id.clone());
    }
}

fn duration() -> Duration {
    let secs = std::env::var("QDEV_BUS_REPLAY_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.5);
    Duration::from_secs_f64(secs)
}

/// A small xorshift generator: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The main thread's part: plug and unplug LUNs until time (or, under miri, the
/// operation budget) runs out. Returns the number of unplugs.
fn hotplug(bus: &Bus<ScsiAddress>, stats: &Arc<Stats>) -> u64 {
    let deadline = Instant::now() + duration();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut plugged: Vec<(String, u16)> = Vec::new();
    let (mut unplugs, mut ops, mut next_id) = (0, 0u64, 0u64);
    while if cfg!(miri) {
        ops < 40
    } else {
        Instant::now() < deadline
    } {
        ops += 1;
        let plug = plugged.is_empty() || (plugged.len() < usize::from(LUNS) && rng.below(2) == 0);
        if plug {
            let free: Vec<u16> = (0..LUNS)
                .filter(|l| plugged.iter().all(|p| p.1 != *l))
                .collect();
            let lun = free[rng.below(free.len() as u64) as usize];
            let id = format!("lun{next_id}");
            next_id += 1;
            let device = Box::new(Lun {
                id: id.clone(),
                canary: AtomicU64::new(ALIVE),
                realized: AtomicBool::new(false),
                stats: stats.clone(),
            });
            bus.plug(ScsiAddress::new(0, lun), device).unwrap();
            plugged.push((id, lun));
        } else {
            let (id, _) = plugged.swap_remove(rng.below(plugged.len() as u64) as usize);
            assert_eq!(bus.unplug_request(&id), Ok(UnplugStatus::Unplugged));
            unplugs += 1;
        }
    }
    unplugs
}

/// A virtio-scsi request queue: look the LUN up and run a command on it.
fn dispatch(bus: &Bus<ScsiAddress>, stats: &Stats, lun: u16) {
    let guard = rcu::read();
    if let Some(device) = bus.get(&guard, ScsiAddress::new(0, lun)) {
        device.reset(); // a command: checks the canary and `realized`
        stats.dispatches.fetch_add(1, Ordering::Relaxed);
    }
}

/// REPORT LUNS (SPC-4 6.33): a header holding the list length, then 8 bytes per LUN;
/// sized by one count and filled by one pass over the same version.
fn report_luns(bus: &Bus<ScsiAddress>, stats: &Stats) -> Vec<u8> {
    let guard = rcu::read();
    let luns = bus.addresses(&guard);
    let n = luns.len();
    let mut buf = vec![0u8; 8 + 8 * n];
    buf[..4].copy_from_slice(&((8 * n) as u32).to_be_bytes());
    let mut i = 8;
    for address in luns {
        buf[i..i + 2].copy_from_slice(&address.lun.to_be_bytes());
        i += 8;
    }
    assert_eq!(i, 8 + 8 * n, "count and contents disagree");
    assert!(
        luns.windows(2).all(|w| w[0] < w[1]),
        "not one version: {luns:?}"
    );
    stats.reports.fetch_add(1, Ordering::Relaxed);
    buf
}

#[test]
fn readers_race_hotplug_without_use_after_free_and_deleted_events_follow_reclaim() {
    let stats = Arc::new(Stats::default());
    let sink = {
        let stats = stats.clone();
        move |e: DeviceDeleted| {
            if !stats.dropped.lock().unwrap().contains(&e.id) {
                stats.early_events.fetch_add(1, Ordering::SeqCst);
            }
            stats.events.fetch_add(1, Ordering::SeqCst);
        }
    };
    let bus: Bus<ScsiAddress> = Bus::root_with_events("scsi0.0", sink);
    let done = AtomicBool::new(false);

    let unplugs = thread::scope(|s| {
        for seed in 0..2u16 {
            let (bus, stats, done) = (&bus, &*stats, &done);
            s.spawn(move || {
                let mut lun = seed;
                while !done.load(Ordering::Relaxed) {
                    dispatch(bus, stats, lun % LUNS);
                    lun = lun.wrapping_add(3);
                }
            });
        }
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                report_luns(&bus, &stats);
            }
        });
        s.spawn(|| {
            let mut n = 0u64;
            while !done.load(Ordering::Relaxed) {
                let guard = rcu::read();
                bus.reset(&guard); // qbus_reset_all: every device, under one guard
                if let Some(d) = bus.find_by_id(&guard, &format!("lun{}", n % 64)) {
                    d.reset();
                }
                n += 1;
            }
        });
        let unplugs = hotplug(&bus, &stats);
        done.store(true, Ordering::Relaxed);
        unplugs
    });

    rcu::barrier();
    let events = stats.events.load(Ordering::SeqCst);
    let dropped = stats.dropped.lock().unwrap().len() as u64;
    eprintln!(
        "{unplugs} unplugs, {events} DEVICE_DELETED, {} dispatches, {} REPORT LUNS",
        stats.dispatches.load(Ordering::Relaxed),
        stats.reports.load(Ordering::Relaxed)
    );
    assert!(unplugs > 0);
    assert_eq!(events, unplugs, "one DEVICE_DELETED per unplug");
    assert_eq!(
        dropped, unplugs,
        "each unplugged LUN dropped once, the others alive"
    );
    assert_eq!(
        stats.early_events.load(Ordering::SeqCst),
        0,
        "an event came before its Drop"
    );
}

/// Why `addresses()` exists: RCU keeps what a reader reaches alive, it does not stop
/// writers, so QEMU's REPORT LUNS (count in one walk, fill in a second, `assert(i ==
/// n + 8)`) can see two different lists under one guard. One inventory version cannot.
#[test]
fn two_walks_under_one_guard_can_disagree_but_one_inventory_cannot() {
    let bus: Bus<ScsiAddress> = Bus::root("scsi0.0");
    let stats = Arc::new(Stats::default());
    let lun = |id: &str| {
        Box::new(Lun {
            id: id.into(),
            canary: AtomicU64::new(ALIVE),
            realized: AtomicBool::new(false),
            stats: stats.clone(),
        })
    };
    bus.plug(ScsiAddress::new(0, 0), lun("a")).unwrap();
    let guard = rcu::read();
    let counted = bus.iter(&guard).count();
    let inventory = bus.addresses(&guard);
    bus.plug(ScsiAddress::new(0, 1), lun("b")).unwrap(); // hotplug between the walks
    let filled = bus.iter(&guard).count();
    assert_eq!((counted, filled), (1, 2));
    assert_eq!(inventory.len(), 1);
    assert_eq!(inventory, [ScsiAddress::new(0, 0)]);
}
