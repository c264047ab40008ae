//! Errors: [`Errno`] for completed I/O, [`OpenError`] for opening an image.

use std::fmt;
use std::io;
use std::path::PathBuf;

/// A failed I/O's error number (positive, as in `errno.h`). Completions carry it rather
/// than an [`io::Error`] because the error policy classifies it (ENOSPC vs the rest) and
/// it must be `Copy` to report the same failure to several parties.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Errno(pub i32);

impl Errno {
    /// `EIO`.
    pub const EIO: Errno = Errno(libc::EIO);
    /// `ENOSPC`: the only error `werror=enospc` stops for.
    pub const ENOSPC: Errno = Errno(libc::ENOSPC);
    /// `ECANCELED`: a cancelled request's result.
    pub const ECANCELED: Errno = Errno(libc::ECANCELED);
    /// `EROFS`: a write to a read-only image.
    pub const EROFS: Errno = Errno(libc::EROFS);
    /// `EINVAL`.
    pub const EINVAL: Errno = Errno(libc::EINVAL);
    /// `EFAULT`: a guest address that is neither RAM nor a DMA-capable region.
    pub const EFAULT: Errno = Errno(libc::EFAULT);
    /// `EOPNOTSUPP`: an operation the backend does not offer.
    pub const EOPNOTSUPP: Errno = Errno(libc::EOPNOTSUPP);

    /// From an io_uring completion's negative result.
    pub fn from_cqe(res: i32) -> Errno {
        Errno(res.saturating_neg())
    }

    /// From an [`io::Error`] (`EIO` if it has no OS error number).
    pub fn from_io(e: &io::Error) -> Errno {
        Errno(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Errno({}: {})",
            self.0,
            io::Error::from_raw_os_error(self.0)
        )
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&io::Error::from_raw_os_error(self.0), f)
    }
}

impl std::error::Error for Errno {}

impl From<Errno> for io::Error {
    fn from(e: Errno) -> io::Error {
        io::Error::from_raw_os_error(e.0)
    }
}

/// Why an image could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The file does not exist.
    #[error("image {path}: no such file")]
    NotFound {
        /// The image.
        path: PathBuf,
    },
    /// The file exists but cannot be opened as asked (permissions, a read-only file
    /// system for a writable image, O_DIRECT unsupported by the file system).
    #[error("image {path}: cannot open {mode}: {source}")]
    Open {
        /// The image.
        path: PathBuf,
        /// What was asked: "read-only", "read-write", "with O_DIRECT".
        mode: &'static str,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Not a regular file or block device.
    #[error("image {path}: not a regular file or block device")]
    NotAFile {
        /// The image.
        path: PathBuf,
    },
    /// Smaller than one sector (or than the size the caller requires).
    #[error("image {path}: {size} bytes is too small (at least {min} needed)")]
    TooSmall {
        /// The image.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The minimum.
        min: u64,
    },
    /// This kernel's io_uring lacks an opcode the backend needs.
    #[error("io_uring lacks {0}, which a file image needs")]
    Unsupported(&'static str),
    /// Another OS error (fstat, the size ioctl, the alignment probe).
    #[error("image {path}: {source}")]
    Os {
        /// The image.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}
