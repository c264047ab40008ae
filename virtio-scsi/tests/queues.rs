//! virtio-scsi against a driver written here: split virtqueues in guest memory for the
//! control, event and a request queue, kicks through eventfds, commands served on an
//! iothread through scsi-hd and block-dma on a real io_uring file.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aio_context::{EventNotifier, IoThread};
use block_dma::Drive;
use common::{Hba, drive};
use qdev_bus::{Bus, HotplugHandler, PciAddress};
use ram_block::RamList;
use scsi::{HdControl, HdOptions, ScsiHd, Sense};
use virtio_bindings::virtio_scsi::*;
use virtio_core::{QueueSetup, VirtioDevice, VirtioInterrupt};
use virtio_queue::{Queue, QueueT};
use virtio_scsi::wire::{self, encode_lun};
use virtio_scsi::{ChangeNotifier, ScsiOptions, VirtioScsi};
use vm_memory::{Bytes, GuestAddress};

const QSIZE: u16 = 16;
/// Per queue: descriptor table, avail ring, used ring.
const RINGS: [u64; 3] = [0x1000, 0x4000, 0x7000];
const REQ: u64 = 0x10000;
const RESP: u64 = 0x11000;
const DATA: u64 = 0x20000;
const EVT: u64 = 0x30000;

struct Counter(AtomicU32);
impl VirtioInterrupt for Counter {
    fn notify_queue(&self, _index: u16) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[derive(Clone, Copy)]
struct D {
    addr: u64,
    len: u32,
    write: bool,
}

/// A driver-written descriptor.
fn rd(addr: u64, len: u32) -> D {
    D {
        addr,
        len,
        write: false,
    }
}

/// A device-writable descriptor.
fn wr(addr: u64, len: u32) -> D {
    D {
        addr,
        len,
        write: true,
    }
}

/// A tiny split-ring driver for one queue.
struct Ring {
    ram: RamList,
    kick: EventNotifier,
    base: u64,
    next_desc: u16,
    avail_idx: u16,
    used_seen: u16,
}

impl Ring {
    fn desc(&self) -> u64 {
        self.base
    }
    fn avail(&self) -> u64 {
        self.base + 0x1000
    }
    fn used(&self) -> u64 {
        self.base + 0x2000
    }
    fn w<T: vm_memory::ByteValued>(&self, addr: u64, v: T) {
        self.ram.memory().write_obj(v, GuestAddress(addr)).unwrap();
    }
    fn r<T: vm_memory::ByteValued>(&self, addr: u64) -> T {
        self.ram.memory().read_obj(GuestAddress(addr)).unwrap()
    }

    fn submit(&mut self, descs: &[D]) -> u16 {
        let head = self.make_available(descs);
        self.kick.set().unwrap();
        head
    }

    /// Makes a chain available without a kick (a driver under notification
    /// suppression, or one whose kick the device has not handled yet).
    fn make_available(&mut self, descs: &[D]) -> u16 {
        let head = self.next_desc;
        for (k, d) in descs.iter().enumerate() {
            let i = (head + k as u16) % QSIZE;
            let next = (k + 1 < descs.len()).then_some((i + 1) % QSIZE);
            let base = self.desc() + u64::from(i) * 16;
            self.w(base, d.addr);
            self.w(base + 8, d.len);
            let flags: u16 = u16::from(next.is_some()) | if d.write { 2 } else { 0 };
            self.w(base + 12, flags);
            self.w(base + 14, next.unwrap_or(0));
        }
        self.next_desc = (head + descs.len() as u16) % QSIZE;
        self.w(
            self.avail() + 4 + u64::from(self.avail_idx % QSIZE) * 2,
            head,
        );
        self.avail_idx = self.avail_idx.wrapping_add(1);
        std::sync::atomic::fence(Ordering::SeqCst);
        self.w(self.avail() + 2, self.avail_idx);
        head
    }

    /// The next used entry (id, len), if one comes within `wait`.
    fn used_within(&mut self, wait: Duration) -> Option<(u32, u32)> {
        let start = Instant::now();
        loop {
            let idx: u16 = self.r(self.used() + 2);
            if idx != self.used_seen {
                let e = self.used() + 4 + u64::from(self.used_seen % QSIZE) * 8;
                self.used_seen = self.used_seen.wrapping_add(1);
                return Some((self.r(e), self.r(e + 4)));
            }
            if start.elapsed() > wait {
                return None;
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    fn wait_used(&mut self) -> (u32, u32) {
        self.used_within(Duration::from_secs(10))
            .expect("no used entry")
    }
}

struct Fixture {
    rings: Vec<Ring>,
    bus: Arc<scsi::ScsiBus>,
    /// PARAM_CHANGE events of the controller.
    change: ChangeNotifier,
    /// disk0's capacity and unit attentions, and its drive.
    disk0: (HdControl, Drive),
    _pci: Bus<PciAddress>,
    _img: tempfile::NamedTempFile,
    images: Vec<tempfile::NamedTempFile>,
    /// The queues' iothread.
    iothread: Arc<IoThread>,
}

fn image() -> tempfile::NamedTempFile {
    common::image(4 << 20)
}

/// A controller with disk0 at target 0 LUN 0, its three queues started; `features`
/// acked.
fn fixture(features: u64) -> Option<Fixture> {
    let img = image();
    let drive = drive(&img, "disk0")?;
    let mut dev = VirtioScsi::new(
        "scsi0.0",
        ScsiOptions {
            queue_size: QSIZE,
            ..ScsiOptions::default()
        },
        |_| {},
    )
    .unwrap();
    dev.ack_features(features & dev.features());
    let ram = common::ram();
    let iothread = Arc::new(IoThread::spawn("vscsi-test").unwrap());
    let irqs = Arc::new(Counter(AtomicU32::new(0)));
    let mut rings = Vec::new();
    for (i, base) in RINGS.into_iter().enumerate() {
        let kick = EventNotifier::new(false).unwrap();
        let mut queue = Queue::new(QSIZE).unwrap();
        queue.set_size(QSIZE);
        queue.set_desc_table_address(Some(base as u32), Some(0));
        queue.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
        queue.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
        queue.set_ready(true);
        let setup = QueueSetup {
            queue,
            kick: kick.try_clone().unwrap(),
            memory: ram.clone(),
            interrupt: irqs.clone(),
            iothread: iothread.clone(),
        };
        dev.start_queue(i as u16, setup).unwrap();
        rings.push(Ring {
            ram: ram.clone(),
            kick,
            base,
            next_desc: 0,
            avail_idx: 0,
            used_seen: 0,
        });
    }
    let bus = dev.bus().clone();
    let change = dev.change_notifier();
    let pci: Bus<PciAddress> = Bus::root("pci.0");
    pci.plug(
        PciAddress::new(4, 0).unwrap(),
        Box::new(Hba(Mutex::new(dev), bus.clone())),
    )
    .unwrap();
    let hd = ScsiHd::new("disk0", drive.clone(), HdOptions::default()).unwrap();
    let disk0 = (hd.control(), drive);
    bus.plug(0, 0, Box::new(hd)).unwrap();
    Some(Fixture {
        rings,
        bus,
        change,
        disk0,
        _pci: pci,
        _img: img,
        images: Vec::new(),
        iothread,
    })
}

/// A parsed command response.
#[derive(Debug)]
struct Resp {
    used: u32,
    sense_len: u32,
    resid: u32,
    status: u8,
    response: u8,
    sense: Vec<u8>,
}

impl Fixture {
    fn ram(&self) -> &RamList {
        &self.rings[0].ram
    }

    /// Sends a command on the request queue: `out` data after the header, `inn` bytes
    /// of data-in after the response.
    fn cmd(&mut self, target: u16, lun: u16, cdb: &[u8], out: &[u8], inn: u32) -> (Resp, Vec<u8>) {
        let mut hdr = vec![0u8; wire::CMD_HDR + 32];
        hdr[..8].copy_from_slice(&encode_lun(target, lun));
        hdr[8..16].copy_from_slice(&7u64.to_le_bytes());
        hdr[wire::CMD_HDR..wire::CMD_HDR + cdb.len()].copy_from_slice(cdb);
        self.ram()
            .memory()
            .write_slice(&hdr, GuestAddress(REQ))
            .unwrap();
        self.ram()
            .memory()
            .write_slice(&[0xee; 108], GuestAddress(RESP))
            .unwrap();
        let mut descs = vec![rd(REQ, hdr.len() as u32)];
        if !out.is_empty() {
            self.ram()
                .memory()
                .write_slice(out, GuestAddress(DATA))
                .unwrap();
            descs.push(rd(DATA, out.len() as u32));
        }
        descs.push(wr(RESP, 108));
        if inn > 0 {
            descs.push(wr(DATA, inn));
        }
        let ring = &mut self.rings[2];
        let head = ring.submit(&descs);
        let (id, used) = ring.wait_used();
        assert_eq!(id, u32::from(head));
        let mut b = [0u8; 108];
        self.ram()
            .memory()
            .read_slice(&mut b, GuestAddress(RESP))
            .unwrap();
        let sense_len = u32::from_le_bytes(b[0..4].try_into().unwrap());
        let resp = Resp {
            used,
            sense_len,
            resid: u32::from_le_bytes(b[4..8].try_into().unwrap()),
            status: b[10],
            response: b[11],
            sense: b[12..12 + (sense_len as usize).min(96)].to_vec(),
        };
        let mut data = vec![0u8; inn as usize];
        self.ram()
            .memory()
            .read_slice(&mut data, GuestAddress(DATA))
            .unwrap();
        (resp, data)
    }

    /// The `response` byte of the command response at RESP.
    fn response_code(&self) -> u8 {
        self.ram()
            .memory()
            .read_obj(GuestAddress(RESP + 11))
            .unwrap()
    }

    /// Sends a control request; returns the response bytes.
    fn ctrl(&mut self, req: &[u8], resp_len: u32) -> (u32, Vec<u8>) {
        self.ram()
            .memory()
            .write_slice(req, GuestAddress(REQ))
            .unwrap();
        let ring = &mut self.rings[0];
        ring.submit(&[rd(REQ, req.len() as u32), wr(RESP, resp_len)]);
        let (_, used) = ring.wait_used();
        let mut b = vec![0u8; resp_len as usize];
        self.ram()
            .memory()
            .read_slice(&mut b, GuestAddress(RESP))
            .unwrap();
        (used, b)
    }

    fn tmf(&mut self, subtype: u32, target: u16, lun: u16) -> u8 {
        let mut req = vec![0u8; wire::TMF_REQ];
        req[0..4].copy_from_slice(&VIRTIO_SCSI_T_TMF.to_le_bytes());
        req[4..8].copy_from_slice(&subtype.to_le_bytes());
        req[8..16].copy_from_slice(&encode_lun(target, lun));
        let (used, b) = self.ctrl(&req, 1);
        assert_eq!(used, 1);
        b[0]
    }

    /// Hot-plugs a scsi-hd `id` at target 0 LUN `lun` on a fresh image (kept here).
    fn plug(&mut self, lun: u16, id: &str) {
        let img = image();
        let d = drive(&img, id).expect("io_uring was probed by the fixture");
        let hd = ScsiHd::new(id, d, HdOptions::default()).unwrap();
        self.bus.plug(0, lun, Box::new(hd)).unwrap();
        self.images.push(img);
    }

    /// Waits until the iothread has run everything scheduled on it before this call
    /// (bottom halves run in the order they were scheduled): an event posted before
    /// has been handled, with the buffers the ring had then.
    fn barrier(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        self.iothread.handle().schedule_oneshot(move || {
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(30))
            .expect("the iothread ran the barrier");
    }

    /// Waits for the event queue's next used entry; none may come within 50 ms.
    fn no_event(&mut self) {
        let got = self.rings[1].used_within(Duration::from_millis(50));
        assert!(got.is_none(), "no event yet");
    }

    /// Posts an event buffer at EVT + 16 * `slot`.
    fn post_event_buffer(&mut self, slot: u64) {
        self.rings[1].submit(&[wr(EVT + 16 * slot, 16)]);
    }

    fn event(&mut self, slot: u64) -> Option<(u32, [u8; 8], u32)> {
        self.rings[1].used_within(Duration::from_secs(5))?;
        let mut b = [0u8; 16];
        self.ram()
            .memory()
            .read_slice(&mut b, GuestAddress(EVT + 16 * slot))
            .unwrap();
        Some((
            u32::from_le_bytes(b[0..4].try_into().unwrap()),
            b[4..12].try_into().unwrap(),
            u32::from_le_bytes(b[12..16].try_into().unwrap()),
        ))
    }
}

const ALL: u64 = u64::MAX;

#[test]
fn commands_through_the_request_queue() {
    let Some(mut f) = fixture(ALL) else { return };
    // INQUIRY: no unit attention; response and data in place, resid counted.
    let (r, d) = f.cmd(0, 0, &[0x12, 0, 0, 0, 36, 0], &[], 64);
    assert_eq!(
        (r.response, r.status, r.resid, r.used),
        (0, 0, 28, 108 + 36)
    );
    assert_eq!(&d[8..16], b"QEMU    ");
    // The first TEST UNIT READY sees POWER ON, RESET in fixed sense.
    let (r, _) = f.cmd(0, 0, &[0; 6], &[], 0);
    assert_eq!((r.status, r.sense_len), (2, 18));
    assert_eq!(Sense::decode(&r.sense), Some(Sense::POWER_ON_RESET));
    // disk0 was plugged after the driver acked F_HOTPLUG: the bus's attention follows.
    let (r, _) = f.cmd(0, 0, &[0; 6], &[], 0);
    assert_eq!(Sense::decode(&r.sense), Some(Sense::REPORTED_LUNS_CHANGED));
    let (r, _) = f.cmd(0, 0, &[0; 6], &[], 0);
    assert_eq!((r.status, r.sense_len), (0, 0));
    // WRITE(10) then READ(10).
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    let (r, _) = f.cmd(0, 0, &[0x2a, 0, 0, 0, 0, 8, 0, 0, 8, 0], &data, 0);
    assert_eq!((r.response, r.status, r.resid), (0, 0, 0));
    let (r, d) = f.cmd(0, 0, &[0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0], &[], 4096);
    assert_eq!((r.status, r.used), (0, 108 + 4096));
    assert!(d == data, "the data read back");
    // A buffer too small for the transfer: OVERRUN.
    let (r, _) = f.cmd(0, 0, &[0x28, 0, 0, 0, 0, 8, 0, 0, 8, 0], &[], 512);
    assert_eq!(r.response, VIRTIO_SCSI_S_OVERRUN as u8);
    // Absent target: BAD_TARGET; absent LUN: the target answers.
    let (r, _) = f.cmd(3, 0, &[0; 6], &[], 0);
    assert_eq!(r.response, VIRTIO_SCSI_S_BAD_TARGET as u8);
    let (r, _) = f.cmd(0, 5, &[0; 6], &[], 0);
    assert_eq!(Sense::decode(&r.sense), Some(Sense::LUN_NOT_SUPPORTED));
    // A malformed LUN field: BAD_TARGET.
    let mut hdr = vec![0u8; wire::CMD_HDR + 32];
    hdr[0] = 2;
    f.ram()
        .memory()
        .write_slice(&hdr, GuestAddress(REQ))
        .unwrap();
    let ring = &mut f.rings[2];
    ring.submit(&[rd(REQ, hdr.len() as u32), wr(RESP, 108)]);
    ring.wait_used();
    assert_eq!(f.response_code(), 3);
    // Hostile chains: a response buffer too small, a header too short, a writable
    // descriptor before a readable one: returned unused; the queue goes on.
    let ring = &mut f.rings[2];
    ring.submit(&[rd(REQ, 51), wr(RESP, 20)]);
    assert_eq!(ring.wait_used().1, 0);
    ring.submit(&[rd(REQ, 10), wr(RESP, 108)]);
    assert_eq!(ring.wait_used().1, 0);
    ring.submit(&[wr(RESP, 108), rd(REQ, 51)]);
    assert_eq!(ring.wait_used().1, 0);
    // Data in both directions is not offered: FAILURE.
    let ring = &mut f.rings[2];
    ring.submit(&[rd(REQ, 51), rd(DATA, 512), wr(RESP, 108), wr(DATA, 512)]);
    ring.wait_used();
    assert_eq!(f.response_code(), VIRTIO_SCSI_S_FAILURE as u8);
    // Still serving.
    let (r, _) = f.cmd(0, 0, &[0; 6], &[], 0);
    assert_eq!((r.response, r.status), (0, 0));
}

#[test]
fn task_management_and_async_notification() {
    let Some(mut f) = fixture(ALL) else { return };
    f.cmd(0, 0, &[0; 6], &[], 0); // the power-on unit attention
    f.cmd(0, 0, &[0; 6], &[], 0); // REPORTED LUNS DATA HAS CHANGED
    assert_eq!(
        f.tmf(VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET, 0, 0),
        VIRTIO_SCSI_S_OK as u8
    );
    let (r, _) = f.cmd(0, 0, &[0; 6], &[], 0);
    assert_eq!(
        Sense::decode(&r.sense),
        Some(Sense::POWER_ON_RESET),
        "a LUN reset is a reset"
    );
    // (subtype, target, lun) -> response.
    let cases = [
        (VIRTIO_SCSI_T_TMF_ABORT_TASK, 0, 0, VIRTIO_SCSI_S_OK),
        (VIRTIO_SCSI_T_TMF_ABORT_TASK_SET, 0, 0, VIRTIO_SCSI_S_OK),
        (VIRTIO_SCSI_T_TMF_QUERY_TASK_SET, 0, 0, VIRTIO_SCSI_S_OK),
        (VIRTIO_SCSI_T_TMF_I_T_NEXUS_RESET, 0, 0, VIRTIO_SCSI_S_OK),
        (
            VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET,
            9,
            0,
            VIRTIO_SCSI_S_BAD_TARGET,
        ),
        (
            VIRTIO_SCSI_T_TMF_LOGICAL_UNIT_RESET,
            0,
            4,
            VIRTIO_SCSI_S_INCORRECT_LUN,
        ),
        (
            VIRTIO_SCSI_T_TMF_CLEAR_ACA,
            0,
            0,
            VIRTIO_SCSI_S_FUNCTION_REJECTED,
        ),
        (99, 0, 0, VIRTIO_SCSI_S_FUNCTION_REJECTED),
    ];
    for (subtype, target, lun, want) in cases {
        assert_eq!(
            f.tmf(subtype, target, lun),
            want as u8,
            "TMF {subtype} {target}/{lun}"
        );
    }
    // AN query: no events offered.
    let mut an = vec![0u8; wire::AN_REQ];
    an[0..4].copy_from_slice(&VIRTIO_SCSI_T_AN_QUERY.to_le_bytes());
    an[4..12].copy_from_slice(&encode_lun(0, 0));
    an[12..16].copy_from_slice(&0xffu32.to_le_bytes());
    let (used, b) = f.ctrl(&an, 5);
    assert_eq!((used, b), (5, vec![0, 0, 0, 0, 0]));
    // An unknown control type and a short TMF are returned unused.
    let (used, _) = f.ctrl(&[7, 0, 0, 0], 1);
    assert_eq!(used, 0);
    let (used, _) = f.ctrl(&[0, 0, 0, 0, 5, 0], 1);
    assert_eq!(used, 0);
}

#[test]
fn hotplug_events_and_events_missed() {
    let Some(mut f) = fixture(ALL) else { return };
    // Hotplug with no event buffer posted: the event is dropped (the barrier lets the
    // iothread handle it first: a buffer made available before that would be used)...
    f.plug(1, "disk1");
    f.barrier();
    f.no_event();
    // ...and the first buffer gets NO_EVENT | EVENTS_MISSED.
    f.post_event_buffer(0);
    let (event, _, _) = f.event(0).expect("an EVENTS_MISSED event");
    assert_eq!(event, VIRTIO_SCSI_T_NO_EVENT | VIRTIO_SCSI_T_EVENTS_MISSED);
    // With a buffer waiting, a hot-unplug request is reported as REMOVED at once (an
    // event that finds no buffer popped pops the ring first, so no wait is needed for
    // the iothread to take the buffer).
    // The LUN as REPORT LUNS and QEMU's events give it (no flat-space flag below 256).
    let reset = |lun: u16, reason| {
        let lun = [1, 0, 0, lun as u8, 0, 0, 0, 0];
        (VIRTIO_SCSI_T_TRANSPORT_RESET, lun, reason)
    };
    f.post_event_buffer(1);
    f.no_event();
    f.bus.bus().device_del("disk1").unwrap();
    let got = f.event(1).expect("a REMOVED event");
    assert_eq!(got, reset(1, VIRTIO_SCSI_EVT_RESET_REMOVED));
    // A plug is RESCAN.
    f.post_event_buffer(2);
    f.no_event();
    f.plug(2, "disk2");
    let got = f.event(2).expect("a RESCAN event");
    assert_eq!(got, reset(2, VIRTIO_SCSI_EVT_RESET_RESCAN));
    // The guest sees REPORTED LUNS DATA HAS CHANGED (after the power-on attention).
    let (r, _) = f.cmd(0, 0, &[0; 6], &[], 0);
    assert_eq!(Sense::decode(&r.sense), Some(Sense::POWER_ON_RESET));
    let (r, _) = f.cmd(0, 0, &[0; 6], &[], 0);
    assert_eq!(Sense::decode(&r.sense), Some(Sense::REPORTED_LUNS_CHANGED));
}

/// An event raised while the driver's buffers sit in the avail ring, not popped yet
/// (no kick handled), uses them, as QEMU's `virtio_scsi_push_event` pops the queue:
/// it is neither dropped nor turned into EVENTS_MISSED. Before, the event was dropped
/// and, with no kick, never delivered at all.
#[test]
fn an_event_pops_buffers_the_device_has_not_seen_yet() {
    let Some(mut f) = fixture(ALL) else { return };
    // disk0's RESCAN found no buffer: missed, which the first buffer reports.
    f.no_event();
    f.post_event_buffer(3);
    let (event, _, _) = f.event(3).expect("an EVENTS_MISSED event");
    assert_eq!(event, VIRTIO_SCSI_T_NO_EVENT | VIRTIO_SCSI_T_EVENTS_MISSED);
    // Two buffers the device has not been kicked for.
    f.rings[1].make_available(&[wr(EVT, 16)]);
    f.rings[1].make_available(&[wr(EVT + 16, 16)]);
    f.plug(1, "disk1");
    let lun = [1, 0, 0, 1, 0, 0, 0, 0];
    let got = f
        .event(0)
        .expect("the RESCAN event, in the buffer not yet popped");
    assert_eq!(
        got,
        (
            VIRTIO_SCSI_T_TRANSPORT_RESET,
            lun,
            VIRTIO_SCSI_EVT_RESET_RESCAN
        )
    );
    // The second buffer was popped too and waits for the next event.
    f.bus.bus().device_del("disk1").unwrap();
    let got = f.event(1).expect("the REMOVED event");
    assert_eq!(
        got,
        (
            VIRTIO_SCSI_T_TRANSPORT_RESET,
            lun,
            VIRTIO_SCSI_EVT_RESET_REMOVED
        )
    );
    // No buffer at all: the next event is missed, and the next buffer says so.
    f.plug(2, "disk2");
    f.no_event();
    f.post_event_buffer(2);
    let (event, _, _) = f.event(2).expect("an EVENTS_MISSED event");
    assert_eq!(event, VIRTIO_SCSI_T_NO_EVENT | VIRTIO_SCSI_T_EVENTS_MISSED);
}

#[test]
fn without_f_hotplug_no_events_are_sent() {
    let Some(mut f) = fixture(ALL & !(1 << VIRTIO_SCSI_F_HOTPLUG)) else {
        return;
    };
    f.post_event_buffer(0);
    f.plug(1, "disk1");
    assert!(f.rings[1].used_within(Duration::from_millis(200)).is_none());
}

/// What the owner of a scsi-hd does when its node is resized (`block_resize`): the image
/// changes, the disk takes the new capacity (unit attention 2A/09), the controller
/// tells the driver (PARAM_CHANGE with 2A/09, when F_CHANGE is acked).
fn resize_disk0(f: &Fixture, bytes: u64) -> bool {
    f.disk0.1.backend().resize(bytes).unwrap();
    f.disk0.0.set_capacity(bytes);
    f.change.param_change(0, 0, Sense::CAPACITY_CHANGED)
}

/// READ CAPACITY(10): (last LBA, block length).
fn read_capacity(f: &mut Fixture) -> (Resp, u32, u32) {
    let (r, data) = f.cmd(0, 0, &[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], &[], 8);
    let word = |i: usize| u32::from_be_bytes(data[i..i + 4].try_into().unwrap());
    let (last, len) = if data.len() >= 8 {
        (word(0), word(4))
    } else {
        (0, 0)
    };
    (r, last, len)
}

/// Takes the attentions the fixture left (power-on, and the hot-plug of disk0's
/// REPORTED LUNS DATA HAS CHANGED) and the event its plug dropped (EVENTS_MISSED, at
/// event slot 0).
fn settle(f: &mut Fixture) {
    for want in [Sense::POWER_ON_RESET, Sense::REPORTED_LUNS_CHANGED] {
        let (r, _) = f.cmd(0, 0, &[0; 6], &[], 0);
        assert_eq!(Sense::decode(&r.sense), Some(want));
    }
    f.post_event_buffer(0);
    let (event, _, _) = f.event(0).expect("the plug's EVENTS_MISSED");
    assert_eq!(event, VIRTIO_SCSI_T_NO_EVENT | VIRTIO_SCSI_T_EVENTS_MISSED);
}

#[test]
fn a_resize_sends_param_change_and_read_capacity_sees_it() {
    let Some(mut f) = fixture(ALL) else { return };
    settle(&mut f);
    let (_, last, len) = read_capacity(&mut f);
    assert_eq!((last, len), (((4 << 20) / 512) - 1, 512));

    f.post_event_buffer(1);
    f.no_event();
    assert!(resize_disk0(&f, 8 << 20));
    let got = f.event(1).expect("a PARAM_CHANGE event");
    assert_eq!(
        got,
        (
            VIRTIO_SCSI_T_PARAM_CHANGE,
            [1, 0, 0, 0, 0, 0, 0, 0],
            0x2a | 0x09 << 8
        ),
        "ASC in the low byte, ASCQ in the next (QEMU's virtio_scsi_change)"
    );
    // The next command gets CAPACITY DATA HAS CHANGED, then READ CAPACITY the size.
    let (r, _) = f.cmd(0, 0, &[0; 6], &[], 0);
    assert_eq!(Sense::decode(&r.sense), Some(Sense::CAPACITY_CHANGED));
    let (r, last, _) = read_capacity(&mut f);
    assert_eq!(r.status, 0);
    assert_eq!(last, ((8 << 20) / 512) - 1);

    // A shrink: a read beyond the new end is refused (LBA OUT OF RANGE).
    f.post_event_buffer(2);
    f.no_event();
    assert!(resize_disk0(&f, 2 << 20));
    assert_eq!(
        f.event(2).expect("a second PARAM_CHANGE").0,
        VIRTIO_SCSI_T_PARAM_CHANGE
    );
    let (r, _) = f.cmd(0, 0, &[0; 6], &[], 0);
    assert_eq!(Sense::decode(&r.sense), Some(Sense::CAPACITY_CHANGED));
    let lba = ((3u32 << 20) / 512).to_be_bytes();
    let read10 = [0x28, 0, lba[0], lba[1], lba[2], lba[3], 0, 0, 1, 0];
    let (r, _) = f.cmd(0, 0, &read10, &[], 512);
    assert_eq!(Sense::decode(&r.sense), Some(Sense::LBA_OUT_OF_RANGE));
}

#[test]
fn without_f_change_a_resize_sends_no_event_but_the_attention_stays() {
    let Some(mut f) = fixture(ALL & !(1 << VIRTIO_SCSI_F_CHANGE)) else {
        return;
    };
    settle(&mut f);
    f.post_event_buffer(1);
    assert!(!resize_disk0(&f, 8 << 20));
    assert!(f.rings[1].used_within(Duration::from_millis(200)).is_none());
    let (r, _) = f.cmd(0, 0, &[0; 6], &[], 0);
    assert_eq!(Sense::decode(&r.sense), Some(Sense::CAPACITY_CHANGED));
}
