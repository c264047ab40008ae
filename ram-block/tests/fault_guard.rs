//! `Backing::PeerFd`: memory a peer process can truncate (issue 14, section 2). A
//! truncation under a guarded block is survived: the access reads zeros and the
//! block's `FaultReport` says so. A write-sealed file is refused, a shrink-sealed one
//! needs no guard, and a fault anywhere else still kills the process with SIGBUS.

#![cfg(not(miri))] // memfd, mmap and signals

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::sync::Arc;

use nix::fcntl::{FcntlArg, SealFlag, fcntl};
use nix::sys::memfd::{MFdFlags, memfd_create};
use ram_block::{Backing, Error, FaultReport, RamBlock};
use vm_memory::{Bytes, GuestAddress, MemoryRegionAddress};

const PAGE: u64 = 0x1000;

fn memfd(len: u64) -> OwnedFd {
    let fd = memfd_create("peer", MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING).unwrap();
    nix::unistd::ftruncate(&fd, len as i64).unwrap();
    fd
}

fn peer_block(fd: &OwnedFd, faults: &Arc<FaultReport>) -> ram_block::Result<RamBlock> {
    RamBlock::new(
        "peer",
        GuestAddress(0),
        2 * PAGE,
        Backing::PeerFd {
            fd: fd.try_clone().unwrap(),
            offset: 0,
            faults: faults.clone(),
        },
    )
}

#[test]
fn a_truncated_peer_block_reads_zeros_and_reports_the_fault() {
    let fd = memfd(2 * PAGE);
    let faults = FaultReport::new().unwrap();
    let block = peer_block(&fd, &faults).unwrap();
    block
        .write_obj(0x1234_5678u32, MemoryRegionAddress(PAGE))
        .unwrap();
    assert!(!faults.faulted());
    nix::unistd::ftruncate(&fd, 0).unwrap(); // what a hostile peer does
    // Without the guard this read dies with SIGBUS.
    let v: u32 = block.read_obj(MemoryRegionAddress(PAGE)).unwrap();
    assert_eq!(v, 0, "the range was replaced with zero pages");
    assert!(faults.faulted());
    let mut polled = [nix::poll::PollFd::new(
        faults.as_fd(),
        nix::poll::PollFlags::POLLIN,
    )];
    assert_eq!(
        nix::poll::poll(&mut polled, 0u16).unwrap(),
        1,
        "the eventfd is readable"
    );
    // The whole block is anonymous now: it keeps working, and unmaps normally.
    block.write_obj(7u64, MemoryRegionAddress(0)).unwrap();
    assert_eq!(block.read_obj::<u64>(MemoryRegionAddress(0)).unwrap(), 7);
    drop(block);
}

#[test]
fn a_write_sealed_peer_file_is_refused_and_a_shrink_sealed_one_cannot_fault() {
    let faults = FaultReport::new().unwrap();
    let fd = memfd(2 * PAGE);
    fcntl(&fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_FUTURE_WRITE)).unwrap();
    assert!(matches!(
        peer_block(&fd, &faults),
        Err(Error::SealedAgainstWrites { .. })
    ));
    let fd = memfd(2 * PAGE);
    fcntl(&fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK)).unwrap();
    let block = peer_block(&fd, &faults).unwrap();
    assert!(nix::unistd::ftruncate(&fd, 0).is_err(), "the seal holds");
    block.write_obj(1u8, MemoryRegionAddress(0)).unwrap();
    assert!(!faults.faulted());
}

const CHILD: &str = "RAM_BLOCK_FAULT_CHILD";

/// In a child process: with the guard installed (a guarded block exists), a SIGBUS
/// fault outside every guarded range still kills the process. (A SIGBUS sent by a
/// process goes to the action installed before ours, as it did without the guard.)
#[test]
fn a_fault_outside_guarded_ranges_still_kills_the_process() {
    if std::env::var_os(CHILD).is_some() {
        let faults = FaultReport::new().unwrap();
        let _guarded = peer_block(&memfd(2 * PAGE), &faults).unwrap();
        let other = memfd(PAGE);
        let len = std::num::NonZeroUsize::new(PAGE as usize).unwrap();
        // SAFETY: a fresh shared mapping of our own memfd, never unmapped (the
        // process dies below).
        let ptr = unsafe {
            nix::sys::mman::mmap(
                None,
                len,
                nix::sys::mman::ProtFlags::PROT_READ,
                nix::sys::mman::MapFlags::MAP_SHARED,
                &other,
                0,
            )
        }
        .unwrap();
        nix::unistd::ftruncate(&other, 0).unwrap();
        // SAFETY: inside the mapping; the read faults with SIGBUS on purpose.
        let v = unsafe { std::ptr::read_volatile(ptr.as_ptr().cast::<u8>()) };
        eprintln!("survived an unguarded fault: {v}");
        std::process::exit(0);
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_fault_outside_guarded_ranges_still_kills_the_process",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .unwrap();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGBUS),
        "{:?} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}
