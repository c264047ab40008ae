//! Bus-master DMA at the register level: PRD tables walked from a fake guest memory
//! (multi-entry, odd sizes, 64 KiB entries, tables crossing a page, short and long
//! tables, regions and tables outside RAM), the status bits, the bounce fallback for a
//! region that is not RAM, and seed 002 in its IDE context: a DMA write that fails
//! with werror=stop is parked, resubmitted from a BH on `cont`, stops the VM again
//! without re-entering the notification, and completes once the backend recovers.

mod common;

use std::sync::{Arc, Mutex};

use aio_context::AioContext;
use block_dma::{
    DmaMemory, Drive, Errno, ErrorAction, ErrorPolicy, FaultInjector, FaultRule, FileBackend,
    FileOptions, MmioAccess, OpKind,
};
use common::*;
use ide::IdeDevice;
use runstate::{Event, RunStateMachine};

const DRDY: u8 = 0x40;
const DSC: u8 = 0x10;
const DRQ: u8 = 0x08;
const ERR: u8 = 0x01;
const BM_ACTIVE: u8 = 0x01;
const BM_ERROR: u8 = 0x02;
const BM_INT: u8 = 0x04;

const TABLE: u64 = 0x1000;

fn rig(test: &str) -> Option<(Rig, Vec<u8>, tempfile::NamedTempFile)> {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, test) {
        return None;
    }
    let data = pattern(11, 1 << 20);
    let img = image(&data);
    Some((Rig::disk(ctx, &img), data, img))
}

/// Issues READ DMA (EXT) of `count` sectors at `lba` and starts the bus master.
fn dma(r: &Rig, cmd: u8, lba: u64, count: u16, to_memory: bool) {
    r.bm_prd(0, TABLE as u32);
    // Clear Error and Interrupt, keeping the drive-DMA-capable bits (read-modify-write,
    // as drivers do).
    r.bm_out(2, r.bm_in(2) | BM_ERROR | BM_INT);
    r.task48(0, 0, lba, count);
    r.outb(0, 7, cmd);
    assert_eq!(r.alt(0), DRDY | DSC | DRQ, "waiting for the bus master");
    r.bm_out(0, if to_memory { 0x09 } else { 0x01 });
}

fn stop_bm(r: &Rig) {
    r.bm_out(0, 0x00);
}

#[test]
fn read_dma_ext_with_a_multi_entry_table_of_odd_sizes() {
    let Some((r, data, _)) = rig("read_dma_multi") else {
        return;
    };
    // 4 sectors = 2048 bytes in pieces of 0x300, 0x100, 0x2 and 0x3fe.
    r.prd(
        TABLE,
        &[
            (0x20000, 0x300, false),
            (0x30010, 0x100, false),
            (0x40000, 0x2, false),
            (0x50000, 0x3fe, true),
        ],
    );
    dma(&r, 0x25, 7, 4, true);
    let st = r.settle(0);
    assert_eq!(st, DRDY | DSC);
    assert!(r.irqs.level(14));
    let bm = r.bm_in(2);
    assert_eq!(
        bm & (BM_ACTIVE | BM_ERROR | BM_INT),
        BM_INT,
        "done: interrupt, inactive"
    );
    assert_eq!(bm & 0x20, 0x20, "drive 0 DMA capable");
    stop_bm(&r);
    let want = &data[7 * 512..11 * 512];
    let mut got = r.peek(0x20000, 0x300);
    got.extend(r.peek(0x30010, 0x100));
    got.extend(r.peek(0x40000, 0x2));
    got.extend(r.peek(0x50000, 0x3fe));
    assert_eq!(got, want);
}

#[test]
fn write_dma_with_a_zero_count_entry_moves_64k() {
    let Some((r, _, img)) = rig("write_dma_64k") else {
        return;
    };
    let new = pattern(4, 0x10000 + 0x200);
    r.poke(0x100000, &new[..0x10000]);
    r.poke(0x200000, &new[0x10000..]);
    r.prd(TABLE, &[(0x100000, 0, false), (0x200000, 0x200, true)]);
    dma(&r, 0xca, 100, 129, false);
    assert_eq!(r.settle(0), DRDY | DSC);
    assert_eq!(r.bm_in(2) & (BM_ACTIVE | BM_INT), BM_INT);
    let file = std::fs::read(img.path()).unwrap();
    assert_eq!(&file[100 * 512..229 * 512], &new[..]);
}

#[test]
fn a_table_crossing_a_page_and_a_region_crossing_64k() {
    let Some((r, data, _)) = rig("prd_cross_page") else {
        return;
    };
    // Entry 0 at 0x1ff8, entry 1 at 0x2000 (next page); entry 0's region crosses
    // the 64 KiB boundary at 0x30000.
    r.prd(0x1ff8, &[(0x2ff00, 0x200, false), (0x60000, 0x200, true)]);
    r.bm_prd(0, 0x1ff8);
    r.task28(0, 0, 1, 2);
    r.outb(0, 7, 0xc8);
    r.bm_out(0, 0x09);
    assert_eq!(r.settle(0), DRDY | DSC);
    assert_eq!(r.peek(0x2ff00, 0x200), &data[512..1024]);
    assert_eq!(r.peek(0x60000, 0x200), &data[1024..1536]);
}

#[test]
fn a_table_shorter_than_the_transfer_clears_active_without_interrupt() {
    let Some((r, _, _)) = rig("prd_short") else {
        return;
    };
    r.poke(0x20000, &[0xee; 1024]);
    r.prd(TABLE, &[(0x20000, 0x200, true)]);
    dma(&r, 0xc8, 0, 2, true);
    r.spin(5);
    let st = r.alt(0);
    assert_eq!(st & (DRQ | 0x80), 0, "no DRQ, not busy: {st:#x}");
    assert_eq!(
        r.bm_in(2) & (BM_ACTIVE | BM_INT),
        0,
        "PRD exhausted, no interrupt"
    );
    assert!(!r.irqs.level(14));
    assert_eq!(
        r.peek(0x20000, 1024),
        vec![0xee; 1024],
        "nothing transferred"
    );
}

#[test]
fn a_table_longer_than_the_transfer_interrupts_and_stays_active() {
    let Some((r, data, _)) = rig("prd_long") else {
        return;
    };
    r.prd(TABLE, &[(0x20000, 0x1000, true)]);
    dma(&r, 0xc8, 2, 1, true);
    assert_eq!(r.settle(0), DRDY | DSC);
    assert_eq!(r.bm_in(2) & (BM_ACTIVE | BM_INT), BM_ACTIVE | BM_INT);
    assert_eq!(r.peek(0x20000, 512), &data[1024..1536]);
    stop_bm(&r);
    assert_eq!(r.bm_in(2) & BM_ACTIVE, 0);
}

#[test]
fn regions_and_tables_outside_ram_set_the_error_bit_and_the_vmm_lives_on() {
    let Some((r, data, _)) = rig("prd_outside_ram") else {
        return;
    };
    // A region beyond RAM (no MMIO slow path): EFAULT.
    r.prd(TABLE, &[(0xfee0_0000, 0x200, true)]);
    dma(&r, 0xc8, 0, 1, true);
    let st = r.settle(0);
    assert_eq!(st & ERR, ERR);
    assert_eq!(r.inb(0, 1), 0x04, "ABRT");
    assert_eq!(
        r.bm_in(2) & (BM_ACTIVE | BM_ERROR | BM_INT),
        BM_ERROR | BM_INT
    );
    assert!(r.irqs.level(14));
    stop_bm(&r);
    // A PRD table pointer outside RAM.
    r.bm_out(2, BM_ERROR | BM_INT);
    r.bm_prd(0, 0xfff0_0000);
    r.task28(0, 0, 0, 1);
    r.outb(0, 7, 0xc8);
    r.bm_out(0, 0x09);
    assert_eq!(r.settle(0) & ERR, ERR);
    assert_eq!(r.bm_in(2) & BM_ERROR, BM_ERROR);
    stop_bm(&r);
    // The next good transfer works.
    r.prd(TABLE, &[(0x20000, 0x200, true)]);
    dma(&r, 0xc8, 3, 1, true);
    assert_eq!(r.settle(0), DRDY | DSC);
    assert_eq!(r.peek(0x20000, 512), &data[3 * 512..4 * 512]);
}

#[test]
fn the_bus_master_may_start_before_the_command() {
    let Some((r, data, _)) = rig("bm_first") else {
        return;
    };
    r.prd(TABLE, &[(0x20000, 0x200, true)]);
    r.bm_prd(0, TABLE as u32);
    r.bm_out(0, 0x09);
    assert_eq!(r.bm_in(2) & BM_ACTIVE, BM_ACTIVE);
    r.task28(0, 0, 9, 1);
    r.outb(0, 7, 0xc8);
    assert_eq!(r.settle(0), DRDY | DSC);
    assert_eq!(r.peek(0x20000, 512), &data[9 * 512..10 * 512]);
}

/// Non-RAM memory that accepts DMA (a device's MMIO window), recording writes.
#[derive(Default)]
struct Window(Mutex<Vec<(u64, Vec<u8>)>>);

impl MmioAccess for Window {
    fn read(&self, _addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        buf.fill(0x77);
        Ok(())
    }
    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Errno> {
        self.0.lock().unwrap().push((addr, buf.to_vec()));
        Ok(())
    }
}

#[test]
fn a_region_outside_ram_goes_through_the_bounce_buffer() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "bounce") {
        return;
    }
    let data = pattern(12, 64 * 1024);
    let img = image(&data);
    let window = Arc::new(Window::default());
    let mem = DmaMemory::new(ram()).with_mmio(window.clone());
    let d = file_drive(&img, "d", false);
    let r = Rig::new(
        ctx,
        mem,
        [[Some(IdeDevice::disk("d", d)), None], [None, None]],
    );
    r.prd(
        TABLE,
        &[(0x20000, 0x200, false), (0xe000_0000, 0x200, true)],
    );
    dma(&r, 0xc8, 4, 2, true);
    assert_eq!(r.settle(0), DRDY | DSC);
    assert_eq!(r.peek(0x20000, 512), &data[4 * 512..5 * 512]);
    let writes = window.0.lock().unwrap().clone();
    let bytes: Vec<u8> = writes.iter().flat_map(|(_, b)| b.clone()).collect();
    assert_eq!(writes[0].0, 0xe000_0000);
    assert_eq!(
        bytes,
        &data[5 * 512..6 * 512],
        "second sector through the bounce buffer"
    );
}

/// Seed 002 (QEMU 2075200b) in its original context: an IDE DMA write restarted
/// after werror=stop. The restart runs from a BH after `cont` returns, a restart
/// that fails again stops the VM again after the current notification round (every
/// handler sees RESUME before the second STOP, none sees a stop inside a start), and
/// the data is intact once the backend recovers.
#[test]
fn werror_stop_parks_the_dma_write_and_cont_restarts_it_from_a_bh() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "werror_restart") {
        return;
    }
    let vm = RunStateMachine::new(ctx.handle().bh_scheduler());
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let l = log.clone();
    vm.set_event_hook(move |e| {
        l.lock().unwrap().push(match e {
            Event::Stop => "STOP".into(),
            Event::Resume => "RESUME".into(),
            other => format!("{other:?}"),
        })
    });
    vm.start().unwrap();
    // Two handlers around the drive's (another device, like the seed's audio).
    for name in ["first", "last"] {
        let l = log.clone();
        vm.add_handler(if name == "first" { -10 } else { 10 }, move |running, _| {
            l.lock().unwrap().push(format!("{name}:{running}"));
        });
    }
    log.lock().unwrap().clear();

    let data = pattern(13, 1 << 20);
    let img = image(&data);
    let faulty = Arc::new(FaultInjector::new(
        FileBackend::open(&FileOptions::new(img.path())).unwrap(),
    ));
    faulty.inject(FaultRule::new(Some(OpKind::Write), Errno::EIO).times(2));
    let policy = ErrorPolicy {
        rerror: ErrorAction::Report,
        werror: ErrorAction::Stop,
    };
    let drive = Drive::new(
        "ide0-hd0",
        "node0",
        faulty.clone(),
        policy,
        Some(vm.clone()),
    );
    let l = log.clone();
    drive.set_event_hook(move |e| {
        l.lock().unwrap().push(format!(
            "BLOCK_IO_ERROR {} {}",
            e.operation,
            e.action.qmp_name()
        ))
    });
    let r = Rig::new(
        ctx,
        DmaMemory::new(ram()),
        [
            [Some(IdeDevice::disk("ide0-hd0", drive.clone())), None],
            [None, None],
        ],
    );
    let new = pattern(14, 8 * 512);
    r.poke(0x40000, &new);
    r.prd(TABLE, &[(0x40000, 0x1000, true)]);
    dma(&r, 0x35, 64, 8, false);
    r.spin(20);
    assert!(!vm.is_running(), "werror=stop stopped the VM");
    assert_eq!(faulty.injected(), 1);
    assert_eq!(
        r.alt(0),
        DRDY | DSC | DRQ,
        "the command is still in progress"
    );
    assert_eq!(
        r.bm_in(2) & (BM_ACTIVE | BM_INT),
        BM_ACTIVE,
        "DMA still active"
    );
    assert!(!r.irqs.level(14));
    assert_eq!(drive.parked(), 1);

    // cont: the restart is not run inside the notification...
    vm.start().unwrap();
    assert_eq!(
        faulty.injected(),
        1,
        "no resubmission from inside the handler"
    );
    // ...but from a BH: it fails again and stops the VM again.
    r.spin(20);
    assert_eq!(faulty.injected(), 2);
    assert!(!vm.is_running(), "the second failure stopped the VM again");
    assert_eq!(drive.parked(), 1);

    // The backend recovers; the last cont completes the write.
    vm.start().unwrap();
    let st = r.settle(0);
    assert!(vm.is_running());
    assert_eq!(st, DRDY | DSC);
    assert!(r.irqs.level(14));
    assert_eq!(r.bm_in(2) & (BM_ACTIVE | BM_INT), BM_INT);
    let file = std::fs::read(img.path()).unwrap();
    assert_eq!(
        &file[64 * 512..72 * 512],
        &new[..],
        "data intact on the image"
    );
    assert_eq!(&file[..64 * 512], &data[..64 * 512]);
    assert_eq!(
        *log.lock().unwrap(),
        [
            "BLOCK_IO_ERROR write stop",
            "last:false",
            "first:false",
            "STOP",
            "RESUME",
            "first:true",
            "last:true",
            "BLOCK_IO_ERROR write stop",
            "last:false",
            "first:false",
            "STOP",
            "RESUME",
            "first:true",
            "last:true",
        ],
        "every handler sees every transition, in order"
    );
}

/// rerror/werror=report: the guest sees the failure as an aborted command (QEMU's
/// `ide_dma_error`); the bus master's Error bit stays clear (the memory was fine).
#[test]
fn a_reported_backend_error_aborts_the_command() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "reported_error") {
        return;
    }
    let img = image(&pattern(15, 1 << 20));
    let faulty = Arc::new(FaultInjector::new(
        FileBackend::open(&FileOptions::new(img.path())).unwrap(),
    ));
    faulty.inject(FaultRule::new(None, Errno::EIO).times(2));
    let drive = drive_on(faulty.clone(), "d");
    let r = Rig::new(
        ctx,
        DmaMemory::new(ram()),
        [[Some(IdeDevice::disk("d", drive)), None], [None, None]],
    );
    // A DMA write.
    r.prd(TABLE, &[(0x20000, 0x200, true)]);
    dma(&r, 0xca, 0, 1, false);
    assert_eq!(r.settle(0) & ERR, ERR);
    assert_eq!(r.inb(0, 1), 0x04);
    assert_eq!(r.bm_in(2) & (BM_ACTIVE | BM_ERROR | BM_INT), BM_INT);
    stop_bm(&r);
    // A PIO read.
    r.task28(0, 0, 0, 1);
    r.outb(0, 7, 0x20);
    assert_eq!(r.settle(0) & (ERR | DRQ), ERR);
    assert_eq!(faulty.injected(), 2);
    // And then the disk works again.
    r.outb(0, 7, 0x20);
    assert_eq!(r.settle(0), DRDY | DSC | DRQ);
}

/// Counts the flushes it passes on.
struct Flushes {
    inner: FileBackend,
    count: std::sync::atomic::AtomicU32,
}

impl block_dma::BlockBackend for Flushes {
    fn info(&self) -> &block_dma::BackendInfo {
        self.inner.info()
    }
    fn submit(
        &self,
        ctx: &AioContext,
        op: block_dma::BlockOp,
        done: block_dma::Done,
    ) -> Result<block_dma::Ticket, Errno> {
        if matches!(op, block_dma::BlockOp::Flush) {
            self.count
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        self.inner.submit(ctx, op, done)
    }
    fn cancel(&self, ctx: &AioContext, ticket: block_dma::Ticket) {
        self.inner.cancel(ctx, ticket)
    }
}

/// SET FEATURES 0x82 (write cache off): every write reaches the medium (a flush)
/// before the command completes; with the cache on, writes are not flushed.
#[test]
fn writes_are_flushed_when_the_write_cache_is_off() {
    let ctx = AioContext::new().unwrap();
    if !have_uring(&ctx, "write_through") {
        return;
    }
    let img = image(&pattern(16, 1 << 20));
    let backend = Arc::new(Flushes {
        inner: FileBackend::open(&FileOptions::new(img.path())).unwrap(),
        count: Default::default(),
    });
    let flushes = || backend.count.load(std::sync::atomic::Ordering::Relaxed);
    let r = Rig::new(
        ctx,
        DmaMemory::new(ram()),
        [
            [
                Some(IdeDevice::disk("d", drive_on(backend.clone(), "d"))),
                None,
            ],
            [None, None],
        ],
    );
    let pio_write = |lba: u32| {
        r.task28(0, 0, lba, 1);
        r.outb(0, 7, 0x30);
        r.write_data(0, &[0x5a; 512]);
        assert_eq!(r.settle(0), DRDY | DSC);
    };
    r.prd(TABLE, &[(0x20000, 0x200, true)]);
    pio_write(1);
    dma(&r, 0xca, 2, 1, false);
    assert_eq!(r.settle(0), DRDY | DSC);
    stop_bm(&r);
    assert_eq!(flushes(), 0, "write cache on: no flush");
    r.outb(0, 1, 0x82);
    r.outb(0, 7, 0xef);
    r.settle(0);
    pio_write(3);
    assert_eq!(flushes(), 1, "PIO write flushed");
    dma(&r, 0xca, 4, 1, false);
    assert_eq!(r.settle(0), DRDY | DSC);
    assert_eq!(r.bm_in(2) & (BM_ACTIVE | BM_INT), BM_INT);
    assert_eq!(flushes(), 2, "DMA write flushed");
    let file = std::fs::read(img.path()).unwrap();
    assert_eq!(&file[3 * 512..4 * 512], &[0x5a; 512][..]);
}
