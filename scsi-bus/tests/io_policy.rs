//! I/O commands through block-dma: UNMAP and WRITE SAME(16) with UNMAP punch holes in
//! the image; rerror/werror apply as for virtio-blk (report gives CHECK CONDITION with
//! QEMU's sense; stop parks the command, stops the VM, and `cont` resubmits it).

mod common;

use std::os::unix::fs::MetadataExt;
use std::sync::Arc;

use block_dma::{
    Errno, ErrorAction, ErrorPolicy, FaultInjector, FaultRule, FileBackend, FileOptions, OpKind,
};
use common::*;
use runstate::{RunState, RunStateMachine};
use scsi::{DataDirection, HdOptions, ScsiResponse, Sense, status};

fn allocated(img: &tempfile::NamedTempFile) -> u64 {
    std::fs::metadata(img.path()).unwrap().blocks() * 512
}

#[test]
fn unmap_and_write_same_unmap_punch_holes() {
    let h = Harness::new();
    if !have_uring(&h.ctx, "unmap_punch_holes") {
        return;
    }
    let img = image(4 << 20);
    h.bus
        .plug(0, 0, disk("disk0", drive(&img), HdOptions::default()))
        .unwrap();
    h.clear_ua();
    let data = pattern(3, 1 << 20);
    for chunk in 0..6u32 {
        let r = h.data_out(&rw10(0x2a, chunk * 512, 512), &data[..256 << 10]);
        assert_eq!(r.status, status::GOOD);
    }
    assert_eq!(
        h.no_data(&[0x35, 0, 0, 0, 0, 0, 0, 0, 0, 0]).status,
        status::GOOD
    );
    let before = allocated(&img);
    assert!(
        before >= 3 << 19,
        "the writes allocated the image ({before})"
    );

    // UNMAP the first 512 KiB in two descriptors.
    let mut p = vec![0u8; 8 + 32];
    p[0..2].copy_from_slice(&38u16.to_be_bytes());
    p[2..4].copy_from_slice(&32u16.to_be_bytes());
    p[8..16].copy_from_slice(&0u64.to_be_bytes());
    p[16..20].copy_from_slice(&512u32.to_be_bytes());
    p[24..32].copy_from_slice(&512u64.to_be_bytes());
    p[32..36].copy_from_slice(&512u32.to_be_bytes());
    let r = h.data_out(&[0x42, 0, 0, 0, 0, 0, 0, 0, 40, 0], &p);
    assert_eq!(r.status, status::GOOD, "{r:?}");
    let after_unmap = allocated(&img);
    assert!(
        after_unmap + (512 << 10) <= before,
        "{before} -> {after_unmap}"
    );
    let (_, d) = h.data_in(&rw10(0x28, 0, 1024), 512 << 10);
    assert!(
        d.iter().all(|&b| b == 0),
        "unmapped blocks read as zeros (LBPRZ)"
    );

    // WRITE SAME(16) with UNMAP and a zero block: the next 512 KiB.
    let r = h.data_out(&cdb16(0x93, 0x08, 1024, 1024), &[0u8; 512]);
    assert_eq!(r.status, status::GOOD, "{r:?}");
    let after_ws = allocated(&img);
    assert!(
        after_ws + (512 << 10) <= after_unmap,
        "{after_unmap} -> {after_ws}"
    );
    let (_, d) = h.data_in(&rw10(0x28, 1024, 1024), 512 << 10);
    assert!(d.iter().all(|&b| b == 0));
    // The rest is intact.
    let (_, d) = h.data_in(&rw10(0x28, 2048, 512), 256 << 10);
    assert!(
        d == data[..256 << 10],
        "the blocks after the holes are intact"
    );

    // WRITE SAME with a non-zero pattern writes it to every block; NDOB writes zeros.
    let block = pattern(4, 512);
    let r = h.data_out(&cdb16(0x93, 0, 10, 4), &block);
    assert_eq!(r.status, status::GOOD);
    let (_, d) = h.data_in(&rw10(0x28, 10, 4), 2048);
    assert!(d == block.repeat(4), "the pattern is in every block");
    let r = h.no_data(&cdb16(0x93, 0x01, 10, 4));
    assert_eq!(r.status, status::GOOD);
    let (_, d) = h.data_in(&rw10(0x28, 10, 4), 2048);
    assert!(d.iter().all(|&b| b == 0));
}

#[test]
fn rerror_report_gives_check_condition_with_qemus_sense() {
    let h = Harness::new();
    if !have_uring(&h.ctx, "rerror_report") {
        return;
    }
    let img = image(1 << 20);
    let faulty = Arc::new(FaultInjector::new(
        FileBackend::open(&FileOptions::new(img.path())).unwrap(),
    ));
    faulty.inject(FaultRule::new(Some(OpKind::Read), Errno::EIO).times(1));
    faulty.inject(FaultRule::new(Some(OpKind::Write), Errno::ENOSPC).times(1));
    let policy = ErrorPolicy {
        rerror: ErrorAction::Report,
        werror: ErrorAction::Report,
    };
    let drive = drive_over(faulty.clone(), policy, None);
    h.bus
        .plug(0, 0, disk("disk0", drive, HdOptions::default()))
        .unwrap();
    h.clear_ua();
    let (r, _) = h.data_in(&rw10(0x28, 0, 1), 512);
    assert_eq!(
        r.sense(),
        Some(Sense::IO_ERROR),
        "EIO: I/O PROCESS TERMINATED"
    );
    let r = h.data_out(&rw10(0x2a, 0, 1), &[1; 512]);
    assert_eq!(r.sense(), Some(Sense::SPACE_ALLOC_FAILED), "ENOSPC");
    // The faults were one-shot: both work now.
    assert_eq!(
        h.data_out(&rw10(0x2a, 0, 1), &[1; 512]).status,
        status::GOOD
    );
    assert_eq!(h.data_in(&rw10(0x28, 0, 1), 512).1, [1; 512]);
}

#[test]
fn werror_stop_parks_the_command_and_cont_resubmits_it() {
    let h = Harness::new();
    if !have_uring(&h.ctx, "werror_stop") {
        return;
    }
    let vm = RunStateMachine::new(h.ctx.handle().bh_scheduler());
    vm.start().unwrap();
    let img = image(1 << 20);
    let faulty = Arc::new(FaultInjector::new(
        FileBackend::open(&FileOptions::new(img.path())).unwrap(),
    ));
    faulty.inject(FaultRule::new(Some(OpKind::Write), Errno::EIO).times(1));
    let policy = ErrorPolicy {
        rerror: ErrorAction::Report,
        werror: ErrorAction::Stop,
    };
    let drive = drive_over(faulty.clone(), policy, Some(vm.clone()));
    let events = Arc::new(std::sync::Mutex::new(Vec::new()));
    let e = events.clone();
    drive.set_event_hook(move |ev| {
        e.lock().unwrap().push(format!(
            "BLOCK_IO_ERROR {} {}",
            ev.operation,
            ev.action.qmp_name()
        ))
    });
    h.bus
        .plug(0, 0, disk("disk0", drive.clone(), HdOptions::default()))
        .unwrap();
    h.clear_ua();

    let data = pattern(5, 4096);
    h.poke(&data);
    let req = scsi::ScsiRequest {
        cdb: rw10(0x2a, 8, 8)[..].into(),
        data: h.buffer(DataDirection::ToDevice, 4096),
    };
    let out: std::rc::Rc<std::cell::RefCell<Option<ScsiResponse>>> = Default::default();
    let o = out.clone();
    let flight = h
        .bus
        .execute(
            &h.ctx,
            0,
            0,
            req,
            scsi::ScsiDone::new(move |r| *o.borrow_mut() = Some(r)),
        )
        .expect("a write is in flight");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while vm.is_running() {
        assert!(std::time::Instant::now() < deadline, "the VM never stopped");
        h.ctx.poll(true);
    }
    assert_eq!(vm.state(), RunState::IoError);
    assert_eq!(*events.lock().unwrap(), ["BLOCK_IO_ERROR write stop"]);
    assert!(flight.is_parked(), "the command waits for the resume");
    assert!(out.borrow().is_none(), "nothing is completed while stopped");
    // `cont`.
    vm.start().unwrap();
    while out.borrow().is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "the resubmitted write hung"
        );
        h.ctx.poll(true);
    }
    let r = out.take().unwrap();
    assert_eq!((r.status, r.transferred), (status::GOOD, 4096));
    assert_eq!(h.data_in(&rw10(0x28, 8, 8), 4096).1, data);
}
