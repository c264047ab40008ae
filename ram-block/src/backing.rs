//! Where a block's memory comes from: anonymous memory, a memfd we create, or a file
//! descriptor handed to us; with huge pages where asked for.

use std::fs::File;
use std::io;
use std::num::NonZeroUsize;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use vm_memory::FileOffset;

use crate::fault::{self, FaultReport, Guard};
use crate::mapping::Mapping;
use crate::{Error, Result};

/// How a [`RamBlock`](crate::RamBlock)'s memory is provided.
#[derive(Debug)]
#[non_exhaustive]
pub enum Backing {
    /// Private anonymous memory (QEMU's plain `-m`): zero filled, not shareable with
    /// another process.
    Anonymous {
        /// Map with `MAP_HUGETLB` (the default huge page size, usually 2 MiB); the size
        /// must be a multiple of it and the kernel must have huge pages reserved.
        huge_pages: bool,
    },
    /// A memfd created for the block and mapped shared (QEMU's `memory-backend-memfd`):
    /// another process, such as a vhost-user backend, maps the same memory through the
    /// fd and offset that [`GuestMemoryRegion::file_offset`] returns. The memfd is sealed
    /// against shrinking, so no peer can truncate it under us (which would make our
    /// accesses fault with SIGBUS).
    ///
    /// [`GuestMemoryRegion::file_offset`]: vm_memory::GuestMemoryRegion::file_offset
    Memfd {
        /// Create it with `MFD_HUGETLB` (the default huge page size).
        huge_pages: bool,
    },
    /// A file descriptor handed to us (a vhost-user frontend's memory table entry, a
    /// file on tmpfs or hugetlbfs), mapped shared from `offset`. It must be open
    /// read-write; `offset` must be page aligned; a regular file must cover
    /// `offset + size` bytes. Huge pages come from the file itself (hugetlbfs).
    Fd {
        /// The file; the block owns it and closes it when it is reclaimed (dup it to
        /// map several ranges of one file, as a vhost-user memory table does).
        fd: OwnedFd,
        /// Where the block starts in the file.
        offset: u64,
    },
    /// As [`Fd`](Backing::Fd), for a file descriptor that an untrusted peer also holds
    /// (a vhost-user frontend's memory): a file sealed against writes is refused with
    /// [`Error::SealedAgainstWrites`], and unless the peer sealed it against shrinking
    /// (`F_SEAL_SHRINK`), a later truncation does not kill the process: the fault is
    /// survived and reported to `faults` (see [`FaultReport`]).
    PeerFd {
        /// The file (owned and closed as for `Fd`).
        fd: OwnedFd,
        /// Where the block starts in the file.
        offset: u64,
        /// Where a fault in the block is reported.
        faults: Arc<FaultReport>,
    },
}

/// The host side of a block: its mapping and, for shared memory, the fd behind it.
#[derive(Debug)]
pub(crate) struct HostMemory {
    /// Declared before `mapping`: fields drop in order, and the range must leave the
    /// SIGBUS guard before it is unmapped.
    pub(crate) guard: Option<Guard>,
    pub(crate) mapping: Mapping,
    pub(crate) file: Option<FileOffset>,
    pub(crate) huge_pages: bool,
}

impl Backing {
    /// Maps `size` bytes (`size` is non-zero and was checked to fit the host).
    pub(crate) fn map(self, name: &str, size: u64) -> Result<HostMemory> {
        let os = |op: &'static str| os_error(name, op);
        match self {
            Backing::Anonymous { huge_pages } => {
                let len = mapped_len(name, size, page_size_for(huge_pages))?;
                let mapping = Mapping::anonymous(len, huge_pages).map_err(|e| {
                    huge_page_error(name, size, huge_pages, e).unwrap_or_else(|| os("mmap")(e))
                })?;
                Ok(HostMemory {
                    guard: None,
                    mapping,
                    file: None,
                    huge_pages,
                })
            }
            Backing::Memfd { huge_pages } => {
                use nix::fcntl::{FcntlArg, SealFlag, fcntl};
                use nix::sys::memfd::{MFdFlags, memfd_create};
                let len = mapped_len(name, size, page_size_for(huge_pages))?;
                let mut flags = MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING;
                if huge_pages {
                    flags |= MFdFlags::MFD_HUGETLB;
                }
                // The kernel caps memfd names at 249 bytes; the name only labels the
                // mapping in /proc/PID/maps ("/memfd:NAME").
                let label: String = name.chars().filter(|&c| c != '\0').take(200).collect();
                let fd = memfd_create(label.as_str(), flags).map_err(os("memfd_create"))?;
                nix::unistd::ftruncate(&fd, len.get() as i64).map_err(|e| {
                    huge_page_error(name, size, huge_pages, e).unwrap_or_else(|| os("ftruncate")(e))
                })?;
                fcntl(&fd, FcntlArg::F_ADD_SEALS(SealFlag::F_SEAL_SHRINK))
                    .map_err(os("fcntl(F_ADD_SEALS)"))?;
                let mapping = Mapping::shared(fd.as_fd(), 0, len).map_err(|e| {
                    huge_page_error(name, size, huge_pages, e).unwrap_or_else(|| os("mmap")(e))
                })?;
                Ok(HostMemory {
                    guard: None,
                    mapping,
                    file: Some(FileOffset::new(File::from(fd), 0)),
                    huge_pages,
                })
            }
            Backing::Fd { fd, offset } => map_fd(name, size, fd, offset),
            Backing::PeerFd { fd, offset, faults } => {
                use nix::fcntl::{FcntlArg, SealFlag, fcntl};
                // Files that are not memfds have no seals (EINVAL).
                let seals = fcntl(&fd, FcntlArg::F_GET_SEALS)
                    .map_or(SealFlag::empty(), SealFlag::from_bits_truncate);
                if seals.intersects(SealFlag::F_SEAL_WRITE | SealFlag::F_SEAL_FUTURE_WRITE) {
                    return Err(Error::SealedAgainstWrites {
                        name: name.to_owned(),
                    });
                }
                let mut host = map_fd(name, size, fd, offset)?;
                if !seals.contains(SealFlag::F_SEAL_SHRINK) {
                    let len = host.mapping.len();
                    let guard =
                        fault::guard(host.mapping.as_ptr(), len, &faults).map_err(|source| {
                            Error::Os {
                                name: name.to_owned(),
                                op: "guarding the mapping against SIGBUS",
                                source,
                            }
                        })?;
                    host.guard = Some(guard);
                }
                Ok(host)
            }
        }
    }
}

/// Turns a failed system call `op` on block `name` into [`Error::Os`].
fn os_error<'a>(name: &'a str, op: &'static str) -> impl Fn(nix::errno::Errno) -> Error + 'a {
    move |errno| Error::Os {
        name: name.to_owned(),
        op,
        source: io::Error::from(errno),
    }
}

/// Maps `size` bytes of `fd` from `offset`, shared (see [`Backing::Fd`]).
fn map_fd(name: &str, size: u64, fd: OwnedFd, offset: u64) -> Result<HostMemory> {
    let os = |op: &'static str| os_error(name, op);
    let page_size = Mapping::page_size() as u64;
    let bad_offset = || Error::BadFileOffset {
        name: name.to_owned(),
        offset,
        page_size,
    };
    let file_offset = i64::try_from(offset).map_err(|_| bad_offset())?;
    if offset % page_size != 0 {
        return Err(bad_offset());
    }
    let hugetlbfs_page = hugetlbfs_page_size(&fd);
    let huge_pages = hugetlbfs_page.is_some();
    let len = mapped_len(
        name,
        size,
        hugetlbfs_page.unwrap_or(PageSize::Base(page_size)),
    )?;
    let stat = nix::sys::stat::fstat(&fd).map_err(os("fstat"))?;
    if stat.st_mode & nix::libc::S_IFMT == nix::libc::S_IFREG {
        let needed = offset.checked_add(size).ok_or_else(bad_offset)?;
        let file_size = stat.st_size as u64;
        if file_size < needed {
            return Err(Error::FileTooSmall {
                name: name.to_owned(),
                file_size,
                needed,
            });
        }
    }
    let mapping = Mapping::shared(fd.as_fd(), file_offset, len).map_err(os("mmap"))?;
    Ok(HostMemory {
        guard: None,
        mapping,
        file: Some(FileOffset::new(File::from(fd), offset)),
        huge_pages,
    })
}

/// The page size a mapping uses: the base page or the default huge page.
fn page_size_for(huge_pages: bool) -> PageSize {
    if huge_pages {
        PageSize::Huge(huge_page_size())
    } else {
        PageSize::Base(Mapping::page_size() as u64)
    }
}

/// The granule a mapping is made of.
#[derive(Clone, Copy)]
enum PageSize {
    /// Base pages: sizes round up to them.
    Base(u64),
    /// Huge pages: sizes must be whole multiples.
    Huge(u64),
}

/// `size` rounded up to whole pages; huge-page sizes must already be whole.
fn mapped_len(name: &str, size: u64, page: PageSize) -> Result<NonZeroUsize> {
    let too_large = || Error::TooLarge {
        name: name.to_owned(),
        size,
    };
    let page = match page {
        PageSize::Huge(huge_page_size) if size % huge_page_size != 0 => {
            return Err(Error::HugePageMisaligned {
                name: name.to_owned(),
                size,
                huge_page_size,
            });
        }
        PageSize::Huge(page) | PageSize::Base(page) => page,
    };
    let len = size
        .div_ceil(page)
        .checked_mul(page)
        .ok_or_else(too_large)?;
    if len > isize::MAX as u64 {
        return Err(too_large());
    }
    NonZeroUsize::new(len as usize).ok_or_else(too_large)
}

/// Maps the error of a huge-page allocation to [`Error::HugePagesUnavailable`].
fn huge_page_error(
    name: &str,
    size: u64,
    huge_pages: bool,
    errno: nix::errno::Errno,
) -> Option<Error> {
    use nix::errno::Errno;
    // No reserved huge pages: mmap fails with ENOMEM (anonymous) or, for a hugetlb
    // memfd, ENOMEM at mmap or EINVAL/ENOSPC at ftruncate on some kernels.
    let no_pages = matches!(errno, Errno::ENOMEM | Errno::ENOSPC | Errno::EINVAL);
    (huge_pages && no_pages).then(|| Error::HugePagesUnavailable {
        name: name.to_owned(),
        size,
        free: meminfo("HugePages_Free:").unwrap_or(0),
        total: meminfo("HugePages_Total:").unwrap_or(0),
    })
}

/// The default huge page size (`Hugepagesize:` in /proc/meminfo), or 2 MiB.
pub(crate) fn huge_page_size() -> u64 {
    meminfo("Hugepagesize:").map_or(2 << 20, |kib| kib * 1024)
}

/// A number from /proc/meminfo, as printed (kB for sizes, a count for pages).
pub(crate) fn meminfo(key: &str) -> Option<u64> {
    if cfg!(miri) {
        return None; // isolated: no /proc
    }
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    line[key.len()..].split_whitespace().next()?.parse().ok()
}

/// The page size of `fd`'s hugetlbfs mount, if `fd` is a file on hugetlbfs.
fn hugetlbfs_page_size(fd: &OwnedFd) -> Option<PageSize> {
    #[cfg(not(miri))]
    {
        use nix::sys::statfs::{HUGETLBFS_MAGIC, fstatfs};
        let fs = fstatfs(fd).ok()?;
        (fs.filesystem_type() == HUGETLBFS_MAGIC).then(|| PageSize::Huge(fs.block_size() as u64))
    }
    #[cfg(miri)]
    {
        let _ = fd;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_to_base_pages_and_must_be_whole_huge_pages() {
        let len = |size, page| mapped_len("t", size, page).map(NonZeroUsize::get);
        assert_eq!(len(1, PageSize::Base(4096)).unwrap(), 4096);
        assert_eq!(len(4096, PageSize::Base(4096)).unwrap(), 4096);
        assert_eq!(len(4097, PageSize::Base(4096)).unwrap(), 8192);
        assert_eq!(len(2 << 20, PageSize::Huge(2 << 20)).unwrap(), 2 << 20);
        assert!(matches!(
            len(4096, PageSize::Huge(2 << 20)),
            Err(Error::HugePageMisaligned { .. })
        ));
        assert!(matches!(
            len(u64::MAX, PageSize::Base(4096)),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            len(1 << 63, PageSize::Base(4096)),
            Err(Error::TooLarge { .. })
        ));
    }

    #[test]
    fn only_huge_page_allocation_failures_become_huge_page_errors() {
        use nix::errno::Errno;
        assert!(matches!(
            huge_page_error("t", 2 << 20, true, Errno::ENOMEM),
            Some(Error::HugePagesUnavailable { .. })
        ));
        assert!(huge_page_error("t", 2 << 20, false, Errno::ENOMEM).is_none());
        assert!(huge_page_error("t", 2 << 20, true, Errno::EACCES).is_none());
    }
}
