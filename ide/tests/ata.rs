//! ide-hd at the register level: each ATA command's status and error bits, the data
//! it moves, IDENTIFY words against ACS, resets and nIEN.

mod common;

use aio_context::AioContext;
use common::*;

const DRDY: u8 = 0x40;
const DSC: u8 = 0x10;
const DRQ: u8 = 0x08;
const ERR: u8 = 0x01;
const BSY: u8 = 0x80;
const ABRT: u8 = 0x04;

fn rig(test: &str, sectors: usize) -> Option<(Rig, Vec<u8>, tempfile::NamedTempFile)> {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, test) {
        return None;
    }
    let data = pattern(7, sectors * 512);
    let img = image(&data);
    Some((Rig::disk(ctx, &img), data, img))
}

fn aborted(r: &Rig) {
    let st = r.settle(0);
    assert_eq!(st & (ERR | DRQ | BSY), ERR, "status {st:#x}");
    assert_eq!(r.inb(0, 1), ABRT);
}

#[test]
fn identify_device_words_follow_acs() {
    let Some((r, _, _)) = rig("identify", 2048) else {
        return;
    };
    r.outb(0, 6, 0xa0);
    r.outb(0, 7, 0xec);
    let st = r.settle(0);
    assert_eq!(st, DRDY | DSC | DRQ);
    assert!(r.irqs.level(14), "IRQ 14 raised");
    let b = r.read_data(0, 512);
    assert_eq!(r.alt(0) & DRQ, 0, "DRQ clears after 256 words");
    assert_eq!(word(&b, 0), 0x0040, "fixed, not removable");
    assert_eq!((word(&b, 1), word(&b, 3), word(&b, 6)), (2, 16, 63));
    assert_eq!(word(&b, 47), 0x8010, "READ/WRITE MULTIPLE up to 16");
    assert_eq!(word(&b, 49) & 0x0300, 0x0300, "LBA and DMA");
    assert_eq!(
        u32::from(word(&b, 60)) | u32::from(word(&b, 61)) << 16,
        2048
    );
    assert_eq!(word(&b, 83) & 0x3400, 0x3400, "LBA48, FLUSH CACHE (EXT)");
    assert_eq!(word(&b, 88) & 0x3f, 0x3f, "UDMA 0-5");
    assert_eq!(word(&b, 88) >> 8, 0x20, "UDMA 5 selected");
    assert_eq!(word(&b, 64), 0x0003, "PIO 3 and 4");
    assert_eq!(word(&b, 59), 0x0110, "multiple count valid, 16");
    let lba48: u64 = (0..4)
        .map(|i| u64::from(word(&b, 100 + i)) << (16 * i))
        .sum();
    assert_eq!(lba48, 2048);
    assert_eq!(&b[54..54 + 14], b"EQUMH RADDSI K", "model, byte-swapped");
    assert_eq!(&b[20..28], b"MQ0000 1", "serial QM00001");
    assert_eq!(b[510], 0xa5);
    assert_eq!(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)), 0, "checksum");
    // Reading the status register acknowledges the interrupt.
    r.inb(0, 7);
    assert!(!r.irqs.level(14));
}

#[test]
fn read_sectors_pio_lba28_moves_the_data_and_advances_the_address() {
    let Some((r, data, _)) = rig("read_sectors", 64) else {
        return;
    };
    r.task28(0, 0, 5, 3);
    r.outb(0, 7, 0x20);
    for i in 0..3 {
        let st = r.settle(0);
        assert_eq!(st, DRDY | DSC | DRQ, "block {i}");
        assert!(r.irqs.level(14));
        r.inb(0, 7);
        let got = r.read_data(0, 512);
        assert_eq!(got, data[(5 + i) * 512..(6 + i) * 512], "sector {}", 5 + i);
    }
    let st = r.settle(0);
    assert_eq!(st & (DRQ | BSY | ERR), 0);
    assert_eq!(r.inb(0, 3), 8, "LBA low points past the transfer");
    assert_eq!(r.inb(0, 2), 0, "count exhausted");
}

#[test]
fn write_sectors_pio_reaches_the_image() {
    let Some((r, _, img)) = rig("write_sectors", 64) else {
        return;
    };
    let new = pattern(99, 1024);
    r.task28(0, 0, 10, 2);
    r.outb(0, 7, 0x30);
    assert_eq!(r.alt(0), DRDY | DSC | DRQ, "DRQ at once, no interrupt");
    assert!(!r.irqs.level(14));
    r.write_data(0, &new[..512]);
    let st = r.settle(0);
    assert_eq!(st, DRDY | DSC | DRQ, "second block requested");
    assert!(r.irqs.level(14));
    r.write_data(0, &new[512..]);
    let st = r.settle(0);
    assert_eq!(st, DRDY | DSC);
    let file = std::fs::read(img.path()).unwrap();
    assert_eq!(&file[10 * 512..12 * 512], &new[..]);
}

#[test]
fn lba48_commands_use_the_high_order_bytes() {
    let Some((r, data, img)) = rig("lba48", 600) else {
        return;
    };
    // READ SECTORS EXT of 0x101 sectors from 3 (count needs the high byte).
    r.task48(0, 0, 3, 0x101);
    // HOB read-back: the previous values of the count register.
    r.ctrl(0, 0x80);
    assert_eq!(r.inb(0, 2), 0x01);
    r.ctrl(0, 0x00);
    r.outb(0, 7, 0x24);
    let mut got = Vec::new();
    for _ in 0..0x101 {
        r.settle(0);
        got.extend(r.read_data(0, 512));
    }
    assert_eq!(got, data[3 * 512..(3 + 0x101) * 512]);
    // WRITE SECTORS EXT, then the file.
    let new = pattern(5, 512);
    r.task48(0, 0, 590, 1);
    r.outb(0, 7, 0x34);
    r.write_data(0, &new);
    assert_eq!(r.settle(0), DRDY | DSC);
    assert_eq!(
        &std::fs::read(img.path()).unwrap()[590 * 512..591 * 512],
        &new[..]
    );
}

#[test]
fn read_and_write_multiple_move_blocks_of_the_multiple_count() {
    let Some((r, data, img)) = rig("multiple", 64) else {
        return;
    };
    for bad in [3u8, 32] {
        r.task28(0, 0, 0, bad);
        r.outb(0, 7, 0xc6);
        aborted(&r);
    }
    r.task28(0, 0, 0, 4);
    r.outb(0, 7, 0xc6);
    assert_eq!(r.settle(0), DRDY | DSC);
    // READ MULTIPLE of 6: a block of 4, then one of 2.
    r.task28(0, 0, 8, 6);
    r.outb(0, 7, 0xc4);
    r.settle(0);
    let first = r.read_data(0, 2048);
    assert_eq!(first, data[8 * 512..12 * 512]);
    r.settle(0);
    let second = r.read_data(0, 1024);
    assert_eq!(second, data[12 * 512..14 * 512]);
    assert_eq!(r.settle(0) & DRQ, 0);
    // WRITE MULTIPLE EXT of 5.
    let new = pattern(3, 5 * 512);
    r.task48(0, 0, 20, 5);
    r.outb(0, 7, 0x39);
    r.write_data(0, &new[..2048]);
    assert_eq!(r.settle(0), DRDY | DSC | DRQ);
    r.write_data(0, &new[2048..]);
    assert_eq!(r.settle(0), DRDY | DSC);
    assert_eq!(
        &std::fs::read(img.path()).unwrap()[20 * 512..25 * 512],
        &new[..]
    );
    // Multiple mode off: READ MULTIPLE aborts.
    r.task28(0, 0, 0, 0);
    r.outb(0, 7, 0xc6);
    r.settle(0);
    r.task28(0, 0, 0, 1);
    r.outb(0, 7, 0xc4);
    aborted(&r);
}

#[test]
fn chs_addressing_and_range_errors() {
    let Some((r, data, _)) = rig("chs", 2048) else {
        return;
    };
    // Cylinder 1, head 2, sector 3 with 16 heads x 63 sectors.
    let lba = (16 + 2) * 63 + 2;
    r.outb(0, 6, 0xa0 | 2);
    r.outb(0, 2, 1);
    r.outb(0, 3, 3);
    r.outb(0, 4, 1);
    r.outb(0, 5, 0);
    r.outb(0, 7, 0x20);
    r.settle(0);
    assert_eq!(r.read_data(0, 512), data[lba * 512..(lba + 1) * 512]);
    // Sector 0 does not exist in CHS.
    r.outb(0, 6, 0xa0);
    r.outb(0, 3, 0);
    r.outb(0, 7, 0x20);
    aborted(&r);
    // Past the end of the disk.
    r.task28(0, 0, 2047, 2);
    r.outb(0, 7, 0x20);
    aborted(&r);
    r.task48(0, 0, 1 << 40, 1);
    r.outb(0, 7, 0x25);
    aborted(&r);
    r.task28(0, 0, 2047, 2);
    r.outb(0, 7, 0x40);
    aborted(&r);
}

#[test]
fn non_data_commands() {
    let Some((r, _, _)) = rig("non_data", 64) else {
        return;
    };
    let ok = |cmd: u8| {
        r.outb(0, 7, cmd);
        let st = r.settle(0);
        assert_eq!(st, DRDY | DSC, "command {cmd:#x}");
        assert!(r.irqs.level(14), "command {cmd:#x} interrupts");
        r.inb(0, 7);
    };
    r.task28(0, 0, 1, 4);
    ok(0x40); // READ VERIFY
    ok(0x70); // SEEK
    ok(0x10); // RECALIBRATE
    ok(0xe7); // FLUSH CACHE
    ok(0xea); // FLUSH CACHE EXT
    ok(0xe5); // CHECK POWER MODE
    assert_eq!(r.inb(0, 2), 0xff, "active");
    ok(0xe0); // STANDBY IMMEDIATE
    ok(0xe5);
    assert_eq!(r.inb(0, 2), 0x00, "standby");
    ok(0xe1); // IDLE IMMEDIATE
    ok(0xe5);
    assert_eq!(r.inb(0, 2), 0xff);
    ok(0xe2);
    ok(0xe3);
    // INITIALIZE DEVICE PARAMETERS: 8 heads, 32 sectors; IDENTIFY words 55/56 follow.
    r.outb(0, 6, 0xa7);
    r.outb(0, 2, 32);
    ok(0x91);
    r.outb(0, 7, 0xec);
    r.settle(0);
    let b = r.read_data(0, 512);
    assert_eq!((word(&b, 55), word(&b, 56)), (8, 32));
    // ... with zero sectors per track aborts.
    r.outb(0, 2, 0);
    r.outb(0, 7, 0x91);
    aborted(&r);
}

#[test]
fn set_features_transfer_mode_and_write_cache() {
    let Some((r, _, _)) = rig("set_features", 64) else {
        return;
    };
    let identify = || {
        r.outb(0, 7, 0xec);
        r.settle(0);
        r.read_data(0, 512)
    };
    r.outb(0, 6, 0xa0);
    r.outb(0, 1, 0x82); // write cache off
    r.outb(0, 7, 0xef);
    assert_eq!(r.settle(0), DRDY | DSC);
    assert_eq!(word(&identify(), 85) & (1 << 5), 0);
    r.outb(0, 1, 0x02);
    r.outb(0, 7, 0xef);
    r.settle(0);
    assert_ne!(word(&identify(), 85) & (1 << 5), 0);
    r.outb(0, 1, 0x03);
    r.outb(0, 2, 0x22); // MDMA 2
    r.outb(0, 7, 0xef);
    assert_eq!(r.settle(0), DRDY | DSC);
    let b = identify();
    assert_eq!((word(&b, 63) >> 8, word(&b, 88) >> 8), (0x04, 0));
    r.outb(0, 1, 0x03);
    r.outb(0, 2, 0x46); // UDMA 6: not supported
    r.outb(0, 7, 0xef);
    aborted(&r);
    r.outb(0, 1, 0x99);
    r.outb(0, 7, 0xef);
    aborted(&r);
}

#[test]
fn unknown_and_misdirected_commands_abort() {
    let Some((r, _, _)) = rig("unknown", 64) else {
        return;
    };
    for cmd in [0x00u8, 0x01, 0xff, 0xa0, 0xa1, 0x08, 0x5c] {
        r.outb(0, 6, 0xa0);
        r.outb(0, 7, cmd);
        aborted(&r);
        r.inb(0, 7);
    }
    // The disk still works.
    r.outb(0, 7, 0xec);
    assert_eq!(r.settle(0), DRDY | DSC | DRQ);
}

#[test]
fn absent_device_reads_zero_and_ignores_commands() {
    let Some((r, _, _)) = rig("absent", 64) else {
        return;
    };
    r.outb(0, 6, 0xb0);
    assert_eq!(r.inb(0, 7), 0);
    r.outb(0, 7, 0xec);
    assert_eq!(r.alt(0), 0);
    assert!(!r.irqs.level(14));
    // Channel 1 has nothing at all.
    assert_eq!(r.inb(1, 7), 0);
    r.outb(0, 6, 0xa0);
    assert_eq!(r.alt(0), DRDY | DSC);
}

#[test]
fn software_reset_and_diagnostic_leave_the_signature() {
    let Some((r, _, _)) = rig("srst", 64) else {
        return;
    };
    r.task28(0, 0, 0x123456, 9);
    r.outb(0, 7, 0x20); // a read in progress
    r.ctrl(0, 0x04);
    assert_eq!(r.alt(0) & BSY, BSY, "BSY while SRST is set");
    r.ctrl(0, 0x00);
    r.spin(5);
    assert_eq!(r.alt(0), DRDY | DSC);
    assert_eq!(r.inb(0, 1), 0x01, "diagnostic code: no error");
    assert_eq!(
        (r.inb(0, 2), r.inb(0, 3), r.inb(0, 4), r.inb(0, 5)),
        (1, 1, 0, 0)
    );
    r.outb(0, 4, 0x55);
    r.outb(0, 7, 0x90);
    r.settle(0);
    assert_eq!((r.inb(0, 1), r.inb(0, 4)), (0x01, 0));
}

#[test]
fn nien_masks_the_interrupt_line() {
    let Some((r, _, _)) = rig("nien", 64) else {
        return;
    };
    r.ctrl(0, 0x02);
    r.outb(0, 6, 0xa0);
    r.outb(0, 7, 0xe5);
    r.settle(0);
    assert!(!r.irqs.level(14), "nIEN set: line stays low");
    assert_eq!(
        r.bm_in(2) & 0x04,
        0,
        "nor does the bus master's Interrupt bit (as in QEMU)"
    );
    r.ctrl(0, 0x00);
    assert!(r.irqs.level(14), "pending interrupt shows once nIEN clears");
    r.inb(0, 7);
    assert!(!r.irqs.level(14));
}

#[test]
fn legacy_ports_dispatch_through_an_io_bus() {
    let Some((r, _, _)) = rig("legacy_ports", 64) else {
        return;
    };
    let pio = io_bus::IoBus::new("pio");
    r.ide.map_legacy(&pio, 0).unwrap();
    assert!(pio.write(0x1f6, &[0xa0]));
    assert!(pio.write(0x1f7, &[0xec]));
    let mut st = [0u8];
    r.settle(0);
    assert!(pio.read(0x3f6, &mut st));
    assert_eq!(st[0], DRDY | DSC | DRQ);
    let mut w = [0u8; 4];
    assert!(pio.read(0x1f0, &mut w), "32-bit data port access");
    assert_eq!(u16::from_le_bytes([w[0], w[1]]), 0x0040);
    // The secondary channel answers at 0x170/0x376 (nothing attached: zeros).
    assert!(pio.read(0x177, &mut st));
    assert_eq!(st[0], 0);
    assert!(pio.read(0x376, &mut st));
    // Mapping twice collides.
    assert!(r.ide.map_legacy(&pio, 0).is_err());
}
