//! cargo-fuzz target: the split virtqueue and virtio-blk request parsing, driven by a
//! hostile guest (`cargo +nightly fuzz run chains` in `virtio-blk/`).
//!
//! Guest memory is two RAM blocks with a hole between them (`0..64K`, `128K..192K`);
//! the input places the queue's rings anywhere (in RAM, in the hole, past the end),
//! then runs ops: poke bytes, write descriptors (any address, length, flags, `next`:
//! loops, indirect tables, out-of-range addresses), avail ring entries and index, pop
//! rounds, and hot-removing/re-adding a block between rounds (memory that shrinks).
//! A pop round does what virtio-core's runner does on a kick: pop every available
//! chain with virtio-queue, turn each into `Desc`s, parse it with virtio-blk's parser,
//! write the status and return it on the used ring.
//!
//! Invariants checked (beyond "no panic"):
//! - a round pops at most `size` chains; a head `>= size` (which virtio-queue pops as
//!   an empty chain) breaks the queue as the runner does (QEMU's "Guest says index %u
//!   is available"): nothing after it is popped, in that round or later, and it never
//!   gets a used entry; the used index advances by exactly one per chain returned;
//! - a request's status byte lies in a device-writable descriptor, its `writable`
//!   length is the sum of the writable descriptors (saturated); a chain with a
//!   readable descriptor after a writable one gets no status and a used length of 0;
//! - data transfers lie on the disk (`offset + len <= size`), are whole sectors, use
//!   only descriptors of the right direction and only guest RAM; writes never happen on
//!   a read-only disk; discard/write-zeroes ranges are on the disk; GET_ID writes at
//!   most 20 bytes.
//!
//! Input format (little-endian), see `seeds/gen.py`: a 15-byte header
//! `{u8 size_log2, u8 flags, u32 desc, u32 avail, u32 used, u16 next_avail}`, then ops
//! (one byte each, followed by its operands).
#![no_main]

#[path = "../../../scripts/fuzz-common/guest_ram.rs"]
mod guest_ram;
#[path = "../../../scripts/fuzz-common/input.rs"]
mod input;

use block_dma::SgList;
use guest_ram::{fresh_ram, toggle};
use input::Input;
use ram_block::RamList;
use virtio_blk::config::{ID_BYTES, MAX_DISCARD_SECTORS, S_IOERR, S_UNSUPP};
use virtio_blk::request::{Action, DiskLimits, Request, parse};
use virtio_core::Desc;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

/// The disk behind the device.
const DISK_SIZE: u64 = 1 << 20;
/// At most this many ops per input (keeps each run short).
const MAX_OPS: usize = 512;

/// Whether `[addr, addr + len)` is guest RAM now.
fn in_ram<M: GuestMemory>(mem: &M, addr: u64, len: u64) -> bool {
    len == 0 || mem.check_range(GuestAddress(addr), len as usize, Permissions::ReadWrite)
}

/// Whether `[addr, addr + len)` lies inside one of `descs` (u128: a descriptor may end
/// exactly at 2^64).
fn inside(descs: &[&Desc], addr: u64, len: u64) -> bool {
    let (start, end) = (u128::from(addr), u128::from(addr) + u128::from(len));
    descs.iter().any(|d| {
        let d_start = u128::from(d.addr);
        start >= d_start && end <= d_start + u128::from(d.len)
    })
}

/// Whether every entry of `data` lies in one of `dir` and in guest RAM.
fn data_ok<M: GuestMemory>(mem: &M, data: &SgList, dir: &[&Desc]) -> bool {
    data.entries()
        .iter()
        .all(|e| inside(dir, e.addr, e.len) && in_ram(mem, e.addr, e.len))
}

/// The invariants of one parsed request (see the module docs).
fn check<M: GuestMemory>(mem: &M, descs: &[Desc], disk: &DiskLimits, req: &Request) {
    let writable: Vec<&Desc> = descs.iter().filter(|d| d.write).collect();
    let readable: Vec<&Desc> = descs.iter().filter(|d| !d.write).collect();
    let total: u64 = writable.iter().map(|d| u64::from(d.len)).sum();
    let first_writable = descs.iter().position(|d| d.write).unwrap_or(descs.len());
    if descs[first_writable..].iter().any(|d| !d.write) {
        // Malformed: nothing may be written, nothing reported.
        assert_eq!((req.status, req.writable), (None, 0), "{req:?}");
        assert_eq!(req.action, Action::Status(S_IOERR));
        return;
    }
    assert_eq!(u64::from(req.writable), total.min(u64::from(u32::MAX)));
    match req.status {
        Some(at) => assert!(
            inside(&writable, at, 1),
            "status outside the chain: {req:?}"
        ),
        // No writable byte, or the last writable descriptor wraps the address space.
        None => assert_eq!(req.action, Action::Status(S_IOERR)),
    }
    let on_disk = |offset: u64, len: u64| offset.checked_add(len).is_some_and(|e| e <= disk.size);
    match &req.action {
        Action::Read { offset, data } => {
            assert!(
                on_disk(*offset, data.len()) && data.len() % 512 == 0,
                "{req:?}"
            );
            assert!(data_ok(mem, data, &writable), "{req:?}");
        }
        Action::Write { offset, data } => {
            assert!(!disk.read_only, "a write on a read-only disk: {req:?}");
            assert!(
                on_disk(*offset, data.len()) && data.len() % 512 == 0,
                "{req:?}"
            );
            assert!(data_ok(mem, data, &readable), "{req:?}");
        }
        Action::GetId { data } => {
            assert!(data.len() <= ID_BYTES as u64, "{req:?}");
            assert!(data_ok(mem, data, &writable), "{req:?}");
        }
        Action::Discard { offset, len } | Action::WriteZeroes { offset, len, .. } => {
            assert!(!disk.read_only, "{req:?}");
            assert!(on_disk(*offset, *len), "{req:?}");
            assert!(*len <= u64::from(MAX_DISCARD_SECTORS) * 512, "{req:?}");
        }
        Action::Flush => {}
        Action::Status(st) => assert!(*st == S_IOERR || *st == S_UNSUPP, "{req:?}"),
    }
}

/// One pop round, as the runner's `process` does it; returns false when the queue is
/// broken (the runner stops it until reset).
fn pop_round(ram: &RamList, queue: &mut Queue, disk: &DiskLimits) -> bool {
    let mem = ram.memory();
    let _ = queue.disable_notification(&*mem);
    let mut popped = Vec::new();
    let mut broken = false;
    while let Some(chain) = queue.pop_descriptor_chain(mem.clone()) {
        let head = chain.head_index();
        if head >= queue.size() {
            // An avail entry naming a descriptor past the table: virtio-queue pops it
            // as an empty chain, the runner (as QEMU) breaks the device; the chains
            // popped before it still complete, nothing after it is popped.
            assert_eq!(chain.count(), 0, "a chain from head {head}");
            broken = true;
            break;
        }
        let descs: Vec<Desc> = chain
            .map(|d| Desc {
                addr: d.addr().0,
                len: d.len(),
                write: d.is_write_only(),
            })
            .collect();
        let req = parse(&*mem, &descs, disk);
        check(&*mem, &descs, disk, &req);
        popped.push((head, req));
        assert!(
            popped.len() <= usize::from(queue.size()),
            "a round popped more than the queue holds"
        );
    }
    if !broken {
        let _ = queue.enable_notification(&*mem);
    }
    for (head, req) in popped {
        let used_len = match req.status {
            Some(at) if mem.write_obj(0u8, GuestAddress(at)).is_ok() => req.writable,
            _ => 0,
        };
        let before = queue.next_used();
        match queue.add_used(&*mem, head, used_len) {
            Ok(()) => {
                assert!(head < queue.size(), "used entry for head {head}");
                assert_eq!(queue.next_used(), before.wrapping_add(1));
            }
            Err(_) => assert_eq!(queue.next_used(), before),
        }
    }
    // The runner's "avail index out of range" check.
    let avail = queue.avail_idx(&*mem, std::sync::atomic::Ordering::Acquire);
    !broken && !avail.is_ok_and(|a| a.0.wrapping_sub(queue.next_avail()) > queue.size())
}

fn run(data: &[u8]) -> Option<()> {
    let mut input = Input(data);
    let size = 1u16 << (input.u8()? % 10 + 1).min(15);
    let flags = input.u8()?;
    let (desc, avail, used) = (input.u32()?, input.u32()?, input.u32()?);
    let next_avail = input.u16()?;
    let mut disk = DiskLimits {
        size: DISK_SIZE,
        read_only: flags & 2 != 0,
        discard: flags & 4 == 0,
        write_zeroes: flags & 8 == 0,
    };
    let ram = fresh_ram();
    let mut present = [true, true];
    let mut queue = Queue::new(1024).ok()?;
    queue.set_size(size);
    queue.set_desc_table_address(Some(desc), Some(0));
    queue.set_avail_ring_address(Some(avail), Some(0));
    queue.set_used_ring_address(Some(used), Some(0));
    queue.set_event_idx(flags & 1 != 0);
    queue.set_next_avail(next_avail);
    queue.set_ready(true);
    if !queue.is_valid(&*ram.memory()) {
        // The transport refuses the queue (QueueError::Invalid): nothing runs.
        return None;
    }
    let mut broken = false;
    for _ in 0..MAX_OPS {
        let op = input.u8()?;
        let mem = ram.memory();
        match op % 10 {
            0 => {
                let at = input.u32()?;
                let n = usize::from(input.u8()?);
                let bytes = input.bytes(n)?;
                let _ = mem.write_slice(bytes, GuestAddress(u64::from(at)));
            }
            1 => {
                let index = u64::from(input.u16()?);
                let mut d = [0u8; 16];
                d[..8].copy_from_slice(&input.u64()?.to_le_bytes());
                d[8..12].copy_from_slice(&input.u32()?.to_le_bytes());
                d[12..14].copy_from_slice(&input.u16()?.to_le_bytes());
                d[14..16].copy_from_slice(&input.u16()?.to_le_bytes());
                let _ = mem.write_slice(&d, GuestAddress(u64::from(desc) + index * 16));
            }
            2 => {
                let slot = u64::from(input.u16()?);
                let head = input.u16()?;
                let _ = mem.write_obj(head, GuestAddress(u64::from(avail) + 4 + slot * 2));
            }
            3 => {
                let idx = input.u16()?;
                let _ = mem.write_obj(idx, GuestAddress(u64::from(avail) + 2));
            }
            4 => {
                drop(mem);
                if !broken && !pop_round(ram, &mut queue, &disk) {
                    broken = true;
                }
            }
            5 => toggle(ram, &mut present, usize::from(input.u8()? & 1))?,
            6 => {
                // A virtio-blk request header: {le32 type, le32 reserved, le64 sector}.
                let at = u64::from(input.u32()?);
                let kind = input.u32()?;
                let sector = input.u64()?;
                let _ = mem.write_obj(kind, GuestAddress(at));
                let _ = mem.write_obj(sector, GuestAddress(at.wrapping_add(8)));
            }
            7 => {
                // Avail flags (NO_INTERRUPT) and the used event, for EVENT_IDX.
                let f = input.u16()?;
                let _ = mem.write_obj(f, GuestAddress(u64::from(avail)));
                let ev = input.u16()?;
                let at = u64::from(avail) + 4 + 2 * u64::from(size);
                let _ = mem.write_obj(ev, GuestAddress(at));
            }
            8 => {
                let f = input.u8()?;
                disk.read_only = f & 1 != 0;
                disk.discard = f & 2 != 0;
                disk.write_zeroes = f & 4 != 0;
            }
            _ => {
                // Publish one chain: head at the next free avail slot, index + 1.
                let head = input.u16()?;
                let idx: u16 = mem
                    .read_obj(GuestAddress(u64::from(avail) + 2))
                    .unwrap_or(0);
                let slot = u64::from(idx % size);
                let _ = mem.write_obj(head, GuestAddress(u64::from(avail) + 4 + slot * 2));
                let _ = mem.write_obj(idx.wrapping_add(1), GuestAddress(u64::from(avail) + 2));
            }
        }
    }
    Some(())
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
