//! ide-cd at the register level: the PACKET protocol (interrupt reason, byte count
//! limit, DRQ blocks), each MMC command, sense data, and medium changes with the
//! unit attentions and events a guest expects; a locked tray refuses eject.

mod common;

use aio_context::AioContext;
use block_dma::DmaMemory;
use common::*;
use ide::IdeDevice;

const DRQ: u8 = 0x08;
const ERR: u8 = 0x01;
const CH: usize = 1;

fn rig(test: &str, sectors: usize) -> Option<(Rig, Vec<u8>, tempfile::NamedTempFile)> {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, test) {
        return None;
    }
    let data = pattern(21, sectors * 2048);
    let img = image(&data);
    let disc = file_drive(&img, "cd", true);
    let r = Rig::new(
        ctx,
        DmaMemory::new(ram()),
        [
            [None, None],
            [Some(IdeDevice::cdrom("ide1-cd0", Some(disc))), None],
        ],
    );
    // Consume the power-on medium change the way firmware does: until TEST UNIT
    // READY succeeds.
    for _ in 0..3 {
        if packet(&r, &[0x00], 0).0 & ERR == 0 {
            break;
        }
    }
    Some((r, data, img))
}

/// Sends `cdb` with byte count limit `bcl`, moves the data-in phase by PIO and
/// returns the final status, the error register and the data.
fn packet(r: &Rig, cdb: &[u8], bcl: u16) -> (u8, u8, Vec<u8>) {
    let mut pkt = [0u8; 12];
    pkt[..cdb.len()].copy_from_slice(cdb);
    r.outb(CH, 6, 0xa0);
    r.outb(CH, 1, 0);
    r.outb(CH, 4, bcl as u8);
    r.outb(CH, 5, (bcl >> 8) as u8);
    r.outb(CH, 7, 0xa0);
    assert_eq!(r.alt(CH) & DRQ, DRQ, "packet requested");
    assert_eq!(r.inb(CH, 2) & 3, 1, "interrupt reason: command out");
    r.write_data(CH, &pkt);
    let mut data = Vec::new();
    loop {
        let st = r.settle(CH);
        assert!(r.irqs.level(15), "IRQ 15 for every phase");
        r.inb(CH, 7);
        if st & DRQ == 0 {
            assert_eq!(r.inb(CH, 2) & 3, 3, "interrupt reason: status");
            return (st, r.inb(CH, 1), data);
        }
        assert_eq!(r.inb(CH, 2) & 3, 2, "interrupt reason: data in");
        let n = usize::from(r.inb(CH, 4)) | usize::from(r.inb(CH, 5)) << 8;
        assert!(n > 0 && n <= usize::from(bcl.max(2)) || bcl == 0);
        data.extend(r.read_data(CH, n));
    }
}

fn sense(r: &Rig) -> (u8, u8) {
    let (st, _, s) = packet(r, &[0x03, 0, 0, 0, 18], 0xfffe);
    assert_eq!(st & ERR, 0);
    assert_eq!(s[0], 0xf0, "current error, fixed format, VALID (as QEMU)");
    (s[2], s[12])
}

fn check(res: (u8, u8, Vec<u8>), key: u8) {
    assert_eq!(res.0 & ERR, ERR, "CHECK CONDITION");
    assert_eq!(res.1 >> 4, key, "sense key in the error register");
}

#[test]
fn signature_and_identify_packet_device() {
    let Some((r, _, _)) = rig("cd_identify", 16) else {
        return;
    };
    r.ctrl(CH, 0x04);
    r.ctrl(CH, 0x00);
    r.outb(CH, 6, 0xa0);
    assert_eq!(
        (r.inb(CH, 4), r.inb(CH, 5)),
        (0x14, 0xeb),
        "packet signature"
    );
    assert_eq!(r.alt(CH), 0, "DRDY clear after reset on a packet device");
    r.outb(CH, 7, 0xec);
    assert_eq!(r.settle(CH) & ERR, ERR, "IDENTIFY DEVICE aborts");
    assert_eq!((r.inb(CH, 4), r.inb(CH, 5)), (0x14, 0xeb));
    r.outb(CH, 7, 0xa1);
    assert_eq!(r.settle(CH) & DRQ, DRQ);
    let b = r.read_data(CH, 512);
    assert_eq!(word(&b, 0), 0x85c0);
    assert_eq!(&b[54..66], b"EQUMD DVR-MO");
    r.outb(CH, 7, 0x20);
    assert_eq!(r.settle(CH) & ERR, ERR, "READ SECTORS aborts");
    // DEVICE RESET is accepted even while busy and raises no interrupt.
    r.outb(CH, 7, 0xa0);
    r.inb(CH, 7);
    r.outb(CH, 7, 0x08);
    assert_eq!(r.alt(CH), 0);
    assert_eq!(r.inb(CH, 1), 0x01);
}

/// SeaBIOS's ata_detect: select a device, read the device register back, and check
/// that the sector count and number registers hold what was written.
/// SeaBIOS's presence check: the device select sticks and the count registers hold
/// what was written.
fn detects(r: &Rig, dh: u8) -> bool {
    r.outb(CH, 6, dh);
    let got = r.inb(CH, 6);
    r.outb(CH, 2, 0x55);
    r.outb(CH, 3, 0xaa);
    got == dh && r.inb(CH, 2) == 0x55 && r.inb(CH, 3) == 0xaa
}

#[test]
fn firmware_detection_sees_device_1_and_not_an_absent_one() {
    let ctx = AioContext::new().unwrap();
    let r = Rig::new(
        ctx,
        DmaMemory::new(ram()),
        [[None, None], [None, Some(IdeDevice::cdrom("cd", None))]],
    );
    let detect = |dh: u8| detects(&r, dh);
    assert!(detect(0xb0), "device 1 present");
    assert!(!detect(0xa0), "device 0 absent");
}

#[test]
fn inquiry_capacity_and_reads() {
    let Some((r, data, _)) = rig("cd_reads", 64) else {
        return;
    };
    let (st, _, inq) = packet(&r, &[0x12, 0, 0, 0, 36], 0xfffe);
    assert_eq!(st & ERR, 0);
    assert_eq!((inq[0], inq[1]), (0x05, 0x80), "CD/DVD, removable");
    assert_eq!(&inq[8..16], b"QEMU    ");
    assert_eq!(&inq[16..32], b"QEMU DVD-ROM    ");
    let (_, _, cap) = packet(&r, &[0x25], 0xfffe);
    assert_eq!(cap, [0, 0, 0, 63, 0, 0, 8, 0]);
    // READ(10) of 3 sectors at 5 with a byte count limit of 2048: 3 DRQ blocks.
    let (st, _, got) = packet(&r, &[0x28, 0, 0, 0, 0, 5, 0, 0, 3], 2048);
    assert_eq!(st & ERR, 0);
    assert_eq!(got, data[5 * 2048..8 * 2048]);
    // READ(12) of 40 sectors with the largest limit: crosses PIO chunks.
    let (_, _, got) = packet(&r, &[0xa8, 0, 0, 0, 0, 10, 0, 0, 0, 40], 0xfffe);
    assert_eq!(got, data[10 * 2048..50 * 2048]);
    // Out of range, zero length.
    check(packet(&r, &[0x28, 0, 0, 0, 0, 63, 0, 0, 2], 2048), 5);
    assert_eq!(sense(&r), (5, 0x21));
    assert_eq!(packet(&r, &[0x28, 0, 0, 0, 0, 1], 2048).2, Vec::<u8>::new());
}

#[test]
fn read_10_by_dma() {
    let Some((r, data, _)) = rig("cd_dma", 16) else {
        return;
    };
    r.prd(0x1000, &[(0x20000, 0x1000, true)]);
    r.bm_prd(CH, 0x1000);
    r.outb(CH, 6, 0xa0);
    r.outb(CH, 1, 0x01); // DMA
    r.outb(CH, 7, 0xa0);
    r.write_data(CH, &[0x28, 0, 0, 0, 0, 2, 0, 0, 2, 0, 0, 0]);
    r.bm_out(8, 0x09);
    let st = r.settle(CH);
    assert_eq!(st & (ERR | DRQ), 0);
    assert_eq!(r.inb(CH, 2) & 3, 3);
    assert_eq!(r.bm_in(10) & 0x05, 0x04, "interrupt, inactive");
    assert_eq!(r.peek(0x20000, 4096), &data[2 * 2048..4 * 2048]);
}

#[test]
fn mode_sense_configuration_toc_disc_info() {
    let Some((r, _, _)) = rig("cd_info", 16) else {
        return;
    };
    let (_, _, m) = packet(&r, &[0x5a, 0, 0x2a, 0, 0, 0, 0, 0, 64], 0xfffe);
    assert_eq!(u16::from_be_bytes([m[0], m[1]]) as usize, m.len() - 2);
    assert_eq!((m[8], m[9]), (0x2a, 20));
    // Byte for byte what QEMU 10's ide-cd returns (scripts/qemu-compare-cd.S).
    assert_eq!(
        m[8..30],
        [
            0x2a, 0x14, 0x3b, 0x00, 0x71, 0x60, 0x29, 0x00, 0x02, 0xc0, 0x00, 0x02, 0x02, 0x00,
            0x02, 0xc0, 0, 0, 0, 0, 0, 0
        ]
    );
    let (_, _, all) = packet(&r, &[0x5a, 0, 0x3f, 0, 0, 0, 0, 0, 255], 0xfffe);
    assert_eq!((all[8], all[16]), (0x01, 0x2a));
    check(packet(&r, &[0x5a, 0, 0x05, 0, 0, 0, 0, 0, 64], 0xfffe), 5);
    check(packet(&r, &[0x5a, 0, 0xea, 0, 0, 0, 0, 0, 64], 0xfffe), 5);
    assert_eq!(sense(&r), (5, 0x39), "saving parameters not supported");
    let (_, _, c) = packet(&r, &[0x46, 0, 0, 0, 0, 0, 0, 0, 255], 0xfffe);
    assert_eq!(
        u16::from_be_bytes([c[6], c[7]]),
        0x0008,
        "current profile CD-ROM"
    );
    // Allocation length caps the reply.
    let (_, _, c) = packet(&r, &[0x46, 0, 0, 0, 0, 0, 0, 0, 8], 0xfffe);
    assert_eq!(c.len(), 8);
    let (_, _, toc) = packet(&r, &[0x43, 0, 0, 0, 0, 0, 0, 0, 255], 0xfffe);
    assert_eq!(toc.len(), 20);
    assert_eq!(
        &toc[16..20],
        &16u32.to_be_bytes(),
        "lead-out at the disc's end"
    );
    let (_, _, toc) = packet(&r, &[0x43, 2, 0, 0, 0, 0, 0, 0, 255], 0xfffe);
    assert_eq!(&toc[8..12], &[0, 0, 2, 0], "MSF of track 1");
    let (_, _, di) = packet(&r, &[0x51, 0, 0, 0, 0, 0, 0, 0, 34], 0xfffe);
    assert_eq!((di.len(), di[2], di[7]), (34, 0x0e, 0x20));
    check(packet(&r, &[0xff], 0xfffe), 5);
    assert_eq!(sense(&r), (5, 0x20), "invalid opcode");
}

#[test]
fn empty_drive_is_not_ready() {
    let ctx = AioContext::new().unwrap();
    let r = Rig::new(
        ctx,
        DmaMemory::new(ram()),
        [
            [None, None],
            [Some(IdeDevice::cdrom("ide1-cd0", None)), None],
        ],
    );
    check(packet(&r, &[0x00], 0), 2);
    assert_eq!(sense(&r), (2, 0x3a), "medium not present");
    check(packet(&r, &[0x25], 0xfffe), 2);
    let (_, _, ev) = packet(&r, &[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8], 0xfffe);
    assert_eq!(
        (ev[2], ev[4], ev[5]),
        (0x04, 0, 0),
        "media class, no event, no medium"
    );
}

#[test]
fn medium_change_reports_not_ready_then_unit_attention_and_an_event() {
    let Some((r, data, _)) = rig("cd_change", 16) else {
        return;
    };
    let new = pattern(22, 32 * 2048);
    let img2 = image(&new);
    r.ide
        .change_medium("ide1-cd0", file_drive(&img2, "cd2", true), false)
        .unwrap();
    assert!(r.irqs.level(15), "a medium change interrupts");
    r.inb(CH, 7);
    // GET EVENT STATUS NOTIFICATION and INQUIRY are allowed through.
    let (_, _, ev) = packet(&r, &[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8], 0xfffe);
    assert_eq!((ev[4], ev[5]), (2, 2), "new media, present");
    assert_eq!(
        (ev[0], ev[1], ev[2], ev[3]),
        (0, 4, 4, 0x10),
        "header as QEMU's"
    );
    let (_, _, ev) = packet(&r, &[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8], 0xfffe);
    assert_eq!(ev[4], 0, "reported once");
    check(packet(&r, &[0x00], 0), 2);
    assert_eq!(sense(&r), (2, 0x3a));
    check(packet(&r, &[0x00], 0), 6);
    assert_eq!(sense(&r), (6, 0x28), "medium may have changed");
    assert_eq!(packet(&r, &[0x00], 0).0 & ERR, 0);
    let (_, _, cap) = packet(&r, &[0x25], 0xfffe);
    assert_eq!(cap[3], 31, "the new disc's capacity");
    let (_, _, got) = packet(&r, &[0x28, 0, 0, 0, 0, 1, 0, 0, 1], 0xfffe);
    assert_eq!(got, new[2048..4096]);
    assert_ne!(got, data[2048..4096]);
    // A polled-only GESN refuses asynchronous operation.
    check(packet(&r, &[0x4a, 0, 0, 0, 0x10, 0, 0, 0, 8], 0xfffe), 5);
}

#[test]
fn a_locked_tray_refuses_eject() {
    let Some((r, _, _)) = rig("cd_lock", 16) else {
        return;
    };
    assert_eq!(packet(&r, &[0x1e, 0, 0, 0, 1], 0).0 & ERR, 0, "PREVENT");
    assert_eq!(r.ide.is_locked("ide1-cd0"), Some(true));
    // The guest cannot eject a locked tray...
    check(packet(&r, &[0x1b, 0, 0, 0, 0x02], 0), 2);
    assert_eq!(sense(&r), (2, 0x53), "medium removal prevented");
    // ... nor can the host without force: QEMU's words.
    let err = r.ide.eject("ide1-cd0", false).unwrap_err();
    assert_eq!(
        err.to_string(),
        "Device 'ide1-cd0' is locked and force was not specified, wait for tray to open and try again"
    );
    assert_eq!(r.ide.is_tray_open("ide1-cd0"), Some(false));
    // The guest hears an eject request.
    let (_, _, ev) = packet(&r, &[0x4a, 1, 0, 0, 0x10, 0, 0, 0, 8], 0xfffe);
    assert_eq!(ev[4], 1, "eject request");
    // ALLOW, then the guest ejects, then loads again.
    assert_eq!(packet(&r, &[0x1e, 0, 0, 0, 0], 0).0 & ERR, 0);
    assert_eq!(packet(&r, &[0x1b, 0, 0, 0, 0x02], 0).0 & ERR, 0);
    assert_eq!(r.ide.is_tray_open("ide1-cd0"), Some(true));
    check(packet(&r, &[0x00], 0), 2);
    assert_eq!(packet(&r, &[0x1b, 0, 0, 0, 0x03], 0).0 & ERR, 0);
    assert_eq!(packet(&r, &[0x00], 0).0 & ERR, 0);
    // Force wins over a lock; a disk is not removable; unknown ids are reported.
    packet(&r, &[0x1e, 0, 0, 0, 1], 0);
    r.ide.eject("ide1-cd0", true).unwrap();
    assert_eq!(r.ide.is_tray_open("ide1-cd0"), Some(true));
    check(packet(&r, &[0x00], 0), 2);
    assert_eq!(
        r.ide.eject("nothing", false).unwrap_err().to_string(),
        "Device 'nothing' not found"
    );
}

#[test]
fn a_disk_is_not_removable() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "disk_not_removable") {
        return;
    }
    let img = image(&[0u8; 4096]);
    let r = Rig::disk(ctx, &img);
    assert_eq!(
        r.ide.eject("disk0", false).unwrap_err().to_string(),
        "Device 'disk0' is not removable"
    );
}

/// A device attached after the controller was built (the machine owns the controller
/// from power-on; the command line fills it) is found as one given at construction;
/// a taken unit, a unit past 1 and a duplicate id are refused with QEMU's words.
#[test]
fn cold_plugged_devices_are_detected_and_places_checked() {
    let ctx = AioContext::new().unwrap();
    let r = Rig::new(ctx, DmaMemory::new(ram()), [[None, None], [None, None]]);
    r.ide.attach(CH, 1, IdeDevice::cdrom("cd", None)).unwrap();
    let detect = |dh: u8| detects(&r, dh);
    assert!(detect(0xb0), "device 1 present");
    assert!(!detect(0xa0), "device 0 absent");
    assert_eq!(r.ide.has_medium("cd"), Some(false));
    assert_eq!(r.ide.is_tray_open("cd"), Some(false));
    let err = |ch, unit, id: &str| {
        r.ide
            .attach(ch, unit, IdeDevice::cdrom(id, None))
            .unwrap_err()
            .to_string()
    };
    assert_eq!(err(CH, 1, "cd2"), "IDE unit 1 is in use");
    assert_eq!(err(0, 0, "cd"), "Duplicate ID 'cd' for device");
    assert_eq!(
        err(0, 2, "cd3"),
        "Can't create IDE unit 2, bus supports only 2 units"
    );
    assert_eq!(
        r.ide.devices(),
        vec![(CH, 1, "cd".to_string(), ide::DeviceKind::Cdrom)]
    );
}
