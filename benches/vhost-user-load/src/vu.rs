//! Our own vhost-user frontend for the load generator: one split virtqueue in a shared
//! memfd, driven like a guest's virtio driver (no event index, a kick per batch, an
//! interrupt per completion), for virtio-blk and virtio-scsi. libblkio has no
//! vhost-user-scsi driver; driving both devices through this one frontend makes the
//! blk/scsi comparison a comparison of the exports, not of two clients.
//!
//! The protocol messages go through the `vhost` crate's `Frontend`; the ring and the
//! request layouts (virtio 1.2, 2.7 and 5.2/5.6) are written here.

use std::os::fd::{AsRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicU16, Ordering};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vmm_sys_util::eventfd::EventFd;

use crate::die;

/// The device behind the socket.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// virtio-blk: request queue 0.
    Blk,
    /// virtio-scsi: control 0, event 1, request queue 2 (the only one started); LUN 0 of
    /// target 0.
    Scsi,
}

const QSIZE: u16 = 256;
const VERSION_1: u64 = 1 << 32;
const PROTOCOL_FEATURES: u64 = 1 << 30;
const DESC_NEXT: u16 = 1;
const DESC_WRITE: u16 = 2;
/// Per request: header/command (64 bytes), status/response (128 bytes), then the data
/// on the next page (page-aligned, as a guest's block layer gives it: an unaligned
/// buffer sends an O_DIRECT export through bounce copies that no guest causes).
const HDR: u64 = 64;
const RESP: u64 = 128;
const DATA: u64 = 4096;
const _: () = assert!(HDR + RESP <= DATA);

/// A connected frontend with one running request queue and `slots` request slots of
/// `bs` bytes.
pub struct VuQueue {
    _fe: Frontend,
    device: Device,
    _mem: OwnedFd,
    base: NonNull<u8>,
    len: usize,
    desc: u64,
    avail: u64,
    used: u64,
    /// Per slot: header, response and data areas (guest-physical).
    slot_base: u64,
    slot_bytes: u64,
    kick: EventFd,
    call: EventFd,
    avail_idx: u16,
    last_used: u16,
    /// Pending avail entries not yet kicked.
    unkicked: bool,
    /// The capacity in bytes.
    pub capacity: u64,
}

impl VuQueue {
    /// Connects to `path`, shares memory for `slots` requests of up to `bs` bytes and
    /// starts the request queue.
    pub fn connect(path: &str, device: Device, slots: usize, bs: usize) -> VuQueue {
        let slots = slots.min(usize::from(QSIZE) / 3);
        let q = if device == Device::Blk { 0 } else { 2 };
        let mut fe = Frontend::connect(path, q as u64 + 1)
            .unwrap_or_else(|e| die(&format!("connect {path}: {e}")));
        fe.set_owner().or_die("SET_OWNER");
        let offered = fe.get_features().or_die("GET_FEATURES");
        if offered & PROTOCOL_FEATURES == 0 || offered & VERSION_1 == 0 {
            die("the backend offers no VERSION_1/PROTOCOL_FEATURES");
        }
        fe.set_features(VERSION_1 | PROTOCOL_FEATURES).or_die("SET_FEATURES");
        let proto = fe.get_protocol_features().or_die("GET_PROTOCOL_FEATURES");
        let want = proto
            & (VhostUserProtocolFeatures::MQ
                | VhostUserProtocolFeatures::REPLY_ACK
                | VhostUserProtocolFeatures::CONFIG);
        fe.set_protocol_features(want).or_die("SET_PROTOCOL_FEATURES");
        // Memory: rings, then the slots.
        let ring_bytes = 3 * 4096u64 + 16 * u64::from(QSIZE);
        let slot_bytes = DATA + (bs as u64).div_ceil(4096) * 4096;
        let len = (ring_bytes.div_ceil(4096) * 4096 + slot_bytes * slots as u64) as usize;
        let fd = nix::sys::memfd::memfd_create(c"vhost-user-load", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
            .unwrap_or_else(|e| die(&format!("memfd: {e}")));
        nix::unistd::ftruncate(&fd, len as i64).unwrap_or_else(|e| die(&format!("ftruncate: {e}")));
        // SAFETY: a fresh shared mapping of our own memfd, `len` bytes long.
        let base = unsafe {
            nix::sys::mman::mmap(
                None,
                std::num::NonZeroUsize::new(len).unwrap(),
                nix::sys::mman::ProtFlags::PROT_READ | nix::sys::mman::ProtFlags::PROT_WRITE,
                nix::sys::mman::MapFlags::MAP_SHARED,
                &fd,
                0,
            )
        }
        .unwrap_or_else(|e| die(&format!("mmap: {e}")))
        .cast::<u8>();
        let region = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: len as u64,
            userspace_addr: base.as_ptr() as u64,
            mmap_offset: 0,
            mmap_handle: fd.as_raw_fd(),
        };
        fe.set_mem_table(&[region]).or_die("SET_MEM_TABLE");
        let (desc, avail, used) = (0u64, 16 * u64::from(QSIZE), 16 * u64::from(QSIZE) + 4096);
        let kick = EventFd::new(0).unwrap_or_else(|e| die(&format!("eventfd: {e}")));
        let call = EventFd::new(0).unwrap_or_else(|e| die(&format!("eventfd: {e}")));
        let uaddr = |gpa: u64| base.as_ptr() as u64 + gpa;
        fe.set_vring_num(q, QSIZE).or_die("SET_VRING_NUM");
        let config = VringConfigData {
            queue_max_size: QSIZE,
            queue_size: QSIZE,
            flags: 0,
            desc_table_addr: uaddr(desc),
            used_ring_addr: uaddr(used),
            avail_ring_addr: uaddr(avail),
            log_addr: None,
        };
        fe.set_vring_addr(q, &config).or_die("SET_VRING_ADDR");
        fe.set_vring_base(q, 0).or_die("SET_VRING_BASE");
        fe.set_vring_call(q, &call).or_die("SET_VRING_CALL");
        fe.set_vring_kick(q, &kick).or_die("SET_VRING_KICK");
        fe.set_vring_enable(q, true).or_die("SET_VRING_ENABLE");
        let mut vq = VuQueue {
            _fe: fe,
            device,
            _mem: fd,
            base,
            len,
            desc,
            avail,
            used,
            slot_base: ring_bytes.div_ceil(4096) * 4096,
            slot_bytes,
            kick,
            call,
            avail_idx: 0,
            last_used: 0,
            unkicked: false,
            capacity: 0,
        };
        vq.capacity = vq.read_capacity();
        vq
    }

    fn ptr(&self, gpa: u64, len: u64) -> *mut u8 {
        assert!(gpa + len <= self.len as u64, "outside the shared memory");
        // SAFETY: in bounds of the mapping (checked above).
        unsafe { self.base.as_ptr().add(gpa as usize) }
    }

    fn write(&self, gpa: u64, data: &[u8]) {
        // SAFETY: `ptr` checked the range; the backend does not touch a slot's header
        // while the slot is free.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr(gpa, data.len() as u64), data.len()) };
    }

    fn read(&self, gpa: u64, out: &mut [u8]) {
        // SAFETY: as `write`; the request completed (acquire fence in `reap`).
        unsafe { std::ptr::copy_nonoverlapping(self.ptr(gpa, out.len() as u64), out.as_mut_ptr(), out.len()) };
    }

    fn slot(&self, slot: usize) -> (u64, u64, u64) {
        let b = self.slot_base + slot as u64 * self.slot_bytes;
        (b, b + HDR, b + DATA)
    }

    /// Queues request `slot`: `write` or read of `len` bytes at byte `off` (or, for
    /// SCSI, READ CAPACITY(10) when `len` is 0). The kick waits for [`VuQueue::kick`].
    pub fn submit(&mut self, slot: usize, off: u64, len: usize, write: bool) {
        let (hdr, resp, data) = self.slot(slot);
        let (hdr_len, resp_len) = match self.device {
            Device::Blk => {
                let mut h = [0u8; 16];
                h[0..4].copy_from_slice(&(write as u32).to_le_bytes());
                h[8..16].copy_from_slice(&(off / 512).to_le_bytes());
                self.write(hdr, &h);
                (16, 1)
            }
            Device::Scsi => {
                let mut h = [0u8; 51];
                h[0] = 1; // LUN: target 0, LUN 0
                h[8..16].copy_from_slice(&(slot as u64).to_le_bytes());
                let cdb = &mut h[19..];
                if len == 0 {
                    cdb[0] = 0x25; // READ CAPACITY(10)
                } else {
                    let lba = (off / 512) as u32;
                    let blocks = (len / 512) as u16;
                    cdb[0] = if write { 0x2a } else { 0x28 };
                    cdb[2..6].copy_from_slice(&lba.to_be_bytes());
                    cdb[7..9].copy_from_slice(&blocks.to_be_bytes());
                }
                self.write(hdr, &h);
                (51, 108)
            }
        };
        let len = if self.device == Device::Scsi && len == 0 { 8 } else { len };
        // Readable before writable: blk [hdr, data?, status] / scsi [req, data-out?, resp, data-in?].
        let chain: [(u64, u32, bool); 3] = match (self.device, write) {
            (Device::Blk, false) => [(hdr, hdr_len, false), (data, len as u32, true), (resp, resp_len, true)],
            (Device::Blk, true) => [(hdr, hdr_len, false), (data, len as u32, false), (resp, resp_len, true)],
            (Device::Scsi, false) => [(hdr, hdr_len, false), (resp, resp_len, true), (data, len as u32, true)],
            (Device::Scsi, true) => [(hdr, hdr_len, false), (data, len as u32, false), (resp, resp_len, true)],
        };
        let head = (slot * 3) as u16;
        for (i, (addr, l, w)) in chain.iter().enumerate() {
            let idx = head + i as u16;
            let mut d = [0u8; 16];
            d[0..8].copy_from_slice(&addr.to_le_bytes());
            d[8..12].copy_from_slice(&l.to_le_bytes());
            let mut flags = if *w { DESC_WRITE } else { 0 };
            if i < 2 {
                flags |= DESC_NEXT;
            }
            d[12..14].copy_from_slice(&flags.to_le_bytes());
            d[14..16].copy_from_slice(&(idx + 1).to_le_bytes());
            self.write(self.desc + 16 * u64::from(idx), &d);
        }
        let ring = self.avail + 4 + 2 * u64::from(self.avail_idx % QSIZE);
        self.write(ring, &head.to_le_bytes());
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // Release: the descriptors and the ring entry before the index the backend reads.
        fence(Ordering::Release);
        self.atomic_u16(self.avail + 2).store(self.avail_idx, Ordering::Release);
        self.unkicked = true;
    }

    fn atomic_u16(&self, gpa: u64) -> &AtomicU16 {
        // SAFETY: in bounds, 2-aligned (ring fields), shared with the backend, which
        // accesses it atomically as well.
        unsafe { &*(self.ptr(gpa, 2) as *const AtomicU16) }
    }

    /// Notifies the backend of the requests queued since the last kick.
    pub fn kick(&mut self) {
        if std::mem::take(&mut self.unkicked) {
            let _ = self.kick.write(1);
        }
    }

    /// Waits for completions; calls `done(slot, ok)` for each.
    pub fn reap(&mut self, mut done: impl FnMut(usize, bool)) {
        self.kick();
        loop {
            let used_idx = self.atomic_u16(self.used + 2).load(Ordering::Acquire);
            if used_idx != self.last_used {
                break;
            }
            let _ = self.call.read();
        }
        let used_idx = self.atomic_u16(self.used + 2).load(Ordering::Acquire);
        while self.last_used != used_idx {
            let e = self.used + 4 + 8 * u64::from(self.last_used % QSIZE);
            let mut id = [0u8; 4];
            self.read(e, &mut id);
            let slot = u32::from_le_bytes(id) as usize / 3;
            let (_, resp, _) = self.slot(slot);
            let ok = match self.device {
                Device::Blk => {
                    let mut s = [0u8; 1];
                    self.read(resp, &mut s);
                    s[0] == 0
                }
                Device::Scsi => {
                    let mut r = [0u8; 12];
                    self.read(resp, &mut r);
                    r[10] == 0 && r[11] == 0 // status GOOD, response OK
                }
            };
            self.last_used = self.last_used.wrapping_add(1);
            done(slot, ok);
        }
    }

    /// The device's size: virtio-blk's config capacity, or READ CAPACITY(10) (after
    /// the power-on unit attention) for SCSI.
    fn read_capacity(&mut self) -> u64 {
        match self.device {
            Device::Blk => {
                let mut buf = [0u8; 8];
                let got = self
                    ._fe
                    .get_config(0, 8, vhost::vhost_user::message::VhostUserConfigFlags::empty(), &buf)
                    .unwrap_or_else(|e| die(&format!("GET_CONFIG: {e}")));
                buf.copy_from_slice(&got.1[..8]);
                u64::from_le_bytes(buf) * 512
            }
            Device::Scsi => {
                for _ in 0..3 {
                    self.submit(0, 0, 0, false);
                    let mut ok = false;
                    self.reap(|_, o| ok = o);
                    if ok {
                        let (_, _, data) = self.slot(0);
                        let mut d = [0u8; 8];
                        self.read(data, &mut d);
                        let last = u32::from_be_bytes(d[0..4].try_into().unwrap());
                        let bl = u32::from_be_bytes(d[4..8].try_into().unwrap());
                        return (u64::from(last) + 1) * u64::from(bl);
                    }
                }
                die("READ CAPACITY failed")
            }
        }
    }

    /// The data area of `slot` (to fill before writes).
    pub fn data(&self, slot: usize, len: usize) -> *mut u8 {
        let (_, _, data) = self.slot(slot);
        self.ptr(data, len as u64)
    }
}

/// Ends the program with `what` and the error.
trait OrDie<T> {
    fn or_die(self, what: &str) -> T;
}

impl<T, E: std::fmt::Display> OrDie<T> for Result<T, E> {
    fn or_die(self, what: &str) -> T {
        self.unwrap_or_else(|e| die(&format!("{what}: {e}")))
    }
}
