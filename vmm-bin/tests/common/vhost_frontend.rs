//! A raw vhost-user-blk frontend for integration tests: it speaks the protocol byte by
//! byte, so a test can play an ordinary frontend (negotiate, share a memfd as guest
//! memory, run split virtqueues, keep N requests in flight) and a hostile one
//! (arbitrary headers, wrong sizes, too many fds, queues stopped or reset with I/O in
//! flight, memory truncated under the backend).
//!
//! The framing is our own (a 12-byte header, the payload, fds as `SCM_RIGHTS`) rather
//! than the `vhost` crate's `Frontend`: that type validates what it sends and keeps its
//! endpoint private, so it cannot send the malformed messages these tests need. The
//! payload layouts still come from `vhost::vhost_user::message`.
//!
//! ```ignore
//! let export = Export::start(&image, &sock, "");
//! let mut f = Frontend::start(&sock, &Options::default())?;
//! let tags: Vec<u16> = (0..32).map(|i| f.post(0, Io::Read { sector: i * 8, len: 4096 })).collect();
//! f.kick(0);
//! let done = f.wait(0, tags.len(), TIMEOUT)?;
//! ```
//!
//! Guest-physical addresses start at 0 in one memfd region; the frontend's "user
//! address" of guest byte `gpa` is this process's mapping address plus `gpa`, as for
//! QEMU. Killing a frontend process is the same, for the backend, as dropping a
//! [`Frontend`] without any goodbye: the socket closes, the fds close, and the memfd
//! stays alive as long as the backend maps it.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering, fence};
use std::time::{Duration, Instant};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::mman::{MapFlags, ProtFlags, mmap, munmap};
use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
use vhost::vhost_user::message::{
    FrontendReq, VhostUserConfig, VhostUserConfigFlags, VhostUserMemory, VhostUserMemoryRegion,
    VhostUserU64, VhostUserVringAddr, VhostUserVringAddrFlags, VhostUserVringState,
};
use vm_memory::ByteValued;

use super::Vm;

/// `VHOST_USER_F_PROTOCOL_FEATURES`.
pub(crate) const F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// `VIRTIO_F_VERSION_1`.
pub(crate) const F_VERSION_1: u64 = 1 << 32;
/// `VIRTIO_BLK_F_FLUSH`.
pub(crate) const F_BLK_FLUSH: u64 = 1 << 9;
/// `VIRTIO_BLK_F_MQ`.
pub(crate) const F_BLK_MQ: u64 = 1 << 12;
/// The virtio features this frontend accepts when offered (no event index: every
/// request notifies).
pub(crate) const WANTED_FEATURES: u64 =
    F_PROTOCOL_FEATURES | F_VERSION_1 | F_INDIRECT_DESC | F_BLK_FLUSH | F_BLK_MQ | 1 << 6 | 1 << 2;
/// Protocol features: MQ, REPLY_ACK, CONFIG.
pub(crate) const WANTED_PROTOCOL_FEATURES: u64 = 1 << 0 | 1 << 3 | 1 << 9;
/// `REPLY_ACK`.
const PROTOCOL_REPLY_ACK: u64 = 1 << 3;

/// Header flags: protocol version 1.
pub(crate) const HDR_VERSION: u32 = 0x1;
/// Header flags: this is a reply.
pub(crate) const HDR_REPLY: u32 = 0x4;
/// Header flags: the frontend wants a reply (`REPLY_ACK`).
pub(crate) const HDR_NEED_REPLY: u32 = 0x8;
/// The `SET_VRING_KICK`/`CALL` payload bit that says "no fd".
pub(crate) const VRING_NOFD: u64 = 0x100;

/// Descriptor flag: another descriptor follows.
pub(crate) const DESC_NEXT: u16 = 1;
/// Descriptor flag: device-writable.
pub(crate) const DESC_WRITE: u16 = 2;
/// Descriptor flag: the buffer is a table of descriptors.
pub(crate) const DESC_INDIRECT: u16 = 4;
/// `VIRTIO_RING_F_INDIRECT_DESC`.
pub(crate) const F_INDIRECT_DESC: u64 = 1 << 28;

/// virtio-blk request types and statuses.
pub(crate) const T_IN: u32 = 0;
/// Write.
pub(crate) const T_OUT: u32 = 1;
/// Flush.
pub(crate) const T_FLUSH: u32 = 4;
/// Device ID.
pub(crate) const T_GET_ID: u32 = 8;
/// Status: success.
pub(crate) const S_OK: u8 = 0;
/// Status: I/O error.
pub(crate) const S_IOERR: u8 = 1;

/// How long a test waits for a reply or a completion before calling it a hang.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(20);

const PAGE: u64 = 4096;

fn align_up(x: u64, a: u64) -> u64 {
    x.div_ceil(a) * a
}

fn other(msg: impl Into<String>) -> io::Error {
    io::Error::other(msg.into())
}

/// Guest memory: a memfd mapped shared in this process.
pub(crate) struct GuestMemory {
    memfd: OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is plain shared memory owned by this value; every access goes
// through bounds-checked copies or atomics.
unsafe impl Send for GuestMemory {}

impl GuestMemory {
    /// A zeroed memfd of `len` bytes (rounded up to a page), mapped read-write.
    pub(crate) fn new(len: u64) -> io::Result<GuestMemory> {
        use nix::sys::memfd::{MFdFlags, memfd_create};
        let len = align_up(len, PAGE);
        let memfd = memfd_create(
            "vhost-test-guest",
            MFdFlags::MFD_CLOEXEC | MFdFlags::MFD_ALLOW_SEALING,
        )?;
        nix::unistd::ftruncate(&memfd, len as i64)?;
        let size = std::num::NonZeroUsize::new(len as usize).ok_or_else(|| other("empty"))?;
        // SAFETY: a fresh shared mapping of a memfd we own, at an address the kernel
        // picks; nothing else in this process aliases it.
        let ptr = unsafe {
            mmap(
                None,
                size,
                ProtFlags::PROT_READ | ProtFlags::PROT_WRITE,
                MapFlags::MAP_SHARED,
                &memfd,
                0,
            )
        }?;
        Ok(GuestMemory {
            memfd,
            ptr: ptr.cast(),
            len: len as usize,
        })
    }

    /// The memfd (to send, seal or truncate).
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }

    /// Size in bytes.
    pub(crate) fn len(&self) -> u64 {
        self.len as u64
    }

    /// The frontend's virtual address of guest-physical `gpa`.
    pub(crate) fn uaddr(&self, gpa: u64) -> u64 {
        self.ptr.as_ptr() as u64 + gpa
    }

    fn check(&self, gpa: u64, n: usize) -> usize {
        let end = gpa.checked_add(n as u64).expect("guest range overflows");
        assert!(
            end <= self.len as u64,
            "guest range {gpa:#x}+{n} outside memory"
        );
        gpa as usize
    }

    /// Copies `data` to guest-physical `gpa`.
    pub(crate) fn write(&self, gpa: u64, data: &[u8]) {
        let off = self.check(gpa, data.len());
        // SAFETY: `check` keeps [off, off + len) inside the live mapping; the source is
        // a distinct Rust slice. The backend may read the bytes concurrently: that is
        // shared memory between processes, ordered by the fences around ring updates.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(off), data.len())
        };
    }

    /// Reads `len` bytes at guest-physical `gpa`.
    pub(crate) fn read(&self, gpa: u64, len: usize) -> Vec<u8> {
        let off = self.check(gpa, len);
        let mut out = vec![0u8; len];
        // SAFETY: as in `write`, with the copy going the other way.
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.as_ptr().add(off), out.as_mut_ptr(), len) };
        out
    }

    fn atomic_u16(&self, gpa: u64) -> &AtomicU16 {
        let off = self.check(gpa, 2);
        assert_eq!(off % 2, 0, "unaligned ring index");
        // SAFETY: in bounds and 2-byte aligned (checked above); the mapping lives as
        // long as `self`, and the backend accesses the word only atomically too (virtio
        // ring indices).
        unsafe { AtomicU16::from_ptr(self.ptr.as_ptr().add(off).cast()) }
    }

    fn write_u16(&self, gpa: u64, v: u16) {
        self.write(gpa, &v.to_le_bytes());
    }

    fn read_u32(&self, gpa: u64) -> u32 {
        u32::from_le_bytes(self.read(gpa, 4).try_into().unwrap())
    }
}

impl Drop for GuestMemory {
    fn drop(&mut self) {
        // SAFETY: exactly the mapping `new` created; no reference into it outlives
        // `self` (all accessors borrow `self`).
        let _ = unsafe { munmap(self.ptr.cast(), self.len) };
    }
}

/// What a frontend sets up.
#[derive(Clone, Debug)]
pub(crate) struct Options {
    /// Queues to run (each gets its own ring).
    pub(crate) num_queues: u16,
    /// Ring size (power of two, at least `3 * depth`).
    pub(crate) queue_size: u16,
    /// Requests a queue can have in flight (each owns a data buffer).
    pub(crate) depth: usize,
    /// Bytes of each request's data buffer.
    pub(crate) max_io: u64,
    /// Free guest memory at [`Frontend::scratch`] for hand-made chains.
    pub(crate) scratch: u64,
}

impl Default for Options {
    fn default() -> Options {
        Options {
            num_queues: 1,
            queue_size: 128,
            depth: 32,
            max_io: 64 * 1024,
            scratch: 1 << 20,
        }
    }
}

/// One block request.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Io<'a> {
    /// Read `len` bytes at `sector`.
    Read {
        /// 512-byte sector.
        sector: u64,
        /// Bytes (at most `max_io`).
        len: u64,
    },
    /// Write `data` at `sector`.
    Write {
        /// 512-byte sector.
        sector: u64,
        /// At most `max_io` bytes.
        data: &'a [u8],
    },
    /// Flush.
    Flush,
    /// Device ID (20 bytes).
    GetId,
}

/// One descriptor of a hand-made chain ([`Frontend::post_chain`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawDesc {
    /// Guest-physical address.
    pub(crate) addr: u64,
    /// Length.
    pub(crate) len: u32,
    /// Device-writable.
    pub(crate) write: bool,
}

/// A used-ring entry, with what the request left in memory.
#[derive(Clone, Debug)]
pub(crate) struct Completion {
    /// The chain's head descriptor (what [`Frontend::post`] returned).
    pub(crate) head: u16,
    /// The used length the backend reported.
    pub(crate) used_len: u32,
    /// The status byte (`None` for hand-made chains).
    pub(crate) status: Option<u8>,
    /// Read data (reads and GET_ID).
    pub(crate) data: Vec<u8>,
}

struct InFlight {
    descs: Vec<u16>,
    /// Data buffer slot and the status byte's address (requests from `post`).
    slot: Option<(usize, u64)>,
    read_len: usize,
}

/// One split virtqueue in guest memory.
pub(crate) struct Virtqueue {
    /// Queue size.
    pub(crate) size: u16,
    /// Guest-physical addresses of the descriptor table, avail and used rings.
    pub(crate) desc: u64,
    /// Avail ring.
    pub(crate) avail: u64,
    /// Used ring.
    pub(crate) used: u64,
    slots: u64,
    free_desc: Vec<u16>,
    free_slots: Vec<usize>,
    avail_idx: u16,
    last_used: u16,
    in_flight: HashMap<u16, InFlight>,
    /// The kick eventfd (the backend holds a copy).
    pub(crate) kick: EventFd,
    /// The call eventfd (the backend holds a copy).
    pub(crate) call: EventFd,
}

/// Bytes a queue's rings and buffers take in guest memory.
fn queue_bytes(o: &Options) -> u64 {
    let n = u64::from(o.queue_size);
    let rings = align_up(16 * n, PAGE) + align_up(6 + 2 * n, PAGE) + align_up(6 + 8 * n, PAGE);
    rings + o.depth as u64 * slot_bytes(o)
}

fn slot_bytes(o: &Options) -> u64 {
    align_up(o.max_io + 16 + 1, 512)
}

/// A vhost-user-blk frontend over one connection.
pub(crate) struct Frontend {
    sock: UnixStream,
    mem: GuestMemory,
    opts: Options,
    queues: Vec<Virtqueue>,
    /// Virtio features acked.
    pub(crate) features: u64,
    /// Protocol features acked.
    pub(crate) protocol_features: u64,
}

impl Frontend {
    /// Connects to `path` (retrying until [`TIMEOUT`] while nobody listens) and
    /// allocates guest memory for `opts`; sends nothing.
    pub(crate) fn connect(path: &Path, opts: &Options) -> io::Result<Frontend> {
        assert!(
            usize::from(opts.queue_size) >= 3 * opts.depth,
            "a ring of {} cannot hold {} three-descriptor requests",
            opts.queue_size,
            opts.depth
        );
        let deadline = Instant::now() + TIMEOUT;
        let sock = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e)
                    if Instant::now() < deadline && e.kind() != io::ErrorKind::PermissionDenied =>
                {
                    std::thread::sleep(Duration::from_millis(20))
                }
                Err(e) => return Err(e),
            }
        };
        sock.set_read_timeout(Some(TIMEOUT))?;
        sock.set_write_timeout(Some(TIMEOUT))?;
        let mem = GuestMemory::new(u64::from(opts.num_queues) * queue_bytes(opts) + opts.scratch)?;
        Ok(Frontend {
            sock,
            mem,
            opts: opts.clone(),
            queues: Vec::new(),
            features: 0,
            protocol_features: 0,
        })
    }

    /// [`connect`](Self::connect), [`negotiate`](Self::negotiate),
    /// [`set_mem_table`](Self::set_mem_table) and every queue set up and enabled:
    /// ready for I/O.
    pub(crate) fn start(path: &Path, opts: &Options) -> io::Result<Frontend> {
        let mut f = Frontend::connect(path, opts)?;
        f.negotiate()?;
        f.set_mem_table()?;
        for q in 0..opts.num_queues {
            f.setup_queue(q)?;
        }
        Ok(f)
    }

    /// The guest memory.
    pub(crate) fn mem(&self) -> &GuestMemory {
        &self.mem
    }

    /// The socket (to shut down, or to clone for a second sender).
    pub(crate) fn socket(&self) -> &UnixStream {
        &self.sock
    }

    /// Queue `q`'s state (its rings' addresses, its eventfds).
    pub(crate) fn queue(&self, q: u16) -> &Virtqueue {
        &self.queues[usize::from(q)]
    }

    /// Guest-physical start of the free area for hand-made chains (`Options::scratch`
    /// bytes).
    pub(crate) fn scratch(&self) -> u64 {
        u64::from(self.opts.num_queues) * queue_bytes(&self.opts)
    }

    // ---- messages -------------------------------------------------------------

    /// Sends one message: a header with `request`, `flags` and `size` (normally
    /// `payload.len()`; anything, to lie), the payload and `fds`.
    pub(crate) fn send_raw(
        &self,
        request: u32,
        flags: u32,
        size: u32,
        payload: &[u8],
        fds: &[RawFd],
    ) -> io::Result<()> {
        let mut msg = Vec::with_capacity(12 + payload.len());
        msg.extend_from_slice(&request.to_le_bytes());
        msg.extend_from_slice(&flags.to_le_bytes());
        msg.extend_from_slice(&size.to_le_bytes());
        msg.extend_from_slice(payload);
        self.send_segment(&msg, fds)
    }

    /// Sends `bytes` in one `sendmsg` with `fds` attached, whatever message boundaries
    /// they cross (a part of a message, or several).
    pub(crate) fn send_segment(&self, bytes: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let iov = [io::IoSlice::new(bytes)];
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        let n = sendmsg::<()>(
            self.sock.as_raw_fd(),
            &iov,
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )?;
        if n != bytes.len() {
            return Err(other(format!("short send: {n} of {}", bytes.len())));
        }
        Ok(())
    }

    /// Sends `request` with `payload` and `fds` (header flags: version, plus
    /// NEED_REPLY when `need_reply`).
    pub(crate) fn send(
        &self,
        request: FrontendReq,
        payload: &[u8],
        fds: &[RawFd],
        need_reply: bool,
    ) -> io::Result<()> {
        let flags = HDR_VERSION | if need_reply { HDR_NEED_REPLY } else { 0 };
        self.send_raw(request.into(), flags, payload.len() as u32, payload, fds)
    }

    /// Reads one reply to `request`; `TimedOut` after [`TIMEOUT`], `UnexpectedEof`
    /// when the backend closed the connection.
    pub(crate) fn recv_reply(&mut self, request: FrontendReq) -> io::Result<Vec<u8>> {
        let mut hdr = [0u8; 12];
        self.sock.read_exact(&mut hdr)?;
        let word = |i: usize| u32::from_le_bytes(hdr[i..i + 4].try_into().unwrap());
        let (req, flags, size) = (word(0), word(4), word(8));
        if req != u32::from(request) || flags & HDR_REPLY == 0 || size > 4096 {
            return Err(other(format!(
                "bad reply header to {request:?}: request {req} flags {flags:#x} size {size}"
            )));
        }
        let mut body = vec![0u8; size as usize];
        self.sock.read_exact(&mut body)?;
        Ok(body)
    }

    /// Sends a request that has a reply and returns the reply's payload.
    pub(crate) fn request(
        &mut self,
        request: FrontendReq,
        payload: &[u8],
        fds: &[RawFd],
    ) -> io::Result<Vec<u8>> {
        self.send(request, payload, fds, false)?;
        self.recv_reply(request)
    }

    /// Sends a request without a reply of its own; with REPLY_ACK negotiated, waits
    /// for the ack and turns a non-zero one into an error.
    pub(crate) fn command(
        &mut self,
        request: FrontendReq,
        payload: &[u8],
        fds: &[RawFd],
    ) -> io::Result<()> {
        let ack = self.protocol_features & PROTOCOL_REPLY_ACK != 0;
        self.send(request, payload, fds, ack)?;
        if ack {
            let status = u64_of(&self.recv_reply(request)?)?;
            if status != 0 {
                return Err(other(format!("the backend refused {request:?} ({status})")));
            }
        }
        Ok(())
    }

    /// Whether the backend closed the connection within `timeout` (anything it still
    /// sends before closing is read and dropped).
    pub(crate) fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 256];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || self.sock.set_read_timeout(Some(left)).is_err() {
                return false;
            }
            match self.sock.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    /// `GET_FEATURES`.
    pub(crate) fn get_features(&mut self) -> io::Result<u64> {
        u64_of(&self.request(FrontendReq::GET_FEATURES, &[], &[])?)
    }

    /// SET_OWNER, features (`WANTED_FEATURES` of what is offered) and protocol
    /// features (`WANTED_PROTOCOL_FEATURES` of what is offered).
    pub(crate) fn negotiate(&mut self) -> io::Result<()> {
        self.send(FrontendReq::SET_OWNER, &[], &[], false)?;
        let offered = self.get_features()?;
        if offered & F_PROTOCOL_FEATURES == 0 {
            return Err(other("the backend offers no protocol features"));
        }
        let features = offered & WANTED_FEATURES;
        self.send(
            FrontendReq::SET_FEATURES,
            VhostUserU64::new(features).as_slice(),
            &[],
            false,
        )?;
        self.features = features;
        let proto = u64_of(&self.request(FrontendReq::GET_PROTOCOL_FEATURES, &[], &[])?)?;
        let proto = proto & WANTED_PROTOCOL_FEATURES;
        self.send(
            FrontendReq::SET_PROTOCOL_FEATURES,
            VhostUserU64::new(proto).as_slice(),
            &[],
            false,
        )?;
        self.protocol_features = proto;
        // A message with a reply: everything above has been handled.
        self.get_features().map(drop)
    }

    /// `SET_MEM_TABLE` with the whole guest memory as one region.
    pub(crate) fn set_mem_table(&mut self) -> io::Result<()> {
        let region = VhostUserMemoryRegion::new(0, self.mem.len(), self.mem.uaddr(0), 0);
        let fd = self.mem.fd().as_raw_fd();
        self.set_mem_table_raw(&[region], &[fd])
    }

    /// `SET_MEM_TABLE` with hand-made regions and fds.
    pub(crate) fn set_mem_table_raw(
        &mut self,
        regions: &[VhostUserMemoryRegion],
        fds: &[RawFd],
    ) -> io::Result<()> {
        let mut payload = VhostUserMemory::new(regions.len() as u32)
            .as_slice()
            .to_vec();
        for r in regions {
            payload.extend_from_slice(r.as_slice());
        }
        self.command(FrontendReq::SET_MEM_TABLE, &payload, fds)
    }

    /// `GET_CONFIG` of `size` bytes at `offset`.
    pub(crate) fn get_config(&mut self, offset: u32, size: u32) -> io::Result<Vec<u8>> {
        let mut payload = VhostUserConfig::new(offset, size, VhostUserConfigFlags::empty())
            .as_slice()
            .to_vec();
        payload.resize(payload.len() + size as usize, 0);
        let reply = self.request(FrontendReq::GET_CONFIG, &payload, &[])?;
        let head = std::mem::size_of::<VhostUserConfig>();
        reply
            .get(head..)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| other("short GET_CONFIG reply"))
    }

    /// The disk's capacity in 512-byte sectors (config space offset 0).
    pub(crate) fn capacity(&mut self) -> io::Result<u64> {
        u64_of(&self.get_config(0, 8)?)
    }

    /// `SET_VRING_NUM`.
    pub(crate) fn set_vring_num(&mut self, q: u16, num: u16) -> io::Result<()> {
        let m = VhostUserVringState::new(u32::from(q), u32::from(num));
        self.command(FrontendReq::SET_VRING_NUM, m.as_slice(), &[])
    }

    /// `SET_VRING_ADDR` with guest-physical addresses (sent as frontend addresses).
    pub(crate) fn set_vring_addr(
        &mut self,
        q: u16,
        desc: u64,
        avail: u64,
        used: u64,
    ) -> io::Result<()> {
        let m = VhostUserVringAddr {
            index: u32::from(q),
            flags: VhostUserVringAddrFlags::empty().bits(),
            descriptor: self.mem.uaddr(desc),
            used: self.mem.uaddr(used),
            available: self.mem.uaddr(avail),
            log: 0,
        };
        self.command(FrontendReq::SET_VRING_ADDR, m.as_slice(), &[])
    }

    /// `SET_VRING_BASE`.
    pub(crate) fn set_vring_base(&mut self, q: u16, base: u16) -> io::Result<()> {
        let m = VhostUserVringState::new(u32::from(q), u32::from(base));
        self.command(FrontendReq::SET_VRING_BASE, m.as_slice(), &[])
    }

    /// `SET_VRING_KICK` or `SET_VRING_CALL` (`request`) with `fd`, or with the NOFD
    /// bit when `None`.
    pub(crate) fn set_vring_fd(
        &mut self,
        request: FrontendReq,
        q: u16,
        fd: Option<RawFd>,
    ) -> io::Result<()> {
        let word = u64::from(q) | if fd.is_none() { VRING_NOFD } else { 0 };
        let fds: Vec<RawFd> = fd.into_iter().collect();
        self.command(request, VhostUserU64::new(word).as_slice(), &fds)
    }

    /// `SET_VRING_ENABLE`.
    pub(crate) fn set_vring_enable(&mut self, q: u16, on: bool) -> io::Result<()> {
        let m = VhostUserVringState::new(u32::from(q), u32::from(on));
        self.command(FrontendReq::SET_VRING_ENABLE, m.as_slice(), &[])
    }

    /// `GET_VRING_BASE`: stops the queue (after its in-flight requests) and returns
    /// its next avail index.
    pub(crate) fn get_vring_base(&mut self, q: u16) -> io::Result<u32> {
        let m = VhostUserVringState::new(u32::from(q), 0);
        let reply = self.request(FrontendReq::GET_VRING_BASE, m.as_slice(), &[])?;
        let state = reply
            .get(4..8)
            .ok_or_else(|| other("short GET_VRING_BASE reply"))?;
        Ok(u32::from_le_bytes(state.try_into().unwrap()))
    }

    /// `RESET_OWNER` (acked when REPLY_ACK is on).
    pub(crate) fn reset_owner(&mut self) -> io::Result<()> {
        self.command(FrontendReq::RESET_OWNER, &[], &[])
    }

    // ---- queues ---------------------------------------------------------------

    /// Lays out queue `q` in guest memory (zeroed rings, fresh eventfds) and sends
    /// NUM, ADDR, BASE 0, CALL, KICK and ENABLE for it.
    pub(crate) fn setup_queue(&mut self, q: u16) -> io::Result<()> {
        let o = &self.opts;
        let n = u64::from(o.queue_size);
        let base = u64::from(q) * queue_bytes(o);
        let desc = base;
        let avail = desc + align_up(16 * n, PAGE);
        let used = avail + align_up(6 + 2 * n, PAGE);
        let slots = used + align_up(6 + 8 * n, PAGE);
        self.mem.write(base, &vec![0u8; (slots - base) as usize]);
        let vq = Virtqueue {
            size: o.queue_size,
            desc,
            avail,
            used,
            slots,
            free_desc: (0..o.queue_size).rev().collect(),
            free_slots: (0..o.depth).rev().collect(),
            avail_idx: 0,
            last_used: 0,
            in_flight: HashMap::new(),
            kick: EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?,
            call: EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)?,
        };
        let (call, kick) = (vq.call.as_raw_fd(), vq.kick.as_raw_fd());
        let i = usize::from(q);
        assert!(i <= self.queues.len(), "set up queues in order");
        if i == self.queues.len() {
            self.queues.push(vq);
        } else {
            self.queues[i] = vq;
        }
        self.set_vring_num(q, o.queue_size)?;
        self.set_vring_addr(q, desc, avail, used)?;
        self.set_vring_base(q, 0)?;
        self.set_vring_fd(FrontendReq::SET_VRING_CALL, q, Some(call))?;
        self.set_vring_fd(FrontendReq::SET_VRING_KICK, q, Some(kick))?;
        self.set_vring_enable(q, true)
    }

    /// Requests queue `q` can still take.
    pub(crate) fn free_slots(&self, q: u16) -> usize {
        self.queues[usize::from(q)].free_slots.len()
    }

    /// Places `io` in a free slot of queue `q` and publishes it in the avail ring (no
    /// kick); returns its head descriptor. Panics when the queue is full.
    pub(crate) fn post(&mut self, q: u16, io: Io<'_>) -> u16 {
        let slot_size = slot_bytes(&self.opts);
        let max_io = self.opts.max_io;
        let vq = &mut self.queues[usize::from(q)];
        let slot = vq
            .free_slots
            .pop()
            .expect("queue full: wait for completions");
        let hdr = vq.slots + slot as u64 * slot_size;
        let data = hdr + 16;
        let (kind, sector, data_desc, read_len) = match io {
            Io::Read { sector, len } => (T_IN, sector, Some((len, true)), len as usize),
            Io::Write { sector, data: d } => {
                self.mem.write(data, d);
                (T_OUT, sector, Some((d.len() as u64, false)), 0)
            }
            Io::Flush => (T_FLUSH, 0, None, 0),
            Io::GetId => (T_GET_ID, 0, Some((20, true)), 20),
        };
        let data_len = data_desc.map_or(0, |d| d.0);
        assert!(data_len <= max_io, "request larger than max_io");
        let status = data + data_len;
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&kind.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        self.mem.write(hdr, &header);
        self.mem.write(status, &[0xff]);
        let mut chain = vec![RawDesc {
            addr: hdr,
            len: 16,
            write: false,
        }];
        if let Some((len, write)) = data_desc {
            chain.push(RawDesc {
                addr: data,
                len: len as u32,
                write,
            });
        }
        chain.push(RawDesc {
            addr: status,
            len: 1,
            write: true,
        });
        self.publish(q, &chain, Some((slot, status)), read_len, 0)
    }

    /// Publishes a hand-made chain on queue `q` (no kick); returns its head.
    pub(crate) fn post_chain(&mut self, q: u16, chain: &[RawDesc]) -> u16 {
        self.publish(q, chain, None, 0, 0)
    }

    /// Writes `chain` as an indirect descriptor table at guest-physical `table` and
    /// publishes one descriptor pointing at it on queue `q` (no kick); returns its
    /// head. The frontend must have acked `VIRTIO_RING_F_INDIRECT_DESC`.
    pub(crate) fn post_indirect(&mut self, q: u16, table: u64, chain: &[RawDesc]) -> u16 {
        for (i, d) in chain.iter().enumerate() {
            let next = (i + 1 < chain.len()).then(|| u16::try_from(i + 1).unwrap());
            self.mem
                .write(table + 16 * i as u64, &desc_bytes(d, next, 0));
        }
        let len = u32::try_from(16 * chain.len()).unwrap();
        let d = RawDesc {
            addr: table,
            len,
            write: false,
        };
        self.publish(q, &[d], None, 0, DESC_INDIRECT)
    }

    fn publish(
        &mut self,
        q: u16,
        chain: &[RawDesc],
        slot: Option<(usize, u64)>,
        read_len: usize,
        extra_flags: u16,
    ) -> u16 {
        let mem = &self.mem;
        let vq = &mut self.queues[usize::from(q)];
        assert!(vq.free_desc.len() >= chain.len(), "out of descriptors");
        let descs: Vec<u16> = (0..chain.len())
            .map(|_| vq.free_desc.pop().unwrap())
            .collect();
        for (i, d) in chain.iter().enumerate() {
            let raw = desc_bytes(d, descs.get(i + 1).copied(), extra_flags);
            mem.write(vq.desc + 16 * u64::from(descs[i]), &raw);
        }
        let head = descs[0];
        let pos = u64::from(vq.avail_idx % vq.size);
        mem.write_u16(vq.avail + 4 + 2 * pos, head);
        vq.avail_idx = vq.avail_idx.wrapping_add(1);
        // Release: the descriptors and the ring entry above are visible before the
        // index that publishes them (the backend loads the index with Acquire).
        mem.atomic_u16(vq.avail + 2)
            .store(vq.avail_idx, Ordering::Release);
        vq.in_flight.insert(
            head,
            InFlight {
                descs,
                slot,
                read_len,
            },
        );
        head
    }

    /// Kicks queue `q`.
    pub(crate) fn kick(&self, q: u16) {
        // SeqCst: the avail index store is ordered before the kick's write.
        fence(Ordering::SeqCst);
        self.queues[usize::from(q)].kick.write(1).expect("kick");
    }

    /// Takes whatever the backend has put in queue `q`'s used ring.
    pub(crate) fn reap(&mut self, q: u16) -> Vec<Completion> {
        let mem = &self.mem;
        let vq = &mut self.queues[usize::from(q)];
        // Acquire: pairs with the backend's Release store of the used index; the
        // entries and the status bytes below are visible after it.
        let used_idx = mem.atomic_u16(vq.used + 2).load(Ordering::Acquire);
        let mut out = Vec::new();
        while vq.last_used != used_idx {
            let e = vq.used + 4 + 8 * u64::from(vq.last_used % vq.size);
            let id = mem.read_u32(e);
            let used_len = mem.read_u32(e + 4);
            vq.last_used = vq.last_used.wrapping_add(1);
            let head = u16::try_from(id).expect("used id out of range");
            let f = vq
                .in_flight
                .remove(&head)
                .unwrap_or_else(|| panic!("used entry for head {head}, not in flight"));
            vq.free_desc.extend(f.descs.iter().rev());
            let (status, data) = match f.slot {
                Some((slot, status)) => {
                    vq.free_slots.push(slot);
                    (
                        Some(mem.read(status, 1)[0]),
                        mem.read(status - f.read_len as u64, f.read_len),
                    )
                }
                None => (None, Vec::new()),
            };
            out.push(Completion {
                head,
                used_len,
                status,
                data,
            });
        }
        out
    }

    /// Reaps queue `q` until `n` completions came, waiting on its call eventfd;
    /// `TimedOut` (with what came so far dropped) after `timeout`.
    pub(crate) fn wait(
        &mut self,
        q: u16,
        n: usize,
        timeout: Duration,
    ) -> io::Result<Vec<Completion>> {
        self.wait_with(q, n, timeout, true)
    }

    /// [`wait`](Self::wait) without touching the call fd (for a test that has
    /// sabotaged it): the used ring is looked at every few milliseconds.
    pub(crate) fn wait_polling(
        &mut self,
        q: u16,
        n: usize,
        timeout: Duration,
    ) -> io::Result<Vec<Completion>> {
        self.wait_with(q, n, timeout, false)
    }

    fn wait_with(
        &mut self,
        q: u16,
        n: usize,
        timeout: Duration,
        use_call: bool,
    ) -> io::Result<Vec<Completion>> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let deadline = Instant::now() + timeout;
        let mut done = Vec::new();
        loop {
            done.extend(self.reap(q));
            if done.len() >= n {
                return Ok(done);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("queue {q}: {} of {n} completions", done.len()),
                ));
            }
            if !use_call {
                std::thread::sleep(left.min(Duration::from_millis(5)));
                continue;
            }
            let call = &self.queues[usize::from(q)].call;
            let ms = PollTimeout::try_from(left.min(Duration::from_millis(100))).unwrap();
            let mut fds = [PollFd::new(call.as_fd(), PollFlags::POLLIN)];
            if poll(&mut fds, ms)? > 0 {
                let _ = call.read();
            }
        }
    }

    /// Requests queue `q` has in flight.
    pub(crate) fn in_flight(&self, q: u16) -> usize {
        self.queues[usize::from(q)].in_flight.len()
    }

    /// Posts `io`, kicks and waits for it alone (nothing else in flight on `q`).
    pub(crate) fn io(&mut self, q: u16, io: Io<'_>) -> io::Result<Completion> {
        self.post(q, io);
        self.kick(q);
        Ok(self.wait(q, 1, TIMEOUT)?.remove(0))
    }

    /// Writes `data` at `sector`; the status.
    pub(crate) fn write(&mut self, q: u16, sector: u64, data: &[u8]) -> io::Result<u8> {
        Ok(self.io(q, Io::Write { sector, data })?.status.unwrap())
    }

    /// Reads `len` bytes at `sector`: the status and the data.
    pub(crate) fn read(&mut self, q: u16, sector: u64, len: u64) -> io::Result<(u8, Vec<u8>)> {
        let c = self.io(q, Io::Read { sector, len })?;
        Ok((c.status.unwrap(), c.data))
    }

    /// Flushes; the status.
    pub(crate) fn flush(&mut self, q: u16) -> io::Result<u8> {
        Ok(self.io(q, Io::Flush)?.status.unwrap())
    }
}

/// One descriptor as the ring holds it; `next`: the following one in its table.
fn desc_bytes(d: &RawDesc, next: Option<u16>, extra_flags: u16) -> [u8; 16] {
    let mut flags = extra_flags | if d.write { DESC_WRITE } else { 0 };
    if next.is_some() {
        flags |= DESC_NEXT;
    }
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&d.addr.to_le_bytes());
    raw[8..12].copy_from_slice(&d.len.to_le_bytes());
    raw[12..14].copy_from_slice(&flags.to_le_bytes());
    raw[14..16].copy_from_slice(&next.unwrap_or(0).to_le_bytes());
    raw
}

fn u64_of(body: &[u8]) -> io::Result<u64> {
    let b = body.get(..8).ok_or_else(|| other("short u64 payload"))?;
    Ok(u64::from_le_bytes(b.try_into().unwrap()))
}

// ---- the daemon ----------------------------------------------------------------

/// A zero-filled image file of `mib` MiB in the test's temporary directory.
pub(crate) fn image(name: &str, mib: u64) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_file(&path);
    let f = std::fs::File::create(&path).unwrap();
    f.set_len(mib << 20).unwrap();
    path
}

/// A socket path in the test's temporary directory (removed if stale).
pub(crate) fn socket_path(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
    let _ = std::fs::remove_file(&path);
    path
}

/// `vmm-bin storage-daemon` serving one writable export; stderr is collected.
pub(crate) struct Export {
    /// The process (stderr in [`Vm::stderr`]).
    pub(crate) daemon: Vm,
    /// The export's socket.
    pub(crate) sock: PathBuf,
}

impl Export {
    /// Exports `image` (buffered) at `sock` with `extra` appended to `--export`
    /// (e.g. `",num-queues=2"`); returns once the socket exists.
    pub(crate) fn start(image: &Path, sock: &Path, extra: &str) -> Export {
        let blockdev = format!("driver=file,node-name=file0,filename={}", image.display());
        let export = format!(
            "type=vhost-user-blk,id=exp0,node-name=file0,addr.type=unix,addr.path={},writable=on{extra}",
            sock.display()
        );
        Export::start_args(&["--blockdev", &blockdev, "--export", &export], sock)
    }

    /// `vmm-bin storage-daemon ARGS`; returns once `sock` exists (panics after
    /// [`TIMEOUT`] or if the daemon exits first).
    pub(crate) fn start_args(args: &[&str], sock: &Path) -> Export {
        Export::start_args_with_env(args, sock, &[])
    }

    /// [`Export::start_args`] with extra environment variables (`VMM_LOG`).
    pub(crate) fn start_args_with_env(args: &[&str], sock: &Path, env: &[(&str, &str)]) -> Export {
        let mut all = vec!["storage-daemon"];
        all.extend_from_slice(args);
        let mut daemon = Vm::start_with_env(&all, env);
        let deadline = Instant::now() + TIMEOUT;
        while !sock.exists() {
            if let Ok(Some(status)) = daemon.child.try_wait() {
                panic!("the storage daemon exited ({status}): {}", daemon.stderr());
            }
            assert!(Instant::now() < deadline, "the export never listened");
            std::thread::sleep(Duration::from_millis(20));
        }
        Export {
            daemon,
            sock: sock.to_owned(),
        }
    }

    /// A fresh `NAME.img` of `mib` MiB exported at `NAME.sock` (both in the test's
    /// temporary directory), `extra` appended to `--export`; returns the image path.
    pub(crate) fn scratch(name: &str, mib: u64, extra: &str) -> (PathBuf, Export) {
        let img = image(&format!("{name}.img"), mib);
        let export = Export::start(&img, &socket_path(&format!("{name}.sock")), extra);
        (img, export)
    }

    /// A frontend with default [`Options`], started (panics if it cannot be).
    pub(crate) fn frontend(&self) -> Frontend {
        Frontend::start(&self.sock, &Options::default()).expect("a frontend connects")
    }

    /// Whether the daemon still runs.
    pub(crate) fn alive(&mut self) -> bool {
        self.daemon.child.try_wait().unwrap().is_none()
    }

    /// Waits until the daemon's stderr contains `text`; false at `timeout`.
    pub(crate) fn wait_log(&self, text: &str, timeout: Duration) -> bool {
        self.daemon.wait_stderr(text, timeout)
    }

    /// A fresh frontend writes a pattern to `sector`, reads it back and compares:
    /// proof the export still serves.
    pub(crate) fn check_serves(&self, sector: u64) {
        check_serves(&self.sock, sector);
    }
}

/// A fresh frontend on `sock` writes a pattern to `sector`, reads it back and
/// compares: proof the export there still serves.
pub(crate) fn check_serves(sock: &Path, sector: u64) {
    let mut f = Frontend::start(sock, &Options::default()).expect("a fresh frontend connects");
    let pattern: Vec<u8> = (0..4096u32)
        .map(|i| (i * 7 + sector as u32) as u8)
        .collect();
    assert_eq!(f.write(0, sector, &pattern).expect("write"), S_OK);
    let (status, data) = f.read(0, sector, 4096).expect("read");
    assert_eq!(status, S_OK);
    assert!(data == pattern, "read back differs from what was written");
}
