//! rerror/werror with QEMU's semantics, and seed 002 (QEMU 2075200b, restart of failed
//! requests through a BH): on `stop` the drive records its io-status, emits
//! BLOCK_IO_ERROR before the STOP, and parks the request; resume only schedules a BH,
//! which resubmits parked requests in their original order; a request that fails again
//! re-enters the policy (parks, stops again) from the BH, not from inside the runstate
//! notification. Injected EIO (blkdebug-style) and a real ENOSPC from a small tmpfs.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use aio_context::AioContext;
use block_dma::{
    BlockBackend, BlockOp, DmaDirection, DmaMemory, Drive, Errno, ErrorAction, ErrorPolicy,
    FaultInjector, FaultRule, FileBackend, FileOptions, IoStatus, OpKind,
};
use common::*;
use runstate::{Event, RunState, RunStateMachine};

type Log = Arc<Mutex<Vec<String>>>;

/// Records the offsets of the writes it passes on.
struct Recording<B> {
    inner: B,
    writes: Mutex<Vec<u64>>,
}

impl<B: BlockBackend> BlockBackend for Recording<B> {
    fn info(&self) -> &block_dma::BackendInfo {
        self.inner.info()
    }
    fn submit(
        &self,
        ctx: &AioContext,
        op: BlockOp,
        done: block_dma::Done,
    ) -> Result<block_dma::Ticket, Errno> {
        if let BlockOp::Write { offset, .. } = &op {
            self.writes.lock().unwrap().push(*offset);
        }
        self.inner.submit(ctx, op, done)
    }
    fn cancel(&self, ctx: &AioContext, ticket: block_dma::Ticket) {
        self.inner.cancel(ctx, ticket)
    }
}

/// A VM in the running state whose events (and the drive's BLOCK_IO_ERRORs) go to a log.
fn vm(ctx: &AioContext) -> (RunStateMachine, Log) {
    let vm = RunStateMachine::new(ctx.handle().bh_scheduler());
    let log: Log = Arc::default();
    let l = log.clone();
    vm.set_event_hook(move |e| {
        l.lock().unwrap().push(match e {
            Event::Stop => "STOP".into(),
            Event::Resume => "RESUME".into(),
            other => format!("{other:?}"),
        })
    });
    vm.start().unwrap();
    log.lock().unwrap().clear();
    (vm, log)
}

fn hook(drive: &Drive, log: &Log) {
    let l = log.clone();
    drive.set_event_hook(move |e| {
        l.lock().unwrap().push(format!(
            "BLOCK_IO_ERROR {} {} {}",
            e.operation,
            e.action.qmp_name(),
            e.nospace
        ))
    });
}

fn events(log: &Log) -> Vec<String> {
    log.lock().unwrap().clone()
}

#[test]
fn werror_stop_parks_and_resume_resubmits_in_order() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "werror_stop") {
        return;
    }
    let (vm, log) = vm(&ctx);
    let img = image(1 << 20, &[]);
    let faulty = Arc::new(FaultInjector::new(
        FileBackend::open(&FileOptions::new(img.path())).unwrap(),
    ));
    // The 2nd write fails once with EIO, the 3rd twice.
    faulty.inject(
        FaultRule::new(Some(OpKind::Write), Errno::EIO)
            .range(8192, 4096)
            .times(1),
    );
    faulty.inject(
        FaultRule::new(Some(OpKind::Write), Errno::EIO)
            .range(16384, 4096)
            .times(2),
    );
    let faulty_ref = faulty.clone();
    let faulty = Arc::new(Recording {
        inner: faulty,
        writes: Mutex::new(Vec::new()),
    });
    let policy = ErrorPolicy {
        rerror: ErrorAction::Report,
        werror: ErrorAction::Stop,
    };
    let drive = Drive::new("disk0", "node0", faulty.clone(), policy, Some(vm.clone()));
    hook(&drive, &log);
    let ram = ram(1 << 20);
    let mem = DmaMemory::new(ram.clone());
    let data = pattern(21, 16384);
    poke(&ram, 0, &data);
    let mut results = Vec::new();
    for (i, offset) in [0u64, 8192, 16384].into_iter().enumerate() {
        let (r, done) = recorder();
        drive.dma(
            &ctx,
            &mem,
            DmaDirection::Write,
            offset,
            sg(&[(i as u64 * 4096, 4096)]),
            done,
        );
        results.push(r);
    }
    // Errors on two requests: both park; the VM stops once (the first request wins).
    run_until(&ctx, || {
        vm.state() == RunState::IoError && drive.parked() == 2 && !results[0].borrow().is_empty()
    });
    assert_eq!(*results[0].borrow(), vec![Ok(4096)]);
    assert!(
        results[1].borrow().is_empty() && results[2].borrow().is_empty(),
        "parked, not completed"
    );
    assert_eq!(drive.io_status(), IoStatus::Failed);
    let ev = events(&log);
    assert_eq!(ev[0], "BLOCK_IO_ERROR write stop false", "{ev:?}");
    assert!(
        ev.iter().position(|e| e == "STOP").unwrap() > 0,
        "BLOCK_IO_ERROR precedes STOP: {ev:?}"
    );

    // cont: the handler only schedules the BH; request 3 fails again and stops again.
    vm.start().unwrap();
    assert_eq!(drive.io_status(), IoStatus::Ok, "cont resets the io-status");
    run_until(&ctx, || {
        !results[1].borrow().is_empty() && drive.parked() == 1 && vm.state() == RunState::IoError
    });
    assert_eq!(*results[1].borrow(), vec![Ok(4096)]);
    assert!(results[2].borrow().is_empty());
    vm.start().unwrap();
    run_until(&ctx, || !results[2].borrow().is_empty());
    assert_eq!(*results[2].borrow(), vec![Ok(4096)]);
    assert_eq!(vm.state(), RunState::Running);
    assert_eq!(drive.parked(), 0);
    let ev = events(&log);
    assert_eq!(
        ev,
        [
            "BLOCK_IO_ERROR write stop false",
            "BLOCK_IO_ERROR write stop false",
            "STOP",
            "RESUME",
            "BLOCK_IO_ERROR write stop false",
            "STOP",
            "RESUME",
        ],
        "events in order"
    );
    // Data intact.
    let file = std::fs::read(img.path()).unwrap();
    assert_eq!(file[..4096], data[..4096]);
    assert_eq!(file[8192..12288], data[4096..8192]);
    assert_eq!(file[16384..20480], data[8192..12288]);
    assert_eq!(faulty_ref.injected(), 3);
    // Submission order: the first round, then the parked ones in their original order.
    assert_eq!(
        *faulty.writes.lock().unwrap(),
        [0, 8192, 16384, 8192, 16384, 16384]
    );
}

#[test]
fn report_ignore_and_enospc_actions() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "report_ignore_enospc") {
        return;
    }
    let (vm, log) = vm(&ctx);
    let img = image(1 << 20, &[]);
    let faulty = Arc::new(FaultInjector::new(
        FileBackend::open(&FileOptions::new(img.path())).unwrap(),
    ));
    let mem = DmaMemory::new(ram(1 << 20));
    let run = |drive: &Drive, dir: DmaDirection| {
        let (r, done) = recorder();
        drive.dma(&ctx, &mem, dir, 0, sg(&[(0, 512)]), done);
        run_until(&ctx, || !r.borrow().is_empty());
        r.borrow()[0]
    };
    // Defaults: rerror=report, werror=enospc.
    let drive = Drive::new(
        "d",
        "n",
        faulty.clone(),
        ErrorPolicy::default(),
        Some(vm.clone()),
    );
    hook(&drive, &log);
    faulty.inject(FaultRule::new(Some(OpKind::Read), Errno::EIO).times(1));
    assert_eq!(run(&drive, DmaDirection::Read), Err(Errno::EIO));
    faulty.inject(FaultRule::new(Some(OpKind::Write), Errno::EIO).times(1));
    assert_eq!(
        run(&drive, DmaDirection::Write),
        Err(Errno::EIO),
        "enospc reports EIO"
    );
    assert_eq!(vm.state(), RunState::Running);
    assert_eq!(
        events(&log),
        [
            "BLOCK_IO_ERROR read report false",
            "BLOCK_IO_ERROR write report false"
        ]
    );
    log.lock().unwrap().clear();
    // ignore: success.
    let ignore = ErrorPolicy {
        rerror: ErrorAction::Ignore,
        werror: ErrorAction::Ignore,
    };
    let drive = Drive::new("d", "n", faulty.clone(), ignore, Some(vm.clone()));
    hook(&drive, &log);
    faulty.inject(FaultRule::new(None, Errno::EIO).times(2));
    assert_eq!(run(&drive, DmaDirection::Read), Ok(512));
    assert_eq!(run(&drive, DmaDirection::Write), Ok(512));
    assert_eq!(
        events(&log),
        [
            "BLOCK_IO_ERROR read ignore false",
            "BLOCK_IO_ERROR write ignore false"
        ]
    );
    log.lock().unwrap().clear();
    // enospc + ENOSPC: stop.
    let drive = Drive::new(
        "d",
        "n",
        faulty.clone(),
        ErrorPolicy::default(),
        Some(vm.clone()),
    );
    hook(&drive, &log);
    faulty.inject(FaultRule::new(Some(OpKind::Write), Errno::ENOSPC).times(1));
    let (r, done) = recorder();
    drive.dma(&ctx, &mem, DmaDirection::Write, 0, sg(&[(0, 512)]), done);
    run_until(&ctx, || vm.state() == RunState::IoError);
    assert_eq!(drive.io_status(), IoStatus::NoSpace);
    assert!(r.borrow().is_empty());
    vm.start().unwrap();
    run_until(&ctx, || !r.borrow().is_empty());
    assert_eq!(*r.borrow(), vec![Ok(512)]);
    assert_eq!(
        events(&log),
        ["BLOCK_IO_ERROR write stop true", "STOP", "RESUME"]
    );
    // Flush errors follow werror too.
    let stop = ErrorPolicy {
        rerror: ErrorAction::Report,
        werror: ErrorAction::Stop,
    };
    let drive = Drive::new("d", "n", faulty.clone(), stop, Some(vm.clone()));
    faulty.inject(FaultRule::new(Some(OpKind::Flush), Errno::EIO).times(1));
    let (r, done) = recorder();
    drive.op(&ctx, || BlockOp::Flush, done);
    run_until(&ctx, || vm.state() == RunState::IoError);
    vm.start().unwrap();
    run_until(&ctx, || !r.borrow().is_empty());
    assert_eq!(*r.borrow(), vec![Ok(0)]);
}

#[test]
fn cancel_a_parked_request() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "cancel_parked") {
        return;
    }
    let (vm, _log) = vm(&ctx);
    let img = image(1 << 20, &[]);
    let faulty = Arc::new(FaultInjector::new(
        FileBackend::open(&FileOptions::new(img.path())).unwrap(),
    ));
    faulty.inject(FaultRule::new(Some(OpKind::Write), Errno::EIO).times(1));
    let stop = ErrorPolicy {
        rerror: ErrorAction::Report,
        werror: ErrorAction::Stop,
    };
    let drive = Drive::new("d", "n", faulty.clone(), stop, Some(vm.clone()));
    let mem = DmaMemory::new(ram(1 << 20));
    let (r, done) = recorder();
    let req = drive.dma(&ctx, &mem, DmaDirection::Write, 0, sg(&[(0, 512)]), done);
    run_until(&ctx, || req.is_parked() && vm.state() == RunState::IoError);
    req.cancel();
    run_until(&ctx, || !r.borrow().is_empty());
    vm.start().unwrap();
    settle(&ctx);
    assert_eq!(
        *r.borrow(),
        vec![Err(Errno::ECANCELED)],
        "once, and not resubmitted"
    );
}

/// A real ENOSPC from a size-limited tmpfs; resume after the file system grows.
#[test]
fn real_enospc_from_a_small_tmpfs() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "real_enospc") {
        return;
    }
    let dir = tempfile::tempdir_in(env_tmp()).unwrap();
    let mnt = dir.path();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(mnt)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!(
            "SKIPPED real_enospc_from_a_small_tmpfs: cannot mount a tmpfs (needs root); the real-ENOSPC case did NOT run"
        );
        return;
    }
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0)
                .status();
        }
    }
    let _unmount = Unmount(mnt);
    // A 1 MiB sparse image on a 256 KiB file system.
    let path = mnt.join("disk.img");
    std::fs::File::create(&path)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let (vm, log) = vm(&ctx);
    let backend = Arc::new(FileBackend::open(&FileOptions::new(&path)).unwrap());
    let drive = Drive::new(
        "disk0",
        "node0",
        backend.clone(),
        ErrorPolicy::default(),
        Some(vm.clone()),
    );
    hook(&drive, &log);
    let ram = ram(1 << 20);
    let mem = DmaMemory::new(ram.clone());
    let data = pattern(33, 512 * 1024);
    poke(&ram, 0, &data);
    let (r, done) = recorder();
    drive.dma(
        &ctx,
        &mem,
        DmaDirection::Write,
        0,
        sg(&[(0, 512 * 1024)]),
        done,
    );
    run_until(&ctx, || {
        vm.state() == RunState::IoError || !r.borrow().is_empty()
    });
    assert!(
        r.borrow().is_empty(),
        "the write must hit ENOSPC: {:?}",
        r.borrow()
    );
    assert_eq!(drive.io_status(), IoStatus::NoSpace);
    assert_eq!(events(&log), ["BLOCK_IO_ERROR write stop true", "STOP"]);
    // The administrator grows the file system, then `cont`.
    let grown = std::process::Command::new("mount")
        .args(["-o", "remount,size=4m"])
        .arg(mnt)
        .status()
        .unwrap();
    assert!(grown.success());
    vm.start().unwrap();
    run_until(&ctx, || !r.borrow().is_empty());
    assert_eq!(*r.borrow(), vec![Ok(512 * 1024)]);
    // Fsync and compare.
    let (f, done) = recorder();
    drive.op(&ctx, || BlockOp::Flush, done);
    run_until(&ctx, || !f.borrow().is_empty());
    assert_eq!(*f.borrow(), vec![Ok(0)]);
    let file = std::fs::read(&path).unwrap();
    assert_eq!(
        sha(&file[..512 * 1024]),
        sha(&data),
        "data intact after the restart"
    );
    assert_eq!(
        events(&log),
        ["BLOCK_IO_ERROR write stop true", "STOP", "RESUME"]
    );
    let _ = Duration::ZERO;
    let _ = backend.info();
}

/// A backend whose submissions fail at once (the ring refuses them).
struct Refusing(block_dma::BackendInfo);

impl BlockBackend for Refusing {
    fn info(&self) -> &block_dma::BackendInfo {
        &self.0
    }
    fn submit(
        &self,
        _: &AioContext,
        _: BlockOp,
        _: block_dma::Done,
    ) -> Result<block_dma::Ticket, Errno> {
        Err(Errno::EIO)
    }
    fn cancel(&self, _: &AioContext, _: block_dma::Ticket) {}
}

/// Review finding: a DMA that fails inside `dma_rw` parks the request before the drive
/// stores its handle; a cancel must still find the parked request and complete it.
#[test]
fn a_request_that_fails_at_submit_parks_and_can_be_cancelled() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "fails_at_submit") {
        return;
    }
    let (vm, log) = vm(&ctx);
    let info = block_dma::BackendInfo {
        size: 1 << 20,
        read_only: false,
        request_alignment: 1,
        memory_alignment: 1,
        discard: false,
        write_zeroes: false,
        direct: false,
    };
    let stop = ErrorPolicy {
        rerror: ErrorAction::Stop,
        werror: ErrorAction::Stop,
    };
    let drive = Drive::new("d", "n", Arc::new(Refusing(info)), stop, Some(vm.clone()));
    hook(&drive, &log);
    let mem = DmaMemory::new(ram(1 << 20));
    let (r, done) = recorder();
    let req = drive.dma(&ctx, &mem, DmaDirection::Write, 0, sg(&[(0, 512)]), done);
    run_until(&ctx, || req.is_parked() && vm.state() == RunState::IoError);
    req.cancel();
    run_until(&ctx, || !r.borrow().is_empty());
    settle(&ctx);
    assert_eq!(*r.borrow(), vec![Err(Errno::ECANCELED)]);
}

/// Review finding: a buffer outside guest memory is the guest's error: it is reported,
/// never stops the VM, and emits no BLOCK_IO_ERROR, whatever werror/rerror say.
#[test]
fn a_bad_guest_address_is_reported_not_a_reason_to_stop() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "bad_guest_address") {
        return;
    }
    let (vm, log) = vm(&ctx);
    let img = image(1 << 20, &[]);
    let backend = Arc::new(FileBackend::open(&FileOptions::new(img.path())).unwrap());
    let stop = ErrorPolicy {
        rerror: ErrorAction::Stop,
        werror: ErrorAction::Stop,
    };
    let drive = Drive::new("d", "n", backend, stop, Some(vm.clone()));
    hook(&drive, &log);
    let mem = DmaMemory::new(ram(1 << 20));
    for dir in [DmaDirection::Read, DmaDirection::Write] {
        let (r, done) = recorder();
        drive.dma(&ctx, &mem, dir, 0, sg(&[(1 << 40, 512)]), done);
        run_until(&ctx, || !r.borrow().is_empty());
        assert_eq!(*r.borrow(), vec![Err(Errno::EFAULT)]);
    }
    settle(&ctx);
    assert_eq!(vm.state(), RunState::Running);
    assert!(events(&log).is_empty(), "{:?}", events(&log));
}

/// Review finding: the first error's io-status sticks (QEMU).
#[test]
fn the_first_io_status_sticks() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "io_status_sticks") {
        return;
    }
    let (vm, _log) = vm(&ctx);
    let img = image(1 << 20, &[]);
    let faulty = Arc::new(FaultInjector::new(
        FileBackend::open(&FileOptions::new(img.path())).unwrap(),
    ));
    faulty.inject(FaultRule::new(Some(OpKind::Write), Errno::ENOSPC).times(1));
    faulty.inject(FaultRule::new(Some(OpKind::Write), Errno::EIO).times(1));
    let stop = ErrorPolicy {
        rerror: ErrorAction::Report,
        werror: ErrorAction::Stop,
    };
    let drive = Drive::new("d", "n", faulty.clone(), stop, Some(vm.clone()));
    let mem = DmaMemory::new(ram(1 << 20));
    let (_r1, d1) = recorder();
    drive.dma(&ctx, &mem, DmaDirection::Write, 0, sg(&[(0, 512)]), d1);
    let (_r2, d2) = recorder();
    drive.dma(&ctx, &mem, DmaDirection::Write, 512, sg(&[(512, 512)]), d2);
    run_until(&ctx, || drive.parked() == 2);
    assert_eq!(drive.io_status(), IoStatus::NoSpace);
    // A rule that may fire zero times never fires.
    faulty.inject(FaultRule::new(None, Errno::EIO).times(0));
    let _ = vm;
}
