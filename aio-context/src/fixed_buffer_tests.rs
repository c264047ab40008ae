//! `AioContext::fixed_buffer`: registered buffers that `READ_FIXED` / `WRITE_FIXED` use,
//! on both fd monitor backends; what the kernel pins is read from `VmPin` in
//! `/proc/self/status` (io_uring accounts registered buffers there).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex, Weak};

use io_uring::{opcode, types};

use crate::refill_tests::{context_with_ops, run_op};
use crate::{AioContext, Backend, OpOptions};

/// The tests read the process's pinned memory: one at a time.
static PINNING: Mutex<()> = Mutex::new(());

/// An anonymous mapping, the owner of a region.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a plain mapping; the tests touch it from one thread at a time.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(len: usize, prot: libc::c_int) -> Arc<Mapping> {
        // SAFETY: a fresh anonymous mapping; no address hint.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(ptr, libc::MAP_FAILED, "mmap");
        Arc::new(Mapping {
            ptr: ptr.cast(),
            len,
        })
    }

    /// The region's slot for `[off, off + len)`.
    fn slot(self: &Arc<Self>, ctx: &AioContext, off: usize, len: usize) -> Option<u16> {
        // SAFETY: the mapping lives as long as its owner (`Drop` unmaps it), and every
        // call names the same region. (The read-only mapping of the refusal test breaks
        // "writable": the kernel refuses to pin it, which is what that test checks.)
        unsafe { ctx.fixed_buffer(self, self.ptr, self.len, self.ptr.wrapping_add(off), len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// `VmPin` of this process, in KiB.
fn pinned_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmPin:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmPin in /proc/self/status")
}

/// Submits `entry` and runs the context until its result.
fn run(ctx: &AioContext, entry: io_uring::squeue::Entry) -> i32 {
    // SAFETY: the entry's buffer is a registered region the test keeps alive, and its
    // file is open until after this returns.
    unsafe { run_op(ctx, entry, OpOptions::default()) }
}

fn memfd_with(data: &[u8]) -> OwnedFd {
    let fd =
        nix::sys::memfd::memfd_create(c"fixed", nix::sys::memfd::MFdFlags::MFD_CLOEXEC).unwrap();
    assert_eq!(nix::unistd::write(&fd, data).unwrap(), data.len());
    fd
}

fn reads_and_writes_through_a_registered_region(backend: Backend) {
    let Some(ctx) = context_with_ops(backend, "fixed_buffer") else {
        return;
    };
    let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
    let file = memfd_with(&data);
    let mem = Mapping::new(1 << 20, libc::PROT_READ | libc::PROT_WRITE);
    let Some(slot) = mem.slot(&ctx, 12288, 4096) else {
        eprintln!("SKIPPED fixed_buffer test on {backend:?}: the kernel refused the registration");
        return;
    };
    assert_eq!(
        mem.slot(&ctx, 0, 1 << 20),
        Some(slot),
        "same owner, same slot"
    );
    assert_eq!(
        mem.slot(&ctx, (1 << 20) - 1, 2),
        None,
        "past the region's end"
    );
    assert_eq!(mem.slot(&ctx, 0, 0), None, "an empty range");
    let other = Mapping::new(1 << 16, libc::PROT_READ | libc::PROT_WRITE);
    let other_slot = other.slot(&ctx, 0, 4096).expect("a second region");
    assert_ne!(other_slot, slot, "two regions, two slots");

    // 4 KiB from file offset 8192 into the region at 12288.
    let fd = types::Fd(file.as_raw_fd());
    let dst = mem.ptr.wrapping_add(12288);
    let read = opcode::ReadFixed::new(fd, dst, 4096, slot)
        .offset(8192)
        .build();
    assert_eq!(run(&ctx, read), 4096);
    // SAFETY: the read completed; the bytes are in the mapping, which lives.
    let got = unsafe { std::slice::from_raw_parts(dst, 4096) };
    assert_eq!(
        got,
        &data[8192..8192 + 4096],
        "READ_FIXED put the file's bytes there"
    );

    // And back out from the region to file offset 0.
    let write = opcode::WriteFixed::new(fd, dst, 4096, slot)
        .offset(0)
        .build();
    assert_eq!(run(&ctx, write), 4096);
    let mut back = vec![0u8; 4096];
    let file = std::fs::File::from(file);
    std::os::unix::fs::FileExt::read_exact_at(&file, &mut back, 0).unwrap();
    assert_eq!(
        back,
        &data[8192..8192 + 4096],
        "WRITE_FIXED wrote the region's bytes"
    );
}

#[test]
fn fixed_buffer_reads_and_writes_on_io_uring() {
    let _one = PINNING.lock().unwrap_or_else(|e| e.into_inner());
    reads_and_writes_through_a_registered_region(Backend::IoUring);
}

#[test]
fn fixed_buffer_reads_and_writes_on_epoll() {
    let _one = PINNING.lock().unwrap_or_else(|e| e.into_inner());
    reads_and_writes_through_a_registered_region(Backend::Epoll);
}

/// A region nothing but the ring holds is unpinned and dropped when the ring registers
/// the next one: no removed RAM block stays pinned past that.
#[test]
fn fixed_buffer_unregisters_an_orphaned_region() {
    let _one = PINNING.lock().unwrap_or_else(|e| e.into_inner());
    let Some(ctx) = context_with_ops(Backend::IoUring, "fixed_buffer") else {
        return;
    };
    const SIZE: usize = 8 << 20;
    let before = pinned_kib();
    let a = Mapping::new(SIZE, libc::PROT_READ | libc::PROT_WRITE);
    if a.slot(&ctx, 0, 4096).is_none() {
        eprintln!("SKIPPED fixed_buffer orphan test: the kernel refused the registration");
        return;
    }
    let pinned = pinned_kib();
    assert!(
        pinned >= before + (SIZE as u64 >> 10),
        "the whole region is pinned: VmPin {before} -> {pinned} kB"
    );
    let weak: Weak<Mapping> = Arc::downgrade(&a);
    drop(a);
    assert_eq!(
        weak.strong_count(),
        1,
        "the ring keeps the registered owner"
    );
    let b = Mapping::new(1 << 16, libc::PROT_READ | libc::PROT_WRITE);
    assert!(b.slot(&ctx, 0, 4096).is_some());
    assert_eq!(weak.strong_count(), 0, "the orphan was dropped");
    let after = pinned_kib();
    assert!(
        after + (SIZE as u64 >> 10) <= pinned + 64,
        "the orphan's pages were unpinned: VmPin {pinned} -> {after} kB"
    );
    drop(ctx);
    drop(b);
}

/// A region the kernel will not pin for writing gets no slot, then or later, and does
/// not stop other regions from being registered.
#[test]
fn fixed_buffer_refuses_a_read_only_region() {
    let _one = PINNING.lock().unwrap_or_else(|e| e.into_inner());
    let Some(ctx) = context_with_ops(Backend::IoUring, "fixed_buffer") else {
        return;
    };
    let ro = Mapping::new(1 << 16, libc::PROT_READ);
    assert_eq!(
        ro.slot(&ctx, 0, 4096),
        None,
        "a read-only region is refused"
    );
    assert_eq!(ro.slot(&ctx, 0, 4096), None, "and stays refused");
    let rw = Mapping::new(1 << 16, libc::PROT_READ | libc::PROT_WRITE);
    assert!(
        rw.slot(&ctx, 0, 4096).is_some(),
        "a writable region still registers"
    );
}
