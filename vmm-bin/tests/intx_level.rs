//! INTx levels under concurrency (issue 14, section 6): the level a line ends at must be
//! the one the final state calls for, however a device's iothread (raising) and a vCPU
//! (acknowledging, lowering) or two devices sharing a line interleave.
//!
//! Before the fix, virtio-pci decided the level under its ISR lock and drove the line
//! after releasing it, and the PIIX router did the same with its asserted set: a stale
//! lower could land after a newer raise, and the interrupt was lost for good (a level
//! interrupt that is low while the ISR says "pending" is never delivered again). Each
//! test races the real code paths against a mock irqchip that takes its time to set a
//! line (as the `KVM_IRQ_LINE` ioctl does) and records the final level.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::mock_virtio::MockPci;
use pc_platform::Piix3Isa;
use pci::{IrqLine, PciFunction};

/// Rounds per race: enough for the old code to lose a level many times over on a
/// loaded two-core machine, quick with the fix.
const ROUNDS: usize = 20_000;

/// Busy-waits `us` microseconds (no sleep: the point is to shift one thread against the
/// other by less than a scheduler tick).
fn spin(us: u64) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_micros(us) {
        std::hint::spin_loop();
    }
}

/// A two-thread barrier that spins, so both threads leave it within a fraction of a
/// microsecond (a futex wake-up takes tens of microseconds, longer than the windows
/// raced here).
#[derive(Default)]
struct SpinBarrier {
    arrived: std::sync::atomic::AtomicUsize,
    generation: std::sync::atomic::AtomicUsize,
}

impl SpinBarrier {
    fn wait(&self) {
        let generation = self.generation.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) == 1 {
            self.arrived.store(0, Ordering::Relaxed);
            self.generation.fetch_add(1, Ordering::Release);
            return;
        }
        let mut spins = 0u32;
        while self.generation.load(Ordering::Acquire) == generation {
            spins += 1;
            if spins % 1024 == 0 {
                std::thread::yield_now(); // the other thread may not be running
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// How long a mock irqchip takes to set a line: 0 to 4 microseconds or a yield, drawn at
/// random per call, so that of two calls in flight either may finish first.
fn set_line_delay() {
    thread_local! {
        static SEED: std::cell::Cell<u64> = std::cell::Cell::new(
            u64::from(Instant::now().elapsed().subsec_nanos()) | 1
                ^ (std::ptr::from_ref(&()) as u64).rotate_left(17),
        );
    }
    let r = SEED.with(|s| {
        // xorshift64
        let mut x = s.get().max(1);
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    });
    // Sometimes a yield instead: where the two threads share a CPU (a loaded machine)
    // only a reschedule inside the window lets the other one in.
    match r % 6 {
        5 => std::thread::yield_now(),
        us => spin(us),
    }
}

/// The second thread of a round starts this much later (µs), sweeping it across the
/// first one's critical sections over the rounds.
fn stagger(round: usize) -> u64 {
    (round % 8) as u64
}

/// A line whose setter takes a while before it records the level: the window between
/// a decision and its effect that an ioctl has.
#[derive(Default)]
struct SlowLine(AtomicBool);

impl SlowLine {
    fn set(&self, level: bool) {
        set_line_delay();
        self.0.store(level, Ordering::SeqCst);
    }
    fn level(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The iothread signals a used buffer (ISR bit, INTx up) while a vCPU reads the ISR
/// (clears it, INTx down). Whatever the order, afterwards the line is high exactly when
/// the ISR still has a bit set.
#[test]
fn virtio_pci_intx_matches_the_isr_after_racing_a_notify_and_an_isr_read() {
    let line = Arc::new(SlowLine::default());
    let l = line.clone();
    let dev = MockPci::new(Arc::new(move |level| l.set(level)));
    assert_eq!(dev.bring_up() & 4, 4, "DRIVER_OK");
    let irq = dev.state.interrupt();
    let start = Arc::new(SpinBarrier::default());
    let done = Arc::new(SpinBarrier::default());
    let notifier = {
        let (start, done) = (start.clone(), done.clone());
        std::thread::spawn(move || {
            for _ in 0..ROUNDS {
                start.wait();
                irq.notify_queue(0);
                done.wait();
            }
        })
    };
    let mut lost = 0;
    let mut spurious = 0;
    for round in 0..ROUNDS {
        start.wait();
        spin(stagger(round));
        dev.read_isr();
        done.wait();
        // Quiet now: the line must agree with the ISR. Read the line first: the ISR
        // read below clears both.
        let high = line.level();
        let isr = dev.read_isr();
        match (high, isr != 0) {
            (false, true) => lost += 1,
            (true, false) => spurious += 1,
            _ => {}
        }
        assert!(!line.level(), "an ISR read lowers the line");
    }
    notifier.join().unwrap();
    assert_eq!(
        (lost, spurious),
        (0, 0),
        "rounds where INTx disagreed with the ISR: (low with an interrupt pending, high with none)"
    );
}

/// Records the level of each GSI, slowly (see [`SlowLine`]).
#[derive(Default)]
struct SlowChip(Mutex<std::collections::HashMap<u32, bool>>);

impl IrqLine for SlowChip {
    fn set_level(&self, gsi: u32, level: bool) {
        set_line_delay();
        self.0.lock().unwrap().insert(gsi, level);
    }
}

impl SlowChip {
    fn level(&self, gsi: u32) -> bool {
        self.0.lock().unwrap().get(&gsi).copied().unwrap_or(false)
    }
}

/// Two devices share PIRQC (slots 3 and 7, INTA; routed to IRQ 11, IOAPIC pin 18):
/// one pulses its pin (up, down) while the other raises its own. The line must end
/// high: the second device's interrupt is pending.
#[test]
fn piix_shared_line_ends_high_when_a_lower_races_a_raise() {
    let chip = Arc::new(SlowChip::default());
    let (isa, router) = Piix3Isa::new(chip.clone());
    isa.config_write(0x60, &[10, 10, 11, 11]);
    let start = Arc::new(SpinBarrier::default());
    let done = Arc::new(SpinBarrier::default());
    let pulser = {
        let (start, done, router) = (start.clone(), done.clone(), router.clone());
        std::thread::spawn(move || {
            for _ in 0..ROUNDS {
                start.wait();
                router.set_level(3, 1, true);
                router.set_level(3, 1, false);
                done.wait();
            }
        })
    };
    let mut lost = 0;
    for round in 0..ROUNDS {
        start.wait();
        spin(stagger(round));
        router.set_level(7, 1, true);
        done.wait();
        if !chip.level(11) || !chip.level(18) {
            lost += 1;
        }
        router.set_level(7, 1, false);
        assert!(!chip.level(11) && !chip.level(18), "both pins are down");
    }
    pulser.join().unwrap();
    assert_eq!(lost, 0, "rounds that lost slot 7's interrupt");
}
