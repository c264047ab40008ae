//! Hot-unplug of a LUN with commands in flight: the unplug request leaves the LUN
//! linked (Pending), new commands are refused, the commands in flight complete (GOOD)
//! or are aborted (ABORTED), the drain hook runs only after the last response was
//! delivered, and DEVICE_DELETED comes only after the unplug finished and a grace
//! period passed.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use aio_context::AioContext;
use block_dma::{DmaMemory, SgList};
use common::Hba;
use qdev_bus::{Bus, HotplugHandler, PciAddress, UnplugStatus};
use scsi::{
    DataBuffer, DataDirection, HdOptions, HostStatus, ScsiHd, ScsiRequest, ScsiResponse, Sense,
};
use virtio_core::VirtioDevice;
use virtio_scsi::{ScsiOptions, VirtioScsi};

#[test]
fn unplug_waits_for_in_flight_commands_then_device_deleted() {
    let ctx = AioContext::new().unwrap();
    if !ctx.supports_io_uring_ops() {
        eprintln!("SKIPPED unplug_waits_for_in_flight_commands: no io_uring operations");
        return;
    }
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let (drained_tx, drained_rx) = mpsc::channel();
    let completed = Arc::new(AtomicUsize::new(0));
    let (l, c) = (log.clone(), completed.clone());
    let mut dev = VirtioScsi::new("scsi0.0", ScsiOptions::default(), move |id| {
        l.lock().unwrap().push(format!(
            "drained {id} after {} completions",
            c.load(Ordering::SeqCst)
        ));
        drained_tx.send(id).unwrap();
    })
    .unwrap();
    dev.ack_features(dev.features());
    let bus = dev.bus().clone();
    let l = log.clone();
    let pci: Bus<PciAddress> = Bus::root_with_events("pci.0", move |e| {
        l.lock().unwrap().push(format!("DEVICE_DELETED {}", e.id))
    });
    pci.plug(
        PciAddress::new(4, 0).unwrap(),
        Box::new(Hba(Mutex::new(dev), bus.clone())),
    )
    .unwrap();

    let img = common::image(64 << 20);
    let drive = common::drive(&img, "disk1").expect("io_uring was probed above");
    bus.plug(
        0,
        1,
        Box::new(ScsiHd::new("disk1", drive, HdOptions::default()).unwrap()),
    )
    .unwrap();

    let ram = common::ram();
    let run = |cdb: Vec<u8>, dir, len: u64| {
        let out: Rc<RefCell<Option<ScsiResponse>>> = Rc::default();
        let o = out.clone();
        let c = completed.clone();
        let req = ScsiRequest {
            cdb: cdb.as_slice().into(),
            data: DataBuffer {
                mem: DmaMemory::new(ram.clone()),
                sg: if len == 0 {
                    SgList::new()
                } else {
                    [(0, len)].into_iter().collect()
                },
                dir,
            },
        };
        let flight = bus.execute(
            &ctx,
            0,
            1,
            req,
            scsi::ScsiDone::new(move |r| {
                c.fetch_add(1, Ordering::SeqCst);
                *o.borrow_mut() = Some(r);
            }),
        );
        (out, flight)
    };
    // Clear the power-on unit attention.
    let (out, _) = run(vec![0; 6], DataDirection::None, 0);
    assert_eq!(
        out.borrow().as_ref().unwrap().sense(),
        Some(Sense::POWER_ON_RESET)
    );
    // The hotplug raised REPORTED LUNS DATA HAS CHANGED on the bus (F_HOTPLUG acked).
    let (out, _) = run(vec![0; 6], DataDirection::None, 0);
    assert_eq!(
        out.borrow().as_ref().unwrap().sense(),
        Some(Sense::REPORTED_LUNS_CHANGED)
    );

    // 32 writes of 1 MiB: submitted, not completed until this thread polls.
    const N: usize = 32;
    let mut cmds = Vec::new();
    for i in 0..N {
        let mut cdb = vec![0x2a, 0, 0, 0, 0, 0, 0, 0x08, 0, 0];
        cdb[2..6].copy_from_slice(&((i as u32) * 2048).to_be_bytes());
        cmds.push(run(cdb, DataDirection::ToDevice, 1 << 20));
    }
    let base = completed.load(Ordering::SeqCst);
    // Abort every fourth one, as an ABORT TASK would.
    for (_, f) in cmds.iter().step_by(4) {
        f.as_ref().expect("in flight").cancel(HostStatus::Aborted);
    }

    // device_del disk1: pending while commands are in flight.
    assert_eq!(pci.device_del("disk1").unwrap(), UnplugStatus::Pending);
    assert!(
        drained_rx.try_recv().is_err(),
        "drained with commands in flight"
    );
    // New commands are refused.
    let (out, _) = run(vec![0; 6], DataDirection::None, 0);
    assert_eq!(out.borrow().as_ref().unwrap().host, HostStatus::BadTarget);

    let deadline = Instant::now() + Duration::from_secs(30);
    let id = loop {
        if let Ok(id) = drained_rx.try_recv() {
            break id;
        }
        assert!(Instant::now() < deadline, "the LUN never drained");
        ctx.poll(true);
    };
    assert_eq!(id, "disk1");
    for (i, (out, _)) in cmds.iter().enumerate() {
        let r = out.borrow();
        let r = r
            .as_ref()
            .expect("every command completed before the drain");
        match r.host {
            HostStatus::Ok => assert_eq!(r.status, scsi::status::GOOD),
            HostStatus::Aborted => assert_eq!(i % 4, 0, "only cancelled ones abort"),
            other => panic!("command {i}: {other:?}"),
        }
    }
    assert!(
        !log.lock()
            .unwrap()
            .iter()
            .any(|e| e.starts_with("DEVICE_DELETED"))
    );
    // The main loop finishes the unplug; DEVICE_DELETED follows the grace period.
    bus.bus().unplug("disk1").unwrap();
    loop {
        if log
            .lock()
            .unwrap()
            .iter()
            .any(|e| e.starts_with("DEVICE_DELETED"))
        {
            break;
        }
        assert!(Instant::now() < deadline, "no DEVICE_DELETED");
        ctx.poll(false);
        std::thread::sleep(Duration::from_millis(1));
    }
    let log = log.lock().unwrap().clone();
    assert_eq!(
        log,
        // The writes, plus the TEST UNIT READY refused while the unplug was pending.
        [
            format!("drained disk1 after {} completions", base + N + 1),
            "DEVICE_DELETED disk1".into()
        ]
    );
}
