//! A byte-driven guest for the IDE controller: register writes and reads, data port
//! traffic, ATAPI packets, bus-master programming and PRD tables in guest memory,
//! host medium changes and resets, in any order. Shared by the cargo-fuzz target and
//! `tests/hostile.rs`. Whatever the input, nothing may panic, and afterwards a reset
//! channel still answers IDENTIFY.

use std::io::Write;
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

/// Runs `data` against a fresh controller. Returns false when the environment has no
/// io_uring (nothing was checked).
pub(crate) fn run(data: &[u8]) -> bool {
    let Ok(ctx) = AioContext::new() else {
        return false;
    };
    if !ctx.supports_io_uring_ops() {
        return false;
    }
    let Ok(mut disk) = tempfile::NamedTempFile::new() else {
        return false;
    };
    let Ok(mut iso) = tempfile::NamedTempFile::new() else {
        return false;
    };
    if disk.write_all(&[0x11; 64 * 1024]).is_err() || iso.write_all(&[0x22; 32 * 2048]).is_err() {
        return false;
    }
    let ram = RamList::new();
    let Ok(block) = RamBlock::new(
        "ram",
        GuestAddress(0),
        1 << 20,
        Backing::Anonymous { huge_pages: false },
    ) else {
        return false;
    };
    if ram.add(block).is_err() {
        return false;
    }
    let (Some(d0), Some(c0), Some(c1), Some(spare)) = (
        drive(&disk, "hd", false),
        drive(&iso, "cd0", true),
        drive(&iso, "cd1", true),
        drive(&iso, "spare", true),
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
    settle(&ctx);
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
    settle(&ctx);
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
