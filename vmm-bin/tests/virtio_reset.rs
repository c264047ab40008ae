//! A virtio device reset never waits where it must not (issue 14, section 6; design
//! invariant 7): the reset a guest writes (status 0) returns at once from the vCPU's
//! dispatch, the queues drain in their own iothread, and the status register reads
//! non-zero until they have ("the driver MUST wait for a read of device_status to
//! return 0"); interrupts of the old queues are dropped. A system reset waits for the
//! drains, outside any read section. A device dropped on the `call_rcu` thread
//! (`device_del`) schedules its drains instead of running them there.
//!
//! Before the fix the reset ran `stop_queue` (a blocking drain) inside the dispatch's
//! RCU read section and `Drop` did the same on the reclaim thread: in debug builds
//! `rcu::assert_may_block` reports both, and these tests fail.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::mock_virtio::{BAR4, MockPci};
use io_bus::IoBus;
use pci::PciHost;

const DEADLINE: Duration = Duration::from_secs(30);

#[test]
fn the_status_reads_nonzero_until_the_queues_have_drained() {
    let intx = Arc::new(AtomicBool::new(false));
    let i = intx.clone();
    let mut dev = MockPci::new(Arc::new(move |level| i.store(level, Ordering::SeqCst)));
    dev.bar = common::dispatched(dev.bar.clone(), BAR4);
    let running = dev.bring_up();
    assert_eq!(running & 4, 4, "DRIVER_OK");
    let old_queue = dev.state.interrupt();

    dev.set_status(0); // from the dispatch: must not wait for the drain
    assert_eq!(
        dev.status(),
        running,
        "reset requested, queues still draining: the old status"
    );
    dev.set_status(0); // a driver that writes 0 again: still draining
    assert_eq!(dev.status(), running);
    // A completion of the old life arrives while it drains: no interrupt.
    old_queue.notify_queue(0);
    assert!(
        !intx.load(Ordering::SeqCst),
        "an old queue's interrupt after reset"
    );
    assert_eq!(dev.read_isr(), 0);
    old_queue.device_error();
    assert_eq!(
        dev.status() & 0x40,
        0,
        "an old queue cannot set NEEDS_RESET"
    );

    assert_eq!(
        dev.state.complete_resets(),
        1,
        "one reset of a started device"
    );
    assert_eq!(dev.status(), 0, "drained: the reset is done");

    // The new life: its queue interrupts reach the guest again.
    assert_eq!(dev.bring_up() & 4, 4);
    dev.state.interrupt().notify_queue(0);
    assert!(intx.load(Ordering::SeqCst));
    assert_eq!(dev.read_isr(), 1);
}

#[test]
fn a_system_reset_waits_for_the_drain_outside_the_read_section() {
    let dev = MockPci::new(Arc::new(|_| {}));
    assert_eq!(dev.bring_up() & 4, 4);
    let state = dev.state.clone();
    let host = Arc::new(PciHost::new(
        Arc::new(IoBus::new("pio")),
        Arc::new(IoBus::new("mmio")),
        Arc::new(|_| {}),
        |_| {},
    ));
    host.plug(qdev_bus::PciAddress::new(3, 0).unwrap(), Box::new(dev.pci))
        .unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let h = host.clone();
    // In debug builds a wait inside the bus walk's read guard would panic here.
    let resetter = std::thread::spawn(move || {
        h.reset();
        done_tx.send(()).unwrap();
    });
    let start = Instant::now();
    while state.resets.lock().unwrap().is_empty() {
        assert!(start.elapsed() < DEADLINE, "the reset was not requested");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(
        done_rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "the system reset returned while the device was still draining"
    );
    assert_eq!(state.complete_resets(), 1);
    done_rx
        .recv_timeout(DEADLINE)
        .expect("the system reset finishes once the drain has");
    resetter.join().unwrap();
}
