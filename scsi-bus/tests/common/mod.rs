//! Helpers for the integration tests: guest RAM, a disk on a temporary image, and a
//! synchronous way to run one command.
#![allow(dead_code, unreachable_pub)]

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aio_context::AioContext;
use block_dma::{BlockBackend, DmaMemory, Drive, ErrorPolicy, FileBackend, FileOptions, SgList};
use ram_block::{Backing, RamBlock, RamList};
use scsi::{DataBuffer, DataDirection, HdOptions, ScsiBus, ScsiHd, ScsiRequest, ScsiResponse};
use vm_memory::{Bytes, GuestAddress};

/// Where data buffers start in guest RAM.
pub const BUF: u64 = 0x10000;
/// Guest RAM size.
pub const RAM: u64 = 8 << 20;

/// Guest RAM: one memfd block at 0.
pub fn ram() -> RamList {
    let ram = RamList::new();
    ram.add(
        RamBlock::new(
            "ram",
            GuestAddress(0),
            RAM,
            Backing::Memfd { huge_pages: false },
        )
        .unwrap(),
    )
    .unwrap();
    ram
}

/// Whether io_uring works here; prints a loud SKIPPED line if not.
pub fn have_uring(ctx: &AioContext, test: &str) -> bool {
    if ctx.supports_io_uring_ops() {
        return true;
    }
    eprintln!("SKIPPED {test}: io_uring operations are not available on this kernel");
    false
}

/// A temporary raw image of `size` bytes.
pub fn image(size: u64) -> tempfile::NamedTempFile {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&dir).unwrap();
    let f = tempfile::NamedTempFile::new_in(dir).unwrap();
    f.as_file().set_len(size).unwrap();
    f
}

/// A drive over `image`.
pub fn drive(image: &tempfile::NamedTempFile) -> Drive {
    let backend = FileBackend::open(&FileOptions::new(image.path())).unwrap();
    drive_over(Arc::new(backend), ErrorPolicy::default(), None)
}

/// A drive over `backend`.
pub fn drive_over(
    backend: Arc<dyn BlockBackend>,
    policy: ErrorPolicy,
    vm: Option<runstate::RunStateMachine>,
) -> Drive {
    Drive::new("disk0", "node0", backend, policy, vm)
}

/// A disk with options `opts`.
pub fn disk(id: &str, drive: Drive, opts: HdOptions) -> Box<ScsiHd> {
    Box::new(ScsiHd::new(id, drive, opts).unwrap())
}

/// Runs commands against one bus in one context.
pub struct Harness {
    pub ctx: AioContext,
    pub ram: RamList,
    pub bus: ScsiBus,
}

impl Harness {
    pub fn new() -> Harness {
        Harness {
            ctx: AioContext::new().unwrap(),
            ram: ram(),
            bus: ScsiBus::root("scsi0.0", |_| {}),
        }
    }

    pub fn buffer(&self, dir: DataDirection, len: u64) -> DataBuffer {
        let sg: SgList = if len == 0 {
            SgList::new()
        } else {
            [(BUF, len)].into_iter().collect()
        };
        DataBuffer {
            mem: DmaMemory::new(self.ram.clone()),
            sg,
            dir,
        }
    }

    pub fn poke(&self, data: &[u8]) {
        self.ram
            .memory()
            .write_slice(data, GuestAddress(BUF))
            .unwrap();
    }

    pub fn peek(&self, len: usize) -> Vec<u8> {
        let mut v = vec![0; len];
        self.ram
            .memory()
            .read_slice(&mut v, GuestAddress(BUF))
            .unwrap();
        v
    }

    /// Runs `cdb` on target/lun with a buffer of `len` bytes in direction `dir` and
    /// waits for it; returns the response and the data-in bytes moved.
    pub fn run_on(
        &self,
        target: u16,
        lun: u16,
        cdb: &[u8],
        dir: DataDirection,
        len: u64,
    ) -> (ScsiResponse, Vec<u8>) {
        if dir == DataDirection::FromDevice && len > 0 {
            self.poke(&vec![0xa5; len as usize]);
        }
        let req = ScsiRequest {
            cdb: cdb.into(),
            data: self.buffer(dir, len),
        };
        let out: Rc<RefCell<Option<ScsiResponse>>> = Rc::default();
        let o = out.clone();
        self.bus.execute(
            &self.ctx,
            target,
            lun,
            req,
            scsi::ScsiDone::new(move |r| *o.borrow_mut() = Some(r)),
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while out.borrow().is_none() {
            assert!(Instant::now() < deadline, "command {cdb:02x?} hung");
            self.ctx.poll(true);
        }
        let resp = out.take().unwrap();
        let data = if dir == DataDirection::FromDevice {
            self.peek(resp.transferred as usize)
        } else {
            Vec::new()
        };
        (resp, data)
    }

    /// [`run_on`](Self::run_on) for target 0 LUN 0, data-in.
    pub fn data_in(&self, cdb: &[u8], len: u64) -> (ScsiResponse, Vec<u8>) {
        self.run_on(0, 0, cdb, DataDirection::FromDevice, len)
    }

    /// Runs a data-out command for target 0 LUN 0 with `data`.
    pub fn data_out(&self, cdb: &[u8], data: &[u8]) -> ScsiResponse {
        self.poke(data);
        self.run_on(0, 0, cdb, DataDirection::ToDevice, data.len() as u64)
            .0
    }

    /// Runs a command without data for target 0 LUN 0.
    pub fn no_data(&self, cdb: &[u8]) -> ScsiResponse {
        self.run_on(0, 0, cdb, DataDirection::None, 0).0
    }

    /// Clears the power-on unit attention of target 0 LUN 0.
    pub fn clear_ua(&self) {
        let r = self.no_data(&[0; 6]);
        assert_eq!(r.sense(), Some(scsi::Sense::POWER_ON_RESET));
    }
}

/// READ(10)/WRITE(10) CDB.
pub fn rw10(op: u8, lba: u32, blocks: u16) -> [u8; 10] {
    let mut c = [0u8; 10];
    c[0] = op;
    c[2..6].copy_from_slice(&lba.to_be_bytes());
    c[7..9].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// A 16-byte CDB with a 64-bit LBA and a 32-bit length (READ/WRITE/WRITE SAME(16)).
pub fn cdb16(op: u8, flags: u8, lba: u64, blocks: u32) -> [u8; 16] {
    let mut c = [0u8; 16];
    c[0] = op;
    c[1] = flags;
    c[2..10].copy_from_slice(&lba.to_be_bytes());
    c[10..14].copy_from_slice(&blocks.to_be_bytes());
    c
}

/// A deterministic byte pattern.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}
