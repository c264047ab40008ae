//! A byte-driven guest for the IDE controller: register writes and reads, data port
//! traffic, ATAPI packets, bus-master programming and PRD tables in guest memory,
//! host medium changes and resets, in any order. Shared by the cargo-fuzz target and
//! `tests/hostile.rs`. Whatever the input, nothing may panic, and afterwards a reset
//! channel still answers IDENTIFY.

use std::io::Write;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use aio_context::AioContext;
use block_dma::{DmaMemory, Drive, ErrorPolicy, FileBackend, FileOptions};
use ide::{IdeController, IdeDevice};
use ram_block::{Backing, RamBlock, RamList};
use vm_memory::{Bytes, GuestAddress};

struct NoIrq;
impl pci::IrqLine for NoIrq {
    fn set_level(&self, _: u32, _: bool) {}
}

fn drive(img: &tempfile::NamedTempFile, name: &str, read_only: bool) -> Option<Drive> {
    let b = FileBackend::open(&FileOptions::new(img.path()).read_only(read_only)).ok()?;
    Some(Drive::new(
        name,
        name,
        Arc::new(b),
        ErrorPolicy::default(),
        None,
    ))
}

/// Pulls bytes off the input.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn bytes<const N: usize>(&mut self) -> Option<[u8; N]> {
        let head = self.0.get(..N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(head);
        self.0 = &self.0[N..];
        Some(out)
    }
}

/// The disk image's size and fill byte, and the CD image's (read-only: never changes).
const DISK: (usize, u8) = (64 * 1024, 0x11);
const ISO: (usize, u8) = (32 * 2048, 0x22);
/// Guest RAM: one block at 0 (PRD entries land anywhere in its first 512 KiB).
const RAM_SIZE: usize = 1 << 20;

/// What every run shares, set up once per thread (an io_uring context, the image files
/// and guest RAM cost more to create than a run costs): each run starts from the same
/// state, which [`Shared::reset`] restores and checks.
struct Shared {
    ctx: AioContext,
    disk: tempfile::NamedTempFile,
    iso: tempfile::NamedTempFile,
    ram: RamList,
    zeros: Vec<u8>,
}

impl Shared {
    fn new() -> Option<Shared> {
        let ctx = AioContext::new().ok()?;
        if !ctx.supports_io_uring_ops() {
            return None;
        }
        let mut disk = tempfile::NamedTempFile::new().ok()?;
        let mut iso = tempfile::NamedTempFile::new().ok()?;
        disk.write_all(&[DISK.1; DISK.0]).ok()?;
        iso.write_all(&[ISO.1; ISO.0]).ok()?;
        let ram = RamList::new();
        let block = RamBlock::new(
            "ram",
            GuestAddress(0),
            RAM_SIZE as u64,
            Backing::Anonymous { huge_pages: false },
        )
        .ok()?;
        ram.add(block).ok()?;
        Some(Shared {
            ctx,
            disk,
            iso,
            ram,
            zeros: vec![0; RAM_SIZE],
        })
    }

    /// Puts the disk image and guest RAM back as a fresh run finds them, and checks
    /// that the last run left nothing behind (no I/O in flight, images intact).
    fn reset(&self) {
        assert_eq!(self.ctx.io_uring_ops_in_flight(), 0, "I/O left in flight");
        let disk = self.disk.as_file();
        disk.set_len(DISK.0 as u64).expect("the disk image resizes");
        disk.write_all_at(&[DISK.1; DISK.0], 0)
            .expect("the disk image rewrites");
        let iso_len = self.iso.as_file().metadata().map(|m| m.len()).ok();
        assert_eq!(iso_len, Some(ISO.0 as u64), "the read-only image changed");
        self.ram
            .memory()
            .write_slice(&self.zeros, GuestAddress(0))
            .expect("guest RAM is one block");
    }
}

/// Runs `data` against a fresh controller. Returns false when the environment has no
/// io_uring (nothing was checked).
pub(crate) fn run(data: &[u8]) -> bool {
    thread_local! {
        static SHARED: Option<Shared> = Shared::new();
    }
    SHARED.with(|shared| shared.as_ref().is_some_and(|s| run_on(s, data)))
}

fn run_on(shared: &Shared, data: &[u8]) -> bool {
    shared.reset();
    let Shared {
        ctx,
        disk,
        iso,
        ram,
        ..
    } = shared;
    let (Some(d0), Some(c0), Some(c1), Some(spare)) = (
        drive(disk, "hd", false),
        drive(iso, "cd0", true),
        drive(iso, "cd1", true),
        drive(iso, "spare", true),
    ) else {
        return false;
    };
    let Ok(ide) = IdeController::new(
        DmaMemory::new(ram.clone()),
        Arc::new(NoIrq),
        ctx.handle(),
        [
            [
                Some(IdeDevice::disk("hd", d0)),
                Some(IdeDevice::cdrom("cd0", Some(c0))),
            ],
            [Some(IdeDevice::cdrom("cd1", Some(c1))), None],
        ],
    ) else {
        return false;
    };
    let cmd = [ide.command_block(0), ide.command_block(1)];
    let ctl = [ide.control_block(0), ide.control_block(1)];
    let bm = ide.bus_master();
    let mut spare = Some(spare);
    let mut input = Input(data);
    let mut ops = 0;
    while let Some(op) = input.byte() {
        ops += 1;
        if ops > 4096 {
            break;
        }
        let ch = usize::from(op >> 7);
        match op & 0x0f {
            0 => {
                let Some([reg, v]) = input.bytes() else { break };
                cmd[ch].write(u64::from(reg % 7 + 1), &[v]);
            }
            1 => {
                let Some(reg) = input.byte() else { break };
                let mut b = [0u8];
                cmd[ch].read(u64::from(reg % 8), &mut b);
            }
            2 => {
                let Some(w) = input.bytes::<2>() else { break };
                cmd[ch].write(0, &w);
            }
            3 => {
                let Some(n) = input.byte() else { break };
                let mut w = [0u8; 4];
                for _ in 0..usize::from(n) * 4 {
                    cmd[ch].read(0, &mut w[..2]);
                }
                cmd[ch].read(0, &mut w);
            }
            4 => {
                let Some(v) = input.byte() else { break };
                ctl[ch].write(0, &[v]);
            }
            5 => {
                let Some([off, v]) = input.bytes() else { break };
                bm.write(u64::from(off % 20), &[v]);
            }
            6 => {
                let Some([off, v0, v1, v2]) = input.bytes() else {
                    break;
                };
                bm.write(u64::from(off % 16), &[v0, v1, v2, 0]);
            }
            7 => {
                // A PRD entry somewhere in (or just past) RAM.
                let Some(e) = input.bytes::<10>() else { break };
                let at = u64::from(u16::from_le_bytes([e[0], e[1]])) * 8;
                let mut entry = [0u8; 8];
                entry.copy_from_slice(&e[2..]);
                let _ = ram.memory().write_slice(&entry, GuestAddress(at));
            }
            8 => {
                let Some(pkt) = input.bytes::<12>() else {
                    break;
                };
                for w in pkt.chunks(2) {
                    cmd[ch].write(0, w);
                }
            }
            9 => {
                let Some(n) = input.byte() else { break };
                for _ in 0..=n % 8 {
                    ctx.poll(false);
                }
            }
            10 => {
                let Some(which) = input.byte() else { break };
                let id = if which & 1 == 0 { "cd0" } else { "cd1" };
                let force = which & 2 != 0;
                let _ = match (which & 4 != 0, spare.take()) {
                    (true, Some(s)) => ide.change_medium(id, s, force),
                    (_, s) => {
                        spare = s;
                        ide.eject(id, force)
                    }
                };
            }
            11 => ide.reset(),
            _ => {
                let mut b = [0u8; 4];
                ctl[ch].read(0, &mut b[..1]);
                bm.read(u64::from(op >> 4), &mut b);
            }
        }
    }
    // Drain what is in flight, then check that a reset disk answers IDENTIFY.
    settle(ctx);
    ctl[0].write(0, &[0x04]);
    ctl[0].write(0, &[0x00]);
    cmd[0].write(6, &[0xa0]);
    cmd[0].write(7, &[0xec]);
    let mut st = [0u8];
    cmd[0].read(7, &mut st);
    assert_eq!(
        st[0] & 0x89,
        0x08,
        "IDENTIFY after reset: status {:#x}",
        st[0]
    );
    // Finish in-flight I/O, so that nothing keeps this context's ring alive.
    ide.reset();
    settle(ctx);
    assert_eq!(
        ctx.io_uring_ops_in_flight(),
        0,
        "I/O in flight after a reset"
    );
    true
}

fn settle(ctx: &AioContext) {
    for _ in 0..10_000 {
        while ctx.poll(false) {}
        if ctx.io_uring_ops_in_flight() == 0 {
            return;
        }
        ctx.poll(true);
    }
}
