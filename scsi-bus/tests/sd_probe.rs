//! Drives scsi-hd the way Linux's sd (and the SCSI midlayer's scan) probes a disk, and
//! checks every answer byte for byte against the fields of SPC-4 and SBC-3.

mod common;

use common::*;
use scsi::{DataDirection, HdOptions, HostStatus, Sense, status};

const SIZE: u64 = 64 << 20;
const BLOCKS: u64 = SIZE / 512;

fn setup(test: &str) -> Option<(Harness, tempfile::NamedTempFile)> {
    let h = Harness::new();
    if !have_uring(&h.ctx, test) {
        return None;
    }
    let img = image(SIZE);
    let opts = HdOptions {
        serial: "SN0001".into(),
        ..HdOptions::default()
    };
    h.bus.plug(0, 0, disk("disk0", drive(&img), opts)).unwrap();
    Some((h, img))
}

#[test]
fn linux_sd_probe_sequence() {
    let Some((h, _img)) = setup("linux_sd_probe_sequence") else {
        return;
    };
    // scsi_probe_lun: INQUIRY, 36 bytes. No unit attention for INQUIRY.
    let (r, d) = h.data_in(&[0x12, 0, 0, 0, 36, 0], 36);
    assert_eq!(r.status, status::GOOD);
    assert_eq!(r.host, HostStatus::Ok);
    let mut want = vec![0x00, 0x00, 0x05, 0x12, 31, 0x00, 0x00, 0x02];
    want.extend_from_slice(b"QEMU    QEMU HARDDISK   2.5+");
    assert_eq!(d, want);

    // scsi_report_lun_scan: REPORT LUNS, LUN 0 only.
    let mut rl = [0u8; 12];
    rl[0] = 0xa0;
    rl[6..10].copy_from_slice(&4096u32.to_be_bytes());
    let (r, d) = h.data_in(&rl, 4096);
    assert_eq!(r.status, status::GOOD);
    assert_eq!(d, [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);

    // sd_spinup_disk: TEST UNIT READY sees the power-on unit attention once.
    let r = h.no_data(&[0; 6]);
    assert_eq!(r.status, status::CHECK_CONDITION);
    assert_eq!(
        &r.sense[..],
        &[
            0x70, 0, 0x06, 0, 0, 0, 0, 10, 0, 0, 0, 0, 0x29, 0x00, 0, 0, 0, 0
        ]
    );
    let r = h.no_data(&[0; 6]);
    assert_eq!((r.status, r.sense.len()), (status::GOOD, 0));

    // sd_read_capacity: READ CAPACITY(16).
    let (r, d) = h.data_in(&[0x9e, 0x10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0], 32);
    assert_eq!(r.status, status::GOOD);
    let mut want = vec![0u8; 32];
    want[0..8].copy_from_slice(&(BLOCKS - 1).to_be_bytes());
    want[8..12].copy_from_slice(&512u32.to_be_bytes());
    want[14] = 0xc0; // LBPME | LBPRZ: a raw file punches holes that read as zeros
    assert_eq!(d, want);
    // READ CAPACITY(10).
    let (r, d) = h.data_in(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
    assert_eq!(r.status, status::GOOD);
    let mut want = ((BLOCKS - 1) as u32).to_be_bytes().to_vec();
    want.extend_from_slice(&512u32.to_be_bytes());
    assert_eq!(d, want);

    // sd_read_block_limits etc: VPD 00h, 80h, 83h, B0h, B1h, B2h.
    let vpd = |page: u8| h.data_in(&[0x12, 1, page, 0x01, 0, 0], 256);
    let (r, d) = vpd(0x00);
    assert_eq!(r.status, status::GOOD);
    assert_eq!(d, [0, 0, 0, 6, 0x00, 0x80, 0x83, 0xb0, 0xb1, 0xb2]);
    let (_, d) = vpd(0x80);
    assert_eq!(d, [&[0u8, 0x80, 0, 6][..], b"SN0001"].concat());
    let (_, d) = vpd(0x83);
    assert_eq!(
        d,
        [&[0u8, 0x83, 0, 10, 0x02, 0x00, 0x00, 6][..], b"SN0001"].concat()
    );
    let (_, d) = vpd(0xb0);
    assert_eq!(d.len(), 64);
    assert_eq!(&d[0..4], &[0, 0xb0, 0, 0x3c]);
    assert_eq!(d[4], 0x01, "WSNZ");
    assert_eq!(
        &d[8..12],
        &65535u32.to_be_bytes(),
        "MAXIMUM TRANSFER LENGTH"
    );
    assert_eq!(
        &d[20..24],
        &(1u32 << 21).to_be_bytes(),
        "MAXIMUM UNMAP LBA COUNT"
    );
    assert_eq!(
        &d[24..28],
        &255u32.to_be_bytes(),
        "MAXIMUM UNMAP BLOCK DESCRIPTOR COUNT"
    );
    assert_eq!(&d[28..32], &1u32.to_be_bytes(), "OPTIMAL UNMAP GRANULARITY");
    assert_eq!(
        &d[36..44],
        &(1u64 << 21).to_be_bytes(),
        "MAXIMUM WRITE SAME LENGTH"
    );
    let (_, d) = vpd(0xb1);
    assert_eq!(d, [&[0u8, 0xb1, 0, 0x3c][..], &[0u8; 0x3c]].concat());
    let (_, d) = vpd(0xb2);
    assert_eq!(d, [0, 0xb2, 0, 4, 0, 0xe4, 0x02, 0]);
    // An unknown VPD page.
    let (r, _) = vpd(0x99);
    assert_eq!(r.sense(), Some(Sense::INVALID_FIELD));

    // sd_read_write_protect_flag: MODE SENSE(6), all pages, 4 bytes then 255.
    let (r, d) = h.data_in(&[0x1a, 0, 0x3f, 0, 4, 0], 4);
    assert_eq!(r.status, status::GOOD);
    // 3 header bytes + 8 block descriptor + 24 + 20 + 12 page bytes.
    assert_eq!(d, [3 + 8 + 24 + 20 + 12, 0, 0x10, 8]);
    let (_, d) = h.data_in(&[0x1a, 0, 0x3f, 0, 0xff, 0], 255);
    assert_eq!(d.len(), 68);
    assert_eq!(
        &d[4..12],
        &[0, 2, 0, 0, 0, 0, 2, 0],
        "block descriptor: 131072 blocks of 512"
    );
    let geometry = &d[12..36];
    let cyl = (BLOCKS / (16 * 63)) as u32;
    let c = &cyl.to_be_bytes()[1..];
    assert_eq!(&geometry[0..2], &[0x04, 0x16]);
    assert_eq!(&geometry[2..5], c);
    assert_eq!(geometry[5], 16);
    assert_eq!(&geometry[20..22], &5400u16.to_be_bytes());
    assert_eq!(
        &d[36..40],
        &[0x08, 0x12, 0x04, 0x00],
        "caching page, WCE set"
    );
    assert_eq!(
        &d[56..60],
        &[0x0a, 0x0a, 0x00, 0x00],
        "control page, D_SENSE clear"
    );

    // sd_read_cache_type: MODE SENSE(6) page 08h with DBD, then (10).
    let (_, d) = h.data_in(&[0x1a, 0x08, 0x08, 0, 0xff, 0], 255);
    let mut want = vec![3 + 20, 0, 0x10, 0, 0x08, 0x12, 0x04];
    want.resize(24, 0);
    assert_eq!(d, want);
    let (_, d) = h.data_in(&[0x5a, 0x08, 0x08, 0, 0, 0, 0, 0, 0xff, 0], 255);
    let mut want = vec![0, 6 + 20, 0, 0x10, 0, 0, 0, 0, 0x08, 0x12, 0x04];
    want.resize(28, 0);
    assert_eq!(d, want);
    // Changeable values: only WCE.
    let (_, d) = h.data_in(&[0x1a, 0x08, 0x48, 0, 0xff, 0], 255);
    assert_eq!(&d[4..8], &[0x08, 0x12, 0x04, 0x00]);
    assert!(d[8..].iter().all(|&b| b == 0));

    // Reads and writes in every size, data checked.
    let data = pattern(1, 8 * 512);
    let r = h.data_out(&rw10(0x2a, 100, 8), &data);
    assert_eq!((r.status, r.transferred), (status::GOOD, 4096));
    let (r, d) = h.data_in(&rw10(0x28, 100, 8), 4096);
    assert_eq!(r.status, status::GOOD);
    assert_eq!(d, data);
    let (_, d) = h.data_in(&[0x08, 0, 0, 100, 8, 0], 4096);
    assert_eq!(d, data, "READ(6)");
    let mut r12 = [0u8; 12];
    r12[0] = 0xa8;
    r12[2..6].copy_from_slice(&100u32.to_be_bytes());
    r12[6..10].copy_from_slice(&8u32.to_be_bytes());
    let (_, d) = h.data_in(&r12, 4096);
    assert_eq!(d, data, "READ(12)");
    let top = BLOCKS - 8;
    let data2 = pattern(2, 4096);
    let r = h.data_out(&cdb16(0x8a, 0x08, top, 8), &data2); // WRITE(16) with FUA
    assert_eq!(r.status, status::GOOD);
    let (_, d) = h.data_in(&cdb16(0x88, 0, top, 8), 4096);
    assert_eq!(d, data2, "READ(16) of the last blocks");
    // A larger buffer than needed: only the transfer length moves.
    let (r, _) = h.data_in(&rw10(0x28, 0, 1), 4096);
    assert_eq!(r.transferred, 512);

    // SYNCHRONIZE CACHE(10) and (16), VERIFY(10), START STOP UNIT.
    assert_eq!(
        h.no_data(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]).status,
        status::GOOD
    );
    assert_eq!(h.no_data(&cdb16(0x91, 0, 0, 0)).status, status::GOOD);
    assert_eq!(h.no_data(&rw10(0x2f, 0, 8)).status, status::GOOD);
    assert_eq!(h.no_data(&[0x1b, 0, 0, 0, 1, 0]).status, status::GOOD);

    // REQUEST SENSE with nothing pending: NO SENSE, fixed and descriptor.
    let (_, d) = h.data_in(&[0x03, 0, 0, 0, 18, 0], 18);
    assert_eq!(d, Sense::NO_SENSE.fixed());
    let (_, d) = h.data_in(&[0x03, 1, 0, 0, 18, 0], 18);
    assert_eq!(d, [0x72, 0, 0, 0, 0, 0, 0, 0]);
}

#[test]
fn mode_select_toggles_the_write_cache_and_descriptor_sense() {
    let Some((h, _img)) = setup("mode_select_toggles") else {
        return;
    };
    h.clear_ua();
    // MODE SELECT(6) with PF: the caching page with WCE clear.
    let mut list = vec![0u8, 0, 0, 0, 0x08, 0x12];
    list.resize(4 + 20, 0);
    let r = h.data_out(&[0x15, 0x10, 0, 0, list.len() as u8, 0], &list);
    assert_eq!(r.status, status::GOOD);
    let (_, d) = h.data_in(&[0x1a, 0x08, 0x08, 0, 0xff, 0], 255);
    assert_eq!(d[6], 0x00, "WCE now clear");
    // Writes are still good (each is followed by a flush).
    let r = h.data_out(&rw10(0x2a, 0, 1), &[7; 512]);
    assert_eq!(r.status, status::GOOD);
    // A non-changeable bit differs: INVALID FIELD IN PARAMETER LIST.
    list[4 + 3] = 0x01;
    let r = h.data_out(&[0x15, 0x10, 0, 0, list.len() as u8, 0], &list);
    assert_eq!(r.sense(), Some(Sense::INVALID_PARAM));
    // SP set: INVALID FIELD IN CDB.
    let r = h.data_out(&[0x15, 0x11, 0, 0, 24, 0], &[0; 24]);
    assert_eq!(r.sense(), Some(Sense::INVALID_FIELD));
    // Control page with D_SENSE: errors now use descriptor format.
    let mut ctl = vec![0u8, 0, 0, 0, 0, 0, 0, 0, 0x0a, 0x0a, 0x04];
    ctl.resize(8 + 12, 0);
    let r = h.data_out(&[0x55, 0x10, 0, 0, 0, 0, 0, 0, ctl.len() as u8, 0], &ctl);
    assert_eq!(r.status, status::GOOD);
    let r = h.no_data(&[0xee, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    assert_eq!(&r.sense[..], &[0x72, 0x05, 0x20, 0x00, 0, 0, 0, 0]);
}

#[test]
fn hostile_cdbs_get_the_right_check_condition() {
    let Some((h, _img)) = setup("hostile_cdbs") else {
        return;
    };
    h.clear_ua();
    let check = |cdb: &[u8], sense: Sense| {
        let r = h.run_on(0, 0, cdb, DataDirection::FromDevice, 4096).0;
        assert_eq!(r.status, status::CHECK_CONDITION, "{cdb:02x?}");
        assert_eq!(r.sense(), Some(sense), "{cdb:02x?}");
        assert_eq!(r.transferred, 0);
    };
    // Invalid opcodes, empty and truncated CDBs.
    check(&[0xff, 0, 0, 0, 0, 0], Sense::INVALID_OPCODE);
    check(&[0xc0; 16], Sense::INVALID_OPCODE);
    check(&[], Sense::INVALID_OPCODE);
    check(&[0x28, 0, 0, 0], Sense::INVALID_OPCODE);
    // Out of range: one past the end, a wrapping LBA, a length crossing the end.
    check(&rw10(0x28, BLOCKS as u32, 1), Sense::LBA_OUT_OF_RANGE);
    check(&cdb16(0x88, 0, u64::MAX, 2), Sense::LBA_OUT_OF_RANGE);
    check(&cdb16(0x88, 0, BLOCKS - 1, 2), Sense::LBA_OUT_OF_RANGE);
    check(&[0x08, 0x1f, 0xff, 0xff, 0, 0], Sense::LBA_OUT_OF_RANGE);
    check(&cdb16(0x93, 0x08, BLOCKS, 1), Sense::LBA_OUT_OF_RANGE);
    check(&rw10(0x2f, BLOCKS as u32 - 1, 2), Sense::LBA_OUT_OF_RANGE);
    check(&cdb16(0x91, 0, BLOCKS + 1, 0), Sense::LBA_OUT_OF_RANGE);
    // Invalid fields.
    check(&[0x12, 0, 0x80, 0, 0xff, 0], Sense::INVALID_FIELD);
    check(&[0x12, 0x02, 0, 0, 0xff, 0], Sense::INVALID_FIELD);
    check(&[0x1a, 0, 0x21, 0, 0xff, 0], Sense::INVALID_FIELD);
    check(&[0x1a, 0, 0x08, 0x01, 0xff, 0], Sense::INVALID_FIELD);
    check(&[0x28, 0x20, 0, 0, 0, 0, 0, 0, 1, 0], Sense::INVALID_FIELD);
    check(
        &[0x9e, 0x11, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0],
        Sense::INVALID_FIELD,
    );
    check(&[0x25, 0, 0, 0, 0, 1, 0, 0, 0, 0], Sense::INVALID_FIELD);
    check(
        &[0xa0, 0, 3, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        Sense::INVALID_FIELD,
    );
    check(&cdb16(0x93, 0, 0, 0), Sense::INVALID_FIELD);
    check(&[0x42, 1, 0, 0, 0, 0, 0, 0, 24, 0], Sense::INVALID_FIELD);
    check(&[0x2f, 0x02, 0, 0, 0, 0, 0, 0, 1, 0], Sense::INVALID_FIELD);
    check(
        &[0x1a, 0, 0xc8, 0, 0xff, 0],
        Sense::SAVING_PARAMS_NOT_SUPPORTED,
    );
    // UNMAP parameter lists that lie about their lengths.
    let mut p = vec![0u8; 24];
    p[0..2].copy_from_slice(&100u16.to_be_bytes());
    let r = h.data_out(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &p);
    assert_eq!(r.sense(), Some(Sense::INVALID_PARAM_LEN));
    p[0..2].copy_from_slice(&22u16.to_be_bytes());
    p[2..4].copy_from_slice(&17u16.to_be_bytes());
    let r = h.data_out(&[0x42, 0, 0, 0, 0, 0, 0, 0, 24, 0], &p);
    assert_eq!(r.sense(), Some(Sense::INVALID_PARAM_LEN));
    let r = h.data_out(&[0x42, 0, 0, 0, 0, 0, 0, 0, 4, 0], &p[..4]);
    assert_eq!(r.sense(), Some(Sense::INVALID_PARAM_LEN));
    // A buffer too small or in the wrong direction: OVERRUN, no I/O.
    let r = h
        .run_on(0, 0, &rw10(0x28, 0, 8), DataDirection::FromDevice, 512)
        .0;
    assert_eq!(r.host, HostStatus::Overrun);
    let r = h
        .run_on(0, 0, &rw10(0x2a, 0, 1), DataDirection::FromDevice, 512)
        .0;
    assert_eq!(r.host, HostStatus::Overrun);
    // A buffer outside guest RAM fails the request, not the process.
    let req = scsi::ScsiRequest {
        cdb: [0x12, 0, 0, 0, 36, 0][..].into(),
        data: scsi::DataBuffer {
            sg: [(1 << 40, 36)].into_iter().collect(),
            ..h.buffer(DataDirection::FromDevice, 36)
        },
    };
    let got = std::rc::Rc::new(std::cell::Cell::new(None));
    let g = got.clone();
    h.bus.execute(
        &h.ctx,
        0,
        0,
        req,
        scsi::ScsiDone::new(move |r| g.set(Some(r.host))),
    );
    assert_eq!(got.get(), Some(HostStatus::Failure));
    // Random CDBs: never a panic, always a well-formed answer.
    let mut rng = fastrand::Rng::with_seed(16);
    for _ in 0..20_000 {
        let len = rng.usize(0..=32);
        let mut cdb: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
        if rng.bool() && !cdb.is_empty() {
            // Bias towards implemented opcodes.
            const OPS: [u8; 14] = [
                0x00, 0x03, 0x12, 0x1a, 0x5a, 0x25, 0x9e, 0xa0, 0x28, 0x88, 0x2f, 0x42, 0x93, 0x15,
            ];
            cdb[0] = OPS[rng.usize(..OPS.len())];
        }
        let dir = [
            DataDirection::None,
            DataDirection::FromDevice,
            DataDirection::ToDevice,
        ][rng.usize(..3)];
        let (r, _) = h.run_on(0, 0, &cdb, dir, rng.u64(0..=8192));
        if r.status == status::CHECK_CONDITION {
            assert!(r.sense().is_some());
        }
        assert!(r.transferred <= 8192);
    }
}

#[test]
fn unit_attentions_capacity_luns_changed_and_reset() {
    let h = Harness::new();
    if !have_uring(&h.ctx, "unit_attentions") {
        return;
    }
    let img = image(1 << 20);
    let hd = disk("disk0", drive(&img), HdOptions::default());
    let control = hd.control();
    h.bus.plug(0, 0, hd).unwrap();
    h.clear_ua();
    // INQUIRY and REPORT LUNS do not consume a unit attention.
    h.bus.set_unit_attention(Sense::REPORTED_LUNS_CHANGED);
    assert_eq!(
        h.data_in(&[0x12, 0, 0, 0, 36, 0], 36).0.status,
        status::GOOD
    );
    // REQUEST SENSE reports it (and clears it).
    let (_, d) = h.data_in(&[0x03, 0, 0, 0, 18, 0], 18);
    assert_eq!(Sense::decode(&d), Some(Sense::REPORTED_LUNS_CHANGED));
    assert_eq!(h.no_data(&[0; 6]).status, status::GOOD);
    // REPORT LUNS clears REPORTED LUNS DATA HAS CHANGED.
    h.bus.set_unit_attention(Sense::REPORTED_LUNS_CHANGED);
    let (r, _) = h.data_in(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256);
    assert_eq!(r.status, status::GOOD);
    assert_eq!(h.no_data(&[0; 6]).status, status::GOOD);
    // Capacity change.
    control.set_capacity(2 << 20);
    let r = h.no_data(&[0; 6]);
    assert_eq!(r.sense(), Some(Sense::CAPACITY_CHANGED));
    let (_, d) = h.data_in(&[0x25, 0, 0, 0, 0, 0, 0, 0, 0, 0], 8);
    assert_eq!(&d[0..4], &4095u32.to_be_bytes());
    // A reset: POWER ON, RESET.
    h.bus.bus().reset(&rcu::read());
    assert_eq!(h.no_data(&[0; 6]).sense(), Some(Sense::POWER_ON_RESET));
}

#[test]
fn absent_luns_and_targets() {
    let Some((h, _img)) = setup("absent_luns") else {
        return;
    };
    // LUN 3 of target 0 does not exist: the target answers.
    let (r, d) = h.run_on(0, 3, &[0x12, 0, 0, 0, 36, 0], DataDirection::FromDevice, 36);
    assert_eq!(r.status, status::GOOD);
    assert_eq!(&d[0..5], &[0x7f, 0, 5, 0x12, 31]);
    let (r, _) = h.run_on(0, 3, &[0; 6], DataDirection::None, 0);
    assert_eq!(r.sense(), Some(Sense::LUN_NOT_SUPPORTED));
    let (_, d) = h.run_on(0, 3, &[0x03, 0, 0, 0, 18, 0], DataDirection::FromDevice, 18);
    assert_eq!(Sense::decode(&d), Some(Sense::LUN_NOT_SUPPORTED));
    let (_, d) = h.run_on(
        0,
        3,
        &[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
        DataDirection::FromDevice,
        256,
    );
    assert_eq!(d, [0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    // Target 1 does not exist at all.
    let (r, _) = h.run_on(1, 0, &[0; 6], DataDirection::None, 0);
    assert_eq!(r.host, HostStatus::BadTarget);
    // LUNs above 255 use flat space addressing.
    let img2 = image(1 << 20);
    h.bus
        .plug(0, 300, disk("disk1", drive(&img2), HdOptions::default()))
        .unwrap();
    let (_, d) = h.data_in(&[0xa0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], 256);
    assert_eq!(&d[0..4], &16u32.to_be_bytes());
    assert_eq!(&d[16..24], &[0x41, 0x2c, 0, 0, 0, 0, 0, 0]);
    assert!(matches!(
        h.bus
            .plug(0, 16384, disk("disk2", drive(&img2), HdOptions::default())),
        Err(scsi::Error::Address { .. })
    ));
}
