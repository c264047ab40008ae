//! Raw image files (and block devices) on io_uring: buffered or O_DIRECT.
//!
//! O_DIRECT (`cache=none`, `cache.direct=on`) needs offsets, lengths and memory aligned
//! to what the file system asks for (`statx(STATX_DIOALIGN)`, else probed like QEMU's
//! `raw_probe_alignment`). Requests that do not fit take one of two slow paths, both
//! correct:
//! - aligned offset and length, unaligned memory (or more iovecs than `IOV_MAX`): the
//!   data goes through an aligned buffer of ours, still with O_DIRECT;
//! - unaligned offset or length: the request goes through a second, buffered descriptor
//!   of the same file. The kernel's page cache does the read-modify-write under its page
//!   locks, so two sub-block writes to one block cannot lose each other's data (which a
//!   naive RMW of ours could), and Linux writes back and invalidates cached pages before
//!   an O_DIRECT access to them, so the two descriptors stay coherent. `fdatasync`
//!   covers both.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use aio_context::{AioContext, FixedFile, OpOptions};
use io_uring::{opcode, types};

use crate::backend::{BackendInfo, BlockBackend, BlockOp, Done, OpKind, Ticket, check_op_sized};
use crate::drain::{Drain, DrainToken};
use crate::{AlignedBuf, Errno, IoBuffers, OpenError, copy_offload};

/// `IOV_MAX`: the most iovecs one `readv`/`writev` takes.
const IOV_MAX: usize = 1024;
/// `_IOR(0x12, 114, size_t)`.
const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
/// `_IO(0x12, 104)`.
const BLKSSZGET: libc::c_ulong = 0x1268;
/// `STATX_DIOALIGN` (Linux 6.1).
const STATX_DIOALIGN: u32 = 0x2000;
/// Chunk of the last-resort write-zeroes fallback (writing zeros).
const ZERO_CHUNK: u64 = 1 << 20;

/// How to open an image (QEMU's `driver=file` options).
#[derive(Clone, Debug)]
pub struct FileOptions {
    /// The image file or block device.
    pub path: PathBuf,
    /// Open read-only; writes then fail with `EROFS`.
    pub read_only: bool,
    /// Bypass the host page cache (O_DIRECT).
    pub direct: bool,
    /// The smallest acceptable size in bytes (at least one 512-byte sector).
    pub min_size: u64,
    /// Read and write guest RAM through io_uring registered buffers: each RAM block is
    /// registered (pinned) with the ring of the context that first does I/O into it,
    /// once, and O_DIRECT requests then skip the per-request page pinning
    /// (`READ_FIXED`/`WRITE_FIXED`; vectored requests need Linux 6.15). The cost: the
    /// whole block is faulted in and pinned at its first I/O, counted against
    /// `RLIMIT_MEMLOCK` (where that refuses it, I/O takes the plain path), and a removed
    /// block's memory stays pinned until that ring registers another block. Off by
    /// default; the environment variable `BLOCK_DMA_REGISTERED_BUFFERS=1` (or `0`)
    /// overrides it. DESIGN.md, "Registered buffers", has the measurements.
    pub registered_buffers: bool,
    /// Register the image's descriptors with the io_uring ring of each context that does
    /// I/O on them (`IORING_REGISTER_FILES`), so requests skip the per-request
    /// descriptor lookup (`fget`/`fput`). A dropped backend's file is closed in the
    /// kernel at each such context's next iteration, not at once. On by default; the
    /// environment variable `BLOCK_DMA_REGISTERED_FILES=0` (or `1`) overrides it.
    /// DESIGN.md, "Registered files", has the measurements.
    pub registered_files: bool,
}

impl FileOptions {
    /// Read-write, buffered, at least one sector.
    pub fn new(path: impl Into<PathBuf>) -> FileOptions {
        FileOptions {
            path: path.into(),
            read_only: false,
            direct: false,
            min_size: 512,
            registered_buffers: false,
            registered_files: true,
        }
    }

    /// Sets read-only.
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Sets O_DIRECT.
    pub fn direct(mut self, direct: bool) -> Self {
        self.direct = direct;
        self
    }

    /// Sets [`registered_buffers`](Self::registered_buffers).
    pub fn registered_buffers(mut self, on: bool) -> Self {
        self.registered_buffers = on;
        self
    }

    /// Sets [`registered_files`](Self::registered_files).
    pub fn registered_files(mut self, on: bool) -> Self {
        self.registered_files = on;
        self
    }
}

/// Overrides [`FileOptions::registered_buffers`] for every image: `1` or `0`.
pub(crate) const REGISTERED_BUFFERS_ENV: &str = "BLOCK_DMA_REGISTERED_BUFFERS";

/// Overrides [`FileOptions::registered_files`] for every image: `1` or `0`.
pub(crate) const REGISTERED_FILES_ENV: &str = "BLOCK_DMA_REGISTERED_FILES";

/// `options`' switch unless the environment variable `env` says `1` or `0`.
fn switch(env: &str, option: bool) -> bool {
    match std::env::var(env).as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => option,
    }
}

struct Files {
    /// The descriptor of the fast path (O_DIRECT if asked).
    main: FixedFile,
    /// With O_DIRECT: a buffered descriptor for unaligned requests.
    buffered: Option<FixedFile>,
    info: BackendInfo,
    /// The size now (`block_resize` changes it; see [`FileBackend::resize`]).
    size: AtomicU64,
    /// Serializes resizes (each one's truncate and publish go together).
    resizing: Mutex<()>,
    /// Requests in flight, for the drain before a shrink.
    drain: Arc<Drain>,
    /// A block device: its size is the device's, not ours to change.
    block_device: bool,
    /// Reads and writes of at least this many bytes go straight to io-wq workers
    /// (`copy_offload`; `u64::MAX`: none): on `main`, and on `buffered`.
    async_min: (u64, u64),
    /// Guest RAM goes through registered buffers on `main`.
    registered_buffers: bool,
    /// The descriptors are registered with the rings that do I/O on them.
    registered_files: bool,
}

/// A raw image on io_uring. Cheap to clone; in-flight operations keep the descriptors
/// open.
#[derive(Clone)]
pub struct FileBackend {
    files: Arc<Files>,
}

impl std::fmt::Debug for FileBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileBackend")
            .field("fd", &self.files.main.as_raw_fd())
            .field("info", &self.files.info)
            .finish()
    }
}

/// The opcodes a file image uses, probed once per process on a small ring.
struct Opcodes {
    rw_and_sync: bool,
    fallocate: bool,
    /// `READV_FIXED` and `WRITEV_FIXED` (Linux 6.15).
    vectored_fixed: bool,
}

fn opcodes() -> &'static Opcodes {
    static OPCODES: OnceLock<Opcodes> = OnceLock::new();
    OPCODES.get_or_init(|| {
        let mut probe = io_uring::Probe::new();
        let ok = io_uring::IoUring::new(2)
            .and_then(|ring| ring.submitter().register_probe(&mut probe))
            .is_ok();
        Opcodes {
            rw_and_sync: ok
                && [
                    opcode::Readv::CODE,
                    opcode::Writev::CODE,
                    opcode::Fsync::CODE,
                ]
                .iter()
                .all(|&c| probe.is_supported(c)),
            fallocate: ok && probe.is_supported(opcode::Fallocate::CODE),
            vectored_fixed: ok
                && probe.is_supported(opcode::ReadvFixed::CODE)
                && probe.is_supported(opcode::WritevFixed::CODE),
        }
    })
}

fn open_file(path: &Path, read_only: bool, direct: bool) -> io::Result<File> {
    let mut flags = libc::O_CLOEXEC;
    if direct {
        flags |= libc::O_DIRECT;
    }
    OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(flags)
        .open(path)
}

impl FileBackend {
    /// Opens an image.
    ///
    /// # Errors
    ///
    /// [`OpenError`]: a missing, unreadable or too-small image, one that is not a file
    /// or block device, O_DIRECT refused by its file system, or an io_uring without
    /// `readv`/`writev`/`fsync`.
    pub fn open(options: &FileOptions) -> Result<FileBackend, OpenError> {
        let path = &options.path;
        let ops = opcodes();
        if !ops.rw_and_sync {
            return Err(OpenError::Unsupported("readv/writev/fsync"));
        }
        let os = |source| OpenError::Os {
            path: path.clone(),
            source,
        };
        let meta = match std::fs::metadata(path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(OpenError::NotFound { path: path.clone() });
            }
            r => r.map_err(os)?,
        };
        let block_device = meta.file_type().is_block_device();
        if !meta.is_file() && !block_device {
            return Err(OpenError::NotAFile { path: path.clone() });
        }
        let mode = match (options.read_only, options.direct) {
            (_, true) => "with O_DIRECT",
            (true, false) => "read-only",
            (false, false) => "read-write",
        };
        let main = open_file(path, options.read_only, options.direct).map_err(|source| {
            OpenError::Open {
                path: path.clone(),
                mode,
                source,
            }
        })?;
        let size = if block_device {
            let mut size: u64 = 0;
            // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which is valid.
            if unsafe { libc::ioctl(main.as_raw_fd(), BLKGETSIZE64, &mut size) } < 0 {
                return Err(os(io::Error::last_os_error()));
            }
            size
        } else {
            meta.len()
        };
        let min = options.min_size.max(512);
        if size < min {
            return Err(OpenError::TooSmall {
                path: path.clone(),
                size,
                min,
            });
        }
        let (request_alignment, memory_alignment, buffered) = if options.direct {
            let (req, mem) = dio_alignment(&main, block_device).map_err(os)?;
            let buffered =
                open_file(path, options.read_only, false).map_err(|source| OpenError::Open {
                    path: path.clone(),
                    mode: "buffered (unaligned requests)",
                    source,
                })?;
            (req, mem, Some(buffered))
        } else {
            (1, 1, None)
        };
        let info = BackendInfo {
            size,
            read_only: options.read_only,
            request_alignment,
            memory_alignment,
            discard: ops.fallocate,
            write_zeroes: true,
            direct: options.direct,
        };
        let env = std::env::var(copy_offload::ENV).ok();
        let memory_copy = copy_offload::is_memory_copy(&main, options.direct, block_device);
        let async_min = (
            copy_offload::min_bytes(memory_copy, env.as_deref()),
            copy_offload::min_bytes(true, env.as_deref()),
        );
        let registered_buffers = switch(REGISTERED_BUFFERS_ENV, options.registered_buffers);
        let registered_files = switch(REGISTERED_FILES_ENV, options.registered_files);
        Ok(FileBackend {
            files: Arc::new(Files {
                main: FixedFile::new(main),
                buffered: buffered.map(FixedFile::new),
                size: AtomicU64::new(info.size),
                info,
                resizing: Mutex::new(()),
                drain: Arc::default(),
                block_device,
                async_min,
                registered_buffers,
                registered_files,
            }),
        })
    }
}

/// O_DIRECT's (request, memory) alignment: `statx(STATX_DIOALIGN)`, the logical block
/// size of a block device, or probed with reads of growing size (QEMU's
/// `raw_probe_alignment`); 4096 if nothing works.
fn dio_alignment(file: &File, block_device: bool) -> io::Result<(u32, u32)> {
    let fd = file.as_raw_fd();
    // SAFETY: `statx` is plain old data; zeroes are a valid value.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd, an empty C string with AT_EMPTY_PATH, and a valid out pointer.
    let r = unsafe {
        libc::statx(
            fd,
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            STATX_DIOALIGN,
            &mut stx,
        )
    };
    if r == 0 && stx.stx_mask & STATX_DIOALIGN != 0 && stx.stx_dio_offset_align != 0 {
        return Ok((stx.stx_dio_offset_align, stx.stx_dio_mem_align.max(1)));
    }
    if block_device {
        let mut ssz: libc::c_int = 0;
        // SAFETY: BLKSSZGET writes one int through the valid pointer.
        if unsafe { libc::ioctl(fd, BLKSSZGET, &mut ssz) } == 0 && ssz > 0 {
            return Ok((ssz as u32, ssz as u32));
        }
    }
    let mut buf = AlignedBuf::zeroed(4096, 4096);
    for size in [512usize, 1024, 2048, 4096] {
        // SAFETY: `buf` holds 4096 writable bytes, aligned to 4096.
        let r = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), size, 0) };
        if r >= 0 {
            return Ok((size as u32, size as u32));
        }
    }
    Ok((4096, 4096))
}

/// Which descriptor and buffers an in-flight read or write uses.
enum Path_ {
    /// O_DIRECT or buffered, on the caller's iovecs.
    Direct,
    /// O_DIRECT through our aligned copy of the data.
    Aligned(AlignedBuf),
    /// The buffered descriptor (unaligned offset or length under O_DIRECT).
    Buffered,
}

/// One operation in flight: owns everything the kernel may touch until its CQE.
///
/// It travels by value: into the context with [`AioContext::submit_with`] (whose box is
/// the one allocation per submission), back out to [`InFlight::complete`]. So the SQE
/// never points into the struct itself, only at memory it owns elsewhere: the caller's
/// buffers (kept by `bufs`), our aligned copies (heap), and `iov`'s heap buffer.
struct InFlight {
    files: Arc<Files>,
    kind: OpKind,
    offset: u64,
    len: u64,
    /// Bytes done so far (a short read or write is resubmitted for the rest).
    done_bytes: u64,
    bufs: Option<IoBuffers>,
    path: Path_,
    /// The iovecs of the current vectored submission (a resubmission skips what is done),
    /// on the heap, where moving the op does not move them. Unused (and unallocated) for
    /// the common single-buffer request, which is a plain READ or WRITE.
    iov: Vec<libc::iovec>,
    /// Write-zeroes fallbacks: 0 = ZERO_RANGE, 1 = PUNCH_HOLE, 2 = writing zeros.
    zero_stage: u8,
    zeros: Option<AlignedBuf>,
    done: Option<Done>,
    /// Counts the request for the drain before a shrink until it is dropped.
    _drain: DrainToken,
}

impl BlockBackend for FileBackend {
    fn info(&self) -> &BackendInfo {
        &self.files.info
    }

    fn submit(&self, ctx: &AioContext, op: BlockOp, done: Done) -> Result<Ticket, Errno> {
        // Counted before the size is read: see `Drain::enter`.
        let drain = self.files.drain.enter();
        // SeqCst: pairs with the stores in `resize`: a request checked against a grown
        // size runs on a file already truncated to that size, and one checked against
        // the size before a shrink is drained before the cut (`Drain::enter`).
        let size = self.files.size.load(Ordering::SeqCst);
        check_op_sized(&self.files.info, size, &op)?;
        let kind = op.kind();
        let (offset, len) = op.range().unwrap_or((0, 0));
        let unmap = matches!(op, BlockOp::WriteZeroes { unmap: true, .. });
        let bufs = op.into_bufs();
        let info = &self.files.info;
        let path = match &bufs {
            Some(b) if info.direct => {
                let req = u64::from(info.request_alignment);
                if offset % req != 0 || len % req != 0 {
                    Path_::Buffered
                } else if !b.is_aligned(info.memory_alignment as usize) || b.count() > IOV_MAX {
                    let mut copy = AlignedBuf::zeroed(len as usize, info.memory_alignment as usize);
                    if kind == OpKind::Write {
                        b.copy_to(&mut copy);
                    }
                    Path_::Aligned(copy)
                } else {
                    Path_::Direct
                }
            }
            Some(b) if b.count() > IOV_MAX => {
                let mut copy = AlignedBuf::zeroed(len as usize, 1);
                if kind == OpKind::Write {
                    b.copy_to(&mut copy);
                }
                Path_::Aligned(copy)
            }
            _ => Path_::Direct,
        };
        let op = InFlight {
            files: self.files.clone(),
            kind,
            offset,
            len,
            done_bytes: 0,
            bufs,
            path,
            iov: Vec::new(),
            zero_stage: u8::from(unmap),
            zeros: None,
            done: Some(done),
            _drain: drain,
        };
        submit(ctx, op)
            .map(Ticket::Uring)
            .map_err(|(_, errno)| errno)
    }

    fn size(&self) -> u64 {
        self.files.size.load(Ordering::Acquire)
    }

    /// Truncates the file (`ftruncate`). The order makes the size every new request
    /// is checked against safe at each instant: a shrink publishes the smaller size
    /// first (requests beyond it fail with `EINVAL` from then on), then drains the
    /// requests checked against the old size (they complete first, as QEMU drains the
    /// node around the truncate; new ones keep flowing), and cuts the file after; a
    /// growth extends the file first and publishes after. A block device keeps its
    /// size: only a resize to that size succeeds.
    fn resize(&self, size: u64) -> Result<(), Errno> {
        let files = &*self.files;
        let _one_at_a_time = files.resizing.lock().unwrap_or_else(|e| e.into_inner());
        let old = files.size.load(Ordering::Acquire);
        if files.info.read_only {
            return Err(Errno::EROFS);
        }
        if size == old {
            return Ok(());
        }
        if files.block_device {
            return Err(Errno::EOPNOTSUPP);
        }
        let len = i64::try_from(size).map_err(|_| Errno(libc::EFBIG))?;
        let truncate = || nix::unistd::ftruncate(&files.main, len).map_err(|e| Errno(e as i32));
        if size < old {
            // SeqCst: pairs with the load in `submit` (see `Drain::enter`).
            files.size.store(size, Ordering::SeqCst);
            files.drain.wait_old();
            truncate().inspect_err(|_| files.size.store(old, Ordering::SeqCst))
        } else {
            truncate()?;
            files.size.store(size, Ordering::SeqCst);
            Ok(())
        }
    }

    fn cancel(&self, ctx: &AioContext, ticket: Ticket) {
        let Ticket::Uring(id) = ticket;
        // A failure to queue the cancel leaves the op to complete normally.
        let _ = ctx.cancel_op(id);
    }
}

/// Builds the SQE for the current stage of `op` and submits it; gives `op` back (boxed:
/// the rare path pays for it, not every return) if it cannot be queued.
fn submit(ctx: &AioContext, mut op: InFlight) -> Result<aio_context::OpId, (Box<InFlight>, Errno)> {
    let (fd, fixed_file) = op.file(ctx);
    let entry = op.entry(ctx, fd);
    let opts = OpOptions {
        force_async: op.force_async(),
        fixed_file,
    };
    // SAFETY: every pointer in `entry` points into memory `op` owns outside itself (see
    // `InFlight`: `IoBuffers` keeps guest RAM mapped and bounce buffers alive, `AlignedBuf`s
    // and `iov` are heap buffers that stay put when `op` moves), and the fd is kept open by
    // `op.files`. The context keeps `op` until the CQE (and on teardown drops it only after
    // the kernel let go); a failed submit hands it back here, never queued.
    match unsafe { ctx.submit_with_opts(entry, opts, op, InFlight::complete) } {
        Ok(id) => Ok(id),
        Err((e, op)) => Err((Box::new(op), Errno::from_io(&e))),
    }
}

impl InFlight {
    /// Whether what is left of this request goes straight to an io-wq worker: a read or
    /// write of at least `async_min` bytes (`copy_offload`).
    fn force_async(&self) -> bool {
        let (main, buffered) = self.files.async_min;
        let min = match self.path {
            Path_::Buffered => buffered,
            _ => main,
        };
        matches!(self.kind, OpKind::Read | OpKind::Write) && self.len - self.done_bytes >= min
    }

    /// What the SQE names the file by: its slot in `ctx`'s table of registered files
    /// (and `true`: `IOSQE_FIXED_FILE`) where registered files are on and the ring has
    /// it, else its descriptor.
    fn file(&self, ctx: &AioContext) -> (types::Fd, bool) {
        let file = match (&self.path, &self.files.buffered) {
            (Path_::Buffered, Some(b)) => b,
            _ => &self.files.main,
        };
        if self.files.registered_files {
            if let Some(slot) = ctx.fixed_file(file) {
                // The table has 256 slots: the index fits.
                return (types::Fd(slot as RawFd), true);
            }
        }
        (types::Fd(file.as_raw_fd()), false)
    }

    /// The registered buffer of `ctx`'s ring that holds every iovec of `iov`, all of
    /// them in the guest RAM block of this request's buffers, where registered buffers
    /// are on (checked first: the plain path pays one branch).
    fn fixed_buffer(&self, ctx: &AioContext, iov: &[libc::iovec]) -> Option<u16> {
        if !self.files.registered_buffers || !matches!(self.path, Path_::Direct) {
            return None;
        }
        let block = self.bufs.as_ref()?.single_ram_block()?;
        let (ptr, len) = span(iov)?;
        // SAFETY: a RAM block's mapping `[host_address, + size)` is readable and writable
        // guest memory for as long as the block lives (ram-block's contract), and it is
        // the same region on every call for that block.
        unsafe { ctx.fixed_buffer(block, block.host_address(), block.size() as usize, ptr, len) }
    }

    /// The SQE for what is left to do on the file `fd` names (see [`InFlight::file`]),
    /// on `ctx`'s ring. Its pointers point at memory `self` owns outside itself (see
    /// [`InFlight`]).
    fn entry(&mut self, ctx: &AioContext, fd: types::Fd) -> io_uring::squeue::Entry {
        let offset = self.offset + self.done_bytes;
        match self.kind {
            OpKind::Read | OpKind::Write => {
                let skip = self.done_bytes as usize;
                // One buffer: a plain READ/WRITE, which needs no iovec array.
                let single = match (&mut self.path, &self.bufs) {
                    (Path_::Aligned(buf), _) => Some(libc::iovec {
                        // SAFETY: `skip` < the buffer's length (only a short transfer of
                        // it is resubmitted).
                        iov_base: unsafe { buf.as_mut_ptr().add(skip) }.cast(),
                        iov_len: buf.len() - skip,
                    }),
                    (_, Some(bufs)) if bufs.count() == 1 => {
                        let v = bufs.iovecs()[0];
                        Some(libc::iovec {
                            // SAFETY: `skip` < `iov_len` (only a short transfer is
                            // resubmitted): still inside the same buffer.
                            iov_base: unsafe { v.iov_base.cast::<u8>().add(skip) }.cast(),
                            iov_len: v.iov_len - skip,
                        })
                    }
                    _ => None,
                };
                if let Some(v) = single.filter(|v| u32::try_from(v.iov_len).is_ok()) {
                    let (ptr, n) = (v.iov_base.cast::<u8>(), v.iov_len as u32);
                    let fixed = self.fixed_buffer(ctx, &[v]);
                    return match (self.kind, fixed) {
                        (OpKind::Read, Some(index)) => opcode::ReadFixed::new(fd, ptr, n, index)
                            .offset(offset)
                            .build(),
                        (OpKind::Read, None) => {
                            opcode::Read::new(fd, ptr, n).offset(offset).build()
                        }
                        (_, Some(index)) => opcode::WriteFixed::new(fd, ptr, n, index)
                            .offset(offset)
                            .build(),
                        (_, None) => opcode::Write::new(fd, ptr, n).offset(offset).build(),
                    };
                }
                self.iov.clear();
                match (single, &self.bufs) {
                    (Some(v), _) => self.iov.push(v),
                    (None, Some(bufs)) => skip_iovecs(bufs.iovecs(), skip, &mut self.iov),
                    (None, None) => {}
                }
                let (ptr, n) = (self.iov.as_ptr(), self.iov.len() as u32);
                let fixed = opcodes()
                    .vectored_fixed
                    .then(|| self.fixed_buffer(ctx, &self.iov))
                    .flatten();
                match (self.kind, fixed) {
                    (OpKind::Read, Some(index)) => opcode::ReadvFixed::new(fd, ptr, n, index)
                        .offset(offset)
                        .build(),
                    (OpKind::Read, None) => opcode::Readv::new(fd, ptr, n).offset(offset).build(),
                    (_, Some(index)) => opcode::WritevFixed::new(fd, ptr, n, index)
                        .offset(offset)
                        .build(),
                    (_, None) => opcode::Writev::new(fd, ptr, n).offset(offset).build(),
                }
            }
            OpKind::Flush => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            OpKind::Discard => opcode::Fallocate::new(fd, self.len)
                .offset(offset)
                .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                .build(),
            OpKind::WriteZeroes => match self.zero_stage {
                0 => opcode::Fallocate::new(fd, self.len)
                    .offset(offset)
                    .mode(libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE)
                    .build(),
                1 => opcode::Fallocate::new(fd, self.len)
                    .offset(offset)
                    .mode(libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE)
                    .build(),
                _ => {
                    let chunk = (self.len - self.done_bytes).min(ZERO_CHUNK) as usize;
                    let align = self.files.info.memory_alignment.max(512) as usize;
                    let zeros = self
                        .zeros
                        .get_or_insert_with(|| AlignedBuf::zeroed(ZERO_CHUNK as usize, align));
                    opcode::Write::new(fd, zeros.as_mut_ptr(), chunk as u32)
                        .offset(offset)
                        .build()
                }
            },
        }
    }

    /// The CQE of the current stage: finish, or resubmit the rest.
    fn complete(mut self, res: i32) {
        if res < 0 {
            let errno = Errno::from_cqe(res);
            let unsupported = errno.0 == libc::EOPNOTSUPP || errno.0 == libc::ENOTTY;
            match self.kind {
                // Discard is advisory (QEMU ignores ENOTSUP too).
                OpKind::Discard if unsupported => return self.finish(Ok(0)),
                OpKind::WriteZeroes if unsupported && self.zero_stage < 2 => {
                    // Punching a hole reads back zeros from a raw file, so it may stand in
                    // even without UNMAP; a block device may not do it, and the last
                    // resort writes zeros.
                    self.zero_stage += 1;
                    return self.resubmit();
                }
                _ => return self.finish(Err(errno)),
            }
        }
        let res = res as u64;
        match self.kind {
            OpKind::Read | OpKind::Write => {
                if res == 0 {
                    // EOF on a read of a file that shrank, or a write that makes no progress.
                    return self.finish(Err(Errno::EIO));
                }
                self.done_bytes += res;
                if self.done_bytes < self.len {
                    return self.resubmit();
                }
                let total = self.done_bytes;
                if let (OpKind::Read, Path_::Aligned(buf), Some(bufs)) =
                    (self.kind, &self.path, &mut self.bufs)
                {
                    bufs.copy_from(buf);
                }
                self.finish(Ok(total))
            }
            OpKind::WriteZeroes if self.zero_stage >= 2 => {
                self.done_bytes += res;
                if res == 0 {
                    return self.finish(Err(Errno::EIO));
                }
                if self.done_bytes < self.len {
                    return self.resubmit();
                }
                self.finish(Ok(0))
            }
            _ => self.finish(Ok(0)),
        }
    }

    /// Submits the next stage (the rest of a short transfer, a write-zeroes fallback).
    fn resubmit(self) {
        // Completions run inside their context's poll, on its thread.
        let Some(ctx) = AioContext::current() else {
            return self.finish(Err(Errno::EIO));
        };
        if let Err((op, errno)) = submit(&ctx, self) {
            op.finish(Err(errno));
        }
    }

    fn finish(mut self, result: Result<u64, Errno>) {
        if let Some(done) = self.done.take() {
            done(result, self.bufs.take());
        }
    }
}

/// The lowest address and the length up to the highest end of a non-empty `iov`: the
/// range a registered buffer must hold for a fixed request.
fn span(iov: &[libc::iovec]) -> Option<(*const u8, usize)> {
    let lo = iov.iter().map(|v| v.iov_base as usize).min()?;
    let hi = iov.iter().map(|v| v.iov_base as usize + v.iov_len).max()?;
    Some((lo as *const u8, hi - lo))
}

/// Appends the iovecs of `iov` after skipping `skip` bytes to `out`.
fn skip_iovecs(iov: &[libc::iovec], mut skip: usize, out: &mut Vec<libc::iovec>) {
    for v in iov {
        if skip >= v.iov_len {
            skip -= v.iov_len;
            continue;
        }
        out.push(libc::iovec {
            // SAFETY: `skip` < `iov_len`: still inside the same buffer.
            iov_base: unsafe { v.iov_base.cast::<u8>().add(skip) }.cast(),
            iov_len: v.iov_len - skip,
        });
        skip = 0;
    }
}
