//! A test rig: guest RAM, an IDE controller on an AioContext, images in temp files,
//! and port helpers that act as the guest.
#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aio_context::AioContext;
use block_dma::{BlockBackend, DmaMemory, Drive, ErrorPolicy, FileBackend, FileOptions};
use ide::{IdeController, IdeDevice};
use io_bus::BusDevice;
use ram_block::{Backing, RamBlock, RamList};
use vm_memory::{Bytes, GuestAddress};

/// Records interrupt line levels.
#[derive(Default)]
pub struct Irqs(pub Mutex<Vec<(u32, bool)>>);

impl pci::IrqLine for Irqs {
    fn set_level(&self, gsi: u32, level: bool) {
        self.0.lock().unwrap().push((gsi, level));
    }
}

impl Irqs {
    /// The current level of `gsi`.
    pub fn level(&self, gsi: u32) -> bool {
        self.0
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(g, _)| *g == gsi)
            .is_some_and(|(_, l)| *l)
    }
}

pub const RAM: u64 = 4 << 20;

/// A deterministic byte pattern.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

pub fn image(data: &[u8]) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(data).unwrap();
    f.flush().unwrap();
    f
}

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

pub fn drive_on(backend: Arc<dyn BlockBackend>, name: &str) -> Drive {
    Drive::new(name, name, backend, ErrorPolicy::default(), None)
}

pub fn file_drive(f: &tempfile::NamedTempFile, name: &str, read_only: bool) -> Drive {
    let b = FileBackend::open(&FileOptions::new(f.path()).read_only(read_only)).unwrap();
    drive_on(Arc::new(b), name)
}

/// Whether io_uring works here; prints a loud SKIPPED line if not.
pub fn have_uring(ctx: &AioContext, test: &str) -> bool {
    if ctx.supports_io_uring_ops() {
        return true;
    }
    eprintln!("SKIPPED {test}: io_uring operations are not available on this kernel");
    false
}

pub struct Rig {
    pub ctx: AioContext,
    pub ram: RamList,
    pub ide: IdeController,
    pub irqs: Arc<Irqs>,
    pub cmd: [Arc<dyn BusDevice>; 2],
    pub ctl: [Arc<dyn BusDevice>; 2],
    pub bm: Arc<dyn BusDevice>,
}

impl Rig {
    pub fn new(ctx: AioContext, mem: DmaMemory, devices: [[Option<IdeDevice>; 2]; 2]) -> Rig {
        let irqs = Arc::new(Irqs::default());
        let ram = mem.ram().clone();
        let ide = IdeController::new(mem, irqs.clone(), ctx.handle(), devices).unwrap();
        Rig {
            cmd: [ide.command_block(0), ide.command_block(1)],
            ctl: [ide.control_block(0), ide.control_block(1)],
            bm: ide.bus_master(),
            ctx,
            ram,
            ide,
            irqs,
        }
    }

    /// A rig with one disk (channel 0, unit 0) on `img`.
    pub fn disk(ctx: AioContext, img: &tempfile::NamedTempFile) -> Rig {
        let ram = ram();
        let d = file_drive(img, "disk0", false);
        Rig::new(
            ctx,
            DmaMemory::new(ram),
            [[Some(IdeDevice::disk("disk0", d)), None], [None, None]],
        )
    }

    pub fn outb(&self, ch: usize, reg: u64, v: u8) {
        self.cmd[ch].write(reg, &[v]);
    }

    pub fn inb(&self, ch: usize, reg: u64) -> u8 {
        let mut b = [0u8];
        self.cmd[ch].read(reg, &mut b);
        b[0]
    }

    pub fn alt(&self, ch: usize) -> u8 {
        let mut b = [0u8];
        self.ctl[ch].read(0, &mut b);
        b[0]
    }

    pub fn ctrl(&self, ch: usize, v: u8) {
        self.ctl[ch].write(0, &[v]);
    }

    pub fn bm_out(&self, off: u64, v: u8) {
        self.bm.write(off, &[v]);
    }

    pub fn bm_in(&self, off: u64) -> u8 {
        let mut b = [0u8];
        self.bm.read(off, &mut b);
        b[0]
    }

    pub fn bm_prd(&self, ch: usize, table: u32) {
        self.bm.write(8 * ch as u64 + 4, &table.to_le_bytes());
    }

    /// Runs the event loop until the alternate status has BSY clear (and, for DMA,
    /// the bus master is no longer active or has interrupted).
    pub fn settle(&self, ch: usize) -> u8 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            while self.ctx.poll(false) {}
            let st = self.alt(ch);
            let bm = self.bm_in(8 * ch as u64 + 2);
            let dma_busy = bm & 1 != 0 && bm & 4 == 0 && st & 0x08 != 0;
            if st & 0x80 == 0 && !dma_busy {
                return st;
            }
            assert!(Instant::now() < deadline, "hang: status {st:#x} bm {bm:#x}");
            self.ctx.poll(true);
        }
    }

    /// Runs the event loop for a while without waiting for a condition.
    pub fn spin(&self, rounds: usize) {
        for _ in 0..rounds {
            while self.ctx.poll(false) {}
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Sets up an LBA28 command's task file on channel `ch`, unit `unit`.
    pub fn task28(&self, ch: usize, unit: u8, lba: u32, count: u8) {
        self.outb(ch, 6, 0xe0 | unit << 4 | ((lba >> 24) as u8 & 0x0f));
        self.outb(ch, 2, count);
        self.outb(ch, 3, lba as u8);
        self.outb(ch, 4, (lba >> 8) as u8);
        self.outb(ch, 5, (lba >> 16) as u8);
    }

    /// Sets up an LBA48 command's task file.
    pub fn task48(&self, ch: usize, unit: u8, lba: u64, count: u16) {
        self.outb(ch, 6, 0x40 | unit << 4);
        self.outb(ch, 2, (count >> 8) as u8);
        self.outb(ch, 3, (lba >> 24) as u8);
        self.outb(ch, 4, (lba >> 32) as u8);
        self.outb(ch, 5, (lba >> 40) as u8);
        self.outb(ch, 2, count as u8);
        self.outb(ch, 3, lba as u8);
        self.outb(ch, 4, (lba >> 8) as u8);
        self.outb(ch, 5, (lba >> 16) as u8);
    }

    /// Reads `len` bytes from the data port, 16 bits at a time.
    pub fn read_data(&self, ch: usize, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        for _ in 0..len / 2 {
            let mut w = [0u8; 2];
            self.cmd[ch].read(0, &mut w);
            out.extend_from_slice(&w);
        }
        out
    }

    /// Writes `data` to the data port, 16 bits at a time.
    pub fn write_data(&self, ch: usize, data: &[u8]) {
        for w in data.chunks(2) {
            self.cmd[ch].write(0, w);
        }
    }

    pub fn poke(&self, addr: u64, data: &[u8]) {
        self.ram
            .memory()
            .write_slice(data, GuestAddress(addr))
            .unwrap();
    }

    pub fn peek(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        self.ram
            .memory()
            .read_slice(&mut v, GuestAddress(addr))
            .unwrap();
        v
    }

    /// Writes a PRD table at `at`: (address, count, end-of-table).
    pub fn prd(&self, at: u64, entries: &[(u32, u16, bool)]) {
        for (i, (addr, count, eot)) in entries.iter().enumerate() {
            let v = u64::from(*addr) | u64::from(*count) << 32 | u64::from(*eot) << 63;
            self.poke(at + 8 * i as u64, &v.to_le_bytes());
        }
    }
}

/// The 16-bit word `i` of an IDENTIFY block.
pub fn word(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[2 * i], b[2 * i + 1]])
}
