//! Which requests go straight to the kernel's io-wq workers (`IOSQE_ASYNC`).
//!
//! A read or write of a file whose data lives in memory (a tmpfs or hugetlbfs file, or
//! any file opened without O_DIRECT, whose data goes through the page cache) is a memory
//! copy in the kernel. By default io_uring runs it inline in the submitting thread (a
//! cached read of ext4 or xfs), or, when the inline non-blocking attempt is refused (any
//! tmpfs read, Linux 6.18), in an io-wq worker: but a punted work item gets a new worker
//! only when none is running, so the copies of one ring run one after the other in
//! either case. Forced async
//! (`IOSQE_ASYNC`), the kernel starts a worker per concurrent item, and large copies run
//! in parallel on every core. A small request is cheaper inline than handed to a
//! thread, and an O_DIRECT request on a disk only queues the I/O inline: neither is
//! forced. Measured in DESIGN.md ("Large copies").

use std::fs::File;

use nix::sys::statfs::{HUGETLBFS_MAGIC, TMPFS_MAGIC, fstatfs};

/// The default threshold: requests of at least 128 KiB are forced async where the data
/// is a memory copy. A hand-off to a worker costs a few microseconds, a 128 KiB copy
/// tens, so from here on the parallel copies win (DESIGN.md).
pub(crate) const DEFAULT_MIN_BYTES: u64 = 128 << 10;

/// The environment variable that overrides [`DEFAULT_MIN_BYTES`] (bytes; `0` turns the
/// offload off), for measurements.
pub(crate) const ENV: &str = "BLOCK_DMA_ASYNC_MIN_BYTES";

/// Whether reads and writes of `file` are memory copies in the kernel: buffered I/O, or
/// O_DIRECT on a file system that serves it from memory (tmpfs since Linux 6.6,
/// hugetlbfs). A block device with O_DIRECT is not.
pub(crate) fn is_memory_copy(file: &File, direct: bool, block_device: bool) -> bool {
    if !direct {
        return true;
    }
    if block_device {
        return false;
    }
    fstatfs(file).is_ok_and(|fs| {
        let kind = fs.filesystem_type();
        kind == TMPFS_MAGIC || kind == HUGETLBFS_MAGIC
    })
}

/// The smallest request to force async for a file that [`is_memory_copy`] (`u64::MAX`:
/// none), from `env` (the value of [`ENV`], if set) or the default.
pub(crate) fn min_bytes(memory_copy: bool, env: Option<&str>) -> u64 {
    if !memory_copy {
        return u64::MAX;
    }
    match env.map(|v| v.trim().parse::<u64>()) {
        Some(Ok(0)) => u64::MAX,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            tracing::warn!("{ENV}: not a number of bytes; using {DEFAULT_MIN_BYTES}");
            DEFAULT_MIN_BYTES
        }
        None => DEFAULT_MIN_BYTES,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_applies_only_to_memory_copies() {
        assert_eq!(min_bytes(true, None), DEFAULT_MIN_BYTES);
        assert_eq!(min_bytes(false, None), u64::MAX);
        assert_eq!(min_bytes(false, Some("4096")), u64::MAX);
        assert_eq!(min_bytes(true, Some("4096")), 4096);
        assert_eq!(min_bytes(true, Some("0")), u64::MAX);
        assert_eq!(min_bytes(true, Some("lots")), DEFAULT_MIN_BYTES);
    }

    #[test]
    #[cfg_attr(
        miri,
        ignore = "fstatfs and fcntl on a real file: miri's isolation refuses them"
    )]
    fn tmpfs_and_buffered_files_are_memory_copies() {
        let shm = std::path::Path::new("/dev/shm");
        if !shm.is_dir() {
            eprintln!("SKIPPED tmpfs_and_buffered_files_are_memory_copies: no /dev/shm");
            return;
        }
        let file = tempfile::tempfile_in(shm).unwrap();
        assert!(is_memory_copy(&file, true, false));
        assert!(is_memory_copy(&file, false, false));
        assert!(!is_memory_copy(&file, true, true));
    }
}
