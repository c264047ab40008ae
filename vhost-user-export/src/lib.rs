//! A vhost-user backend that serves any [`VirtioDevice`] (virtio-blk for vmm-bin's
//! `--export type=vhost-user-blk`) to QEMU, Cloud Hypervisor, crosvm and libblkio
//! frontends: [`VhostUserDevice`] holds the protocol state around the device,
//! [`ExportServer`] serves it on a Unix socket, one frontend at a time.
//!
//! - The frontend's memory table (`SET_MEM_TABLE`, `ADD_MEM_REG`, `REM_MEM_REG`) becomes
//!   ram-block blocks over the passed fds. A new table replaces the old one in one RCU
//!   publish ([`RamList::replace_all`]): queue workers never see a gap, and a block that
//!   leaves stays mapped until the DMA that pinned it completes (seed 001 in real use).
//! - `REM_MEM_REG` may carry the region's fd (libblkio sends it; the spec allows it):
//!   accepted and closed.
//! - A ring runs once it has a size, addresses, a kick fd and (with
//!   `VHOST_USER_F_PROTOCOL_FEATURES`) is enabled; its kick fd is watched in the
//!   export's iothread, its call fd is written on completions. `GET_VRING_BASE` stops
//!   the ring after its in-flight requests completed.
//! - When the frontend disconnects, every ring is stopped (drained), the memory table
//!   dropped and the state reset, and the next frontend is served.
//! - The frontend is untrusted (DESIGN.md, "The vhost-user frontend is untrusted"): if
//!   it truncates its memory under us, the fault is survived (ram-block's
//!   `Backing::PeerFd`) and its connection closed; its kick and call fds must be
//!   eventfds and are never read or written in a way that can block the iothread.

#![deny(missing_docs)]

mod call;
mod channel;
mod server;

pub use channel::ConfigNotice;
pub use server::{ExportServer, serve};

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use aio_context::{EventNotifier, IoThread};
use ram_block::{Backing, FaultReport, RamBlock, RamList};
use vhost::VhostUserMemoryRegionBase;
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight,
    VhostUserLog, VhostUserMemoryRegion, VhostUserProtocolFeatures, VhostUserShMemConfig,
    VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Backend, Error, GpuBackend, Result, VhostUserBackendReqHandlerMut};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use call::CallFds;
use channel::BackendChannel;
use virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_core::{QueueSetup, VirtioDevice, VirtioInterrupt};

/// `VHOST_USER_F_PROTOCOL_FEATURES`.
const PROTOCOL_FEATURES_BIT: u64 = 1 << 30;
/// The most memory regions a frontend may add (QEMU's limit for vhost-user).
const MAX_MEM_SLOTS: u64 = 509;

/// One region of the frontend's memory table.
#[derive(Clone, Copy, Debug)]
struct Region {
    gpa: u64,
    size: u64,
    user_addr: u64,
}

/// Whether `fd` is an eventfd: the only kind of kick and call fd the protocol names,
/// and the only kind the iothread knows how to read and write without blocking.
fn is_eventfd(fd: &File) -> bool {
    nix::fcntl::readlink(format!("/proc/self/fd/{}", fd.as_raw_fd()).as_str())
        .is_ok_and(|target| target == "anon_inode:[eventfd]")
}

/// The kick or call fd of a `SET_VRING_KICK`/`SET_VRING_CALL`, if it is an eventfd.
fn vring_eventfd(fd: File, what: &'static str) -> Result<OwnedFd> {
    if is_eventfd(&fd) {
        Ok(OwnedFd::from(fd))
    } else {
        Err(param(what))
    }
}

#[derive(Default)]
struct Vring {
    size: u16,
    /// Frontend virtual addresses (desc, avail, used).
    addrs: Option<(u64, u64, u64)>,
    base: u16,
    kick: Option<EventNotifier>,
    enabled: bool,
    running: bool,
}

/// The vhost-user protocol state of one export, around its device.
pub struct VhostUserDevice {
    device: Box<dyn VirtioDevice>,
    iothread: Arc<IoThread>,
    memory: RamList,
    regions: Vec<Region>,
    vrings: Vec<Vring>,
    calls: Arc<CallFds>,
    acked_features: u64,
    protocol_features: u64,
    generation: u64,
    /// Where a fault in this frontend's memory is reported (one per connection).
    faults: Option<Arc<FaultReport>>,
    /// The backend channel (config-change notices), shared with the server.
    channel: Arc<BackendChannel>,
}

fn param(what: &'static str) -> Error {
    tracing::warn!("vhost-user: rejected: {what}");
    Error::InvalidParam
}

impl VhostUserDevice {
    /// Serves `device`'s queues on `iothread`.
    pub fn new(device: Box<dyn VirtioDevice>, iothread: Arc<IoThread>) -> VhostUserDevice {
        let n = usize::from(device.num_queues());
        let calls = Arc::new(CallFds::new(n, Arc::clone(&iothread)));
        VhostUserDevice {
            device,
            iothread,
            memory: RamList::new(),
            regions: Vec::new(),
            vrings: (0..n).map(|_| Vring::default()).collect(),
            calls,
            acked_features: 0,
            protocol_features: 0,
            generation: 0,
            faults: None,
            channel: Arc::default(),
        }
    }

    /// Starts serving a new frontend: returns the report that says when an access
    /// to its memory faulted (it truncated a region), readable as an fd.
    ///
    /// # Errors
    ///
    /// The report's eventfd could not be created.
    pub fn begin_session(&mut self) -> std::io::Result<Arc<FaultReport>> {
        let faults = FaultReport::new()?;
        self.faults = Some(faults.clone());
        Ok(faults)
    }

    /// Stops every ring and forgets the frontend (its memory, fds and negotiation):
    /// called when it disconnects.
    pub fn disconnect(&mut self) {
        for i in 0..self.vrings.len() {
            self.stop(i);
            self.vrings[i] = Vring::default();
        }
        self.calls.clear();
        let _ = self.memory.replace_all(Vec::new());
        self.regions.clear();
        self.acked_features = 0;
        self.protocol_features = 0;
        self.channel.set_socket(None);
        self.channel.set_protocol_features(0);
        self.device.ack_features(0);
    }

    fn vring(&mut self, index: u32) -> Result<&mut Vring> {
        self.vrings
            .get_mut(index as usize)
            .ok_or_else(|| param("vring index out of range"))
    }

    /// A frontend virtual address → guest-physical address.
    fn translate(&self, user_addr: u64) -> Option<u64> {
        self.regions.iter().find_map(|r| {
            let off = user_addr.checked_sub(r.user_addr)?;
            (off < r.size).then_some(r.gpa + off)
        })
    }

    fn block(&self, region: &VhostUserMemoryRegion, fd: File) -> Result<(RamBlock, Region)> {
        let faults = self
            .faults
            .clone()
            .ok_or_else(|| param("a memory region outside a session"))?;
        self.generation_name(region).and_then(|name| {
            // The frontend keeps the fd: it may truncate it under us (SIGBUS, survived
            // and reported to `faults`) or have sealed it.
            let backing = Backing::PeerFd {
                fd: OwnedFd::from(fd),
                offset: region.mmap_offset,
                faults,
            };
            let block = RamBlock::new(
                name,
                GuestAddress(region.guest_phys_addr),
                region.memory_size,
                backing,
            )
            .map_err(|e| {
                tracing::warn!("vhost-user: cannot map a memory region: {e}");
                Error::InvalidParam
            })?;
            Ok((
                block,
                Region {
                    gpa: region.guest_phys_addr,
                    size: region.memory_size,
                    user_addr: region.user_addr,
                },
            ))
        })
    }

    fn generation_name(&self, region: &VhostUserMemoryRegion) -> Result<String> {
        if region.memory_size == 0 {
            return Err(param("empty memory region"));
        }
        let gpa = region.guest_phys_addr;
        Ok(format!("vhost-user-{gpa:#x}-{}", self.generation))
    }

    /// Starts ring `index` if it has everything and is not running.
    fn maybe_start(&mut self, index: usize) -> Result<()> {
        let protocol = self.acked_features & PROTOCOL_FEATURES_BIT != 0;
        let v = &self.vrings[index];
        if v.running || v.kick.is_none() || v.size == 0 || (protocol && !v.enabled) {
            return Ok(());
        }
        let Some((desc, avail, used)) = v.addrs else {
            return Ok(());
        };
        let (Some(desc), Some(avail), Some(used)) = (
            self.translate(desc),
            self.translate(avail),
            self.translate(used),
        ) else {
            return Err(param("vring address outside the memory table"));
        };
        let mut queue =
            Queue::new(self.device.queue_max_size()).map_err(|_| Error::InvalidParam)?;
        queue.set_size(v.size);
        queue.set_desc_table_address(Some(desc as u32), Some((desc >> 32) as u32));
        queue.set_avail_ring_address(Some(avail as u32), Some((avail >> 32) as u32));
        queue.set_used_ring_address(Some(used as u32), Some((used >> 32) as u32));
        queue.set_event_idx(self.acked_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0);
        queue.set_next_avail(v.base);
        // The used index lives in guest memory (libvhost-user reads it the same way).
        let used_idx: u16 = self
            .memory
            .memory()
            .read_obj(GuestAddress(
                used.checked_add(2).ok_or(Error::InvalidParam)?,
            ))
            .map_err(|_| param("used ring unreadable"))?;
        queue.set_next_used(used_idx);
        queue.set_ready(true);
        let kick = v
            .kick
            .as_ref()
            .and_then(|k| k.try_clone().ok())
            .ok_or(Error::InvalidParam)?;
        let setup = QueueSetup {
            queue,
            kick,
            memory: self.memory.clone(),
            interrupt: self.calls.clone() as Arc<dyn VirtioInterrupt>,
            iothread: self.iothread.clone(),
        };
        self.device.start_queue(index as u16, setup).map_err(|e| {
            tracing::warn!("vhost-user: cannot start vring {index}: {e}");
            Error::InvalidParam
        })?;
        self.vrings[index].running = true;
        Ok(())
    }

    /// Stops ring `index` (draining it); returns its next avail index.
    fn stop(&mut self, index: usize) -> u16 {
        let v = &mut self.vrings[index];
        if !v.running {
            return v.base;
        }
        v.running = false;
        let base = match self.device.stop_queue(index as u16) {
            Some(q) => q.next_avail(),
            None => self.vrings[index].base,
        };
        self.vrings[index].base = base;
        base
    }
}

impl VhostUserBackendReqHandlerMut for VhostUserDevice {
    fn set_owner(&mut self) -> Result<()> {
        Ok(())
    }

    fn reset_owner(&mut self) -> Result<()> {
        self.disconnect();
        Ok(())
    }

    fn reset_device(&mut self) -> Result<()> {
        for i in 0..self.vrings.len() {
            self.stop(i);
            self.vrings[i] = Vring::default();
        }
        self.acked_features = 0;
        self.device.ack_features(0);
        Ok(())
    }

    fn get_features(&mut self) -> Result<u64> {
        Ok(self.device.features() | PROTOCOL_FEATURES_BIT)
    }

    fn set_features(&mut self, features: u64) -> Result<()> {
        let offered = self.device.features() | PROTOCOL_FEATURES_BIT;
        if features & !offered != 0 {
            return Err(param("features the backend did not offer"));
        }
        self.acked_features = features;
        self.device.ack_features(features & !PROTOCOL_FEATURES_BIT);
        if features & PROTOCOL_FEATURES_BIT == 0 {
            for v in &mut self.vrings {
                v.enabled = true;
            }
        }
        Ok(())
    }

    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _postcopy_listening: Option<bool>,
    ) -> Result<Option<Vec<VhostUserMemoryRegionBase>>> {
        if ctx.len() != files.len() {
            return Err(param("memory table: region and fd counts differ"));
        }
        self.generation += 1;
        let mut blocks = Vec::with_capacity(ctx.len());
        let mut regions = Vec::with_capacity(ctx.len());
        for (region, file) in ctx.iter().zip(files) {
            let (block, r) = self.block(region, file)?;
            blocks.push(block);
            regions.push(r);
        }
        self.memory.replace_all(blocks).map_err(|e| {
            tracing::warn!("vhost-user: bad memory table: {e}");
            Error::InvalidParam
        })?;
        self.regions = regions;
        Ok(None)
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        let max = self.device.queue_max_size();
        let v = self.vring(index)?;
        if num == 0 || num > u32::from(max) || !num.is_power_of_two() {
            return Err(param("vring size"));
        }
        v.size = num as u16;
        Ok(())
    }

    fn set_vring_addr(
        &mut self,
        index: u32,
        _flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        _log: u64,
    ) -> Result<()> {
        self.vring(index)?.addrs = Some((descriptor, available, used));
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        self.vring(index)?.base = base as u16;
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState> {
        self.vring(index)?;
        let base = self.stop(index as usize);
        let v = &mut self.vrings[index as usize];
        v.kick = None;
        if self.acked_features & PROTOCOL_FEATURES_BIT != 0 {
            v.enabled = false;
        }
        Ok(VhostUserVringState::new(index, u32::from(base)))
    }

    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        let Some(fd) = fd else {
            return Err(param("polling mode (no kick fd) is not supported"));
        };
        let fd = vring_eventfd(fd, "a kick fd that is not an eventfd")?;
        let kick = EventNotifier::from_fd(fd).map_err(|_| Error::InvalidParam)?;
        let i = usize::from(index);
        self.vring(u32::from(index))?;
        if self.vrings[i].running {
            self.stop(i);
        }
        self.vrings[i].kick = Some(kick);
        self.maybe_start(i)
    }

    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        self.vring(u32::from(index))?;
        let call = match fd {
            Some(fd) => Some(vring_eventfd(fd, "a call fd that is not an eventfd")?),
            None => None,
        };
        self.calls.set(usize::from(index), call);
        Ok(())
    }

    fn set_vring_err(&mut self, index: u8, _fd: Option<File>) -> Result<()> {
        self.vring(u32::from(index))?;
        Ok(())
    }

    fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures> {
        Ok(VhostUserProtocolFeatures::MQ
            | VhostUserProtocolFeatures::REPLY_ACK
            | VhostUserProtocolFeatures::CONFIG
            | VhostUserProtocolFeatures::CONFIGURE_MEM_SLOTS
            | VhostUserProtocolFeatures::RESET_DEVICE
            | VhostUserProtocolFeatures::BACKEND_REQ)
    }

    fn set_protocol_features(&mut self, features: u64) -> Result<()> {
        self.protocol_features = features;
        self.channel.set_protocol_features(features);
        Ok(())
    }

    fn get_queue_num(&mut self) -> Result<u64> {
        Ok(u64::from(self.device.num_queues()))
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        let i = index as usize;
        self.vring(index)?.enabled = enable;
        if enable {
            self.maybe_start(i)
        } else {
            self.stop(i);
            Ok(())
        }
    }

    fn get_config(
        &mut self,
        offset: u32,
        size: u32,
        _flags: VhostUserConfigFlags,
    ) -> Result<Vec<u8>> {
        if size > 256 {
            return Err(param("config read too large"));
        }
        let mut buf = vec![0; size as usize];
        self.device.read_config(u64::from(offset), &mut buf);
        Ok(buf)
    }

    fn set_config(&mut self, offset: u32, buf: &[u8], _flags: VhostUserConfigFlags) -> Result<()> {
        self.device.write_config(u64::from(offset), buf);
        Ok(())
    }

    /// The library's stub cannot send `CONFIG_CHANGE_MSG`; the server kept its own
    /// copy of the channel's fd (see `channel.rs`), so this one is dropped.
    fn set_backend_req_fd(&mut self, _backend: Backend) {}

    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> Result<()> {
        Err(Error::InvalidOperation("not a GPU"))
    }

    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> Result<File> {
        Err(Error::InvalidOperation("no shared objects"))
    }

    fn get_inflight_fd(
        &mut self,
        _inflight: &VhostUserInflight,
    ) -> Result<(VhostUserInflight, File)> {
        Err(Error::InvalidOperation("INFLIGHT_SHMEM is not offered"))
    }

    fn set_inflight_fd(&mut self, _inflight: &VhostUserInflight, _file: File) -> Result<()> {
        Err(Error::InvalidOperation("INFLIGHT_SHMEM is not offered"))
    }

    fn get_max_mem_slots(&mut self) -> Result<u64> {
        Ok(MAX_MEM_SLOTS)
    }

    fn add_mem_region(
        &mut self,
        region: &VhostUserSingleMemoryRegion,
        fd: File,
        _postcopy_listening: Option<bool>,
    ) -> Result<Option<VhostUserMemoryRegionBase>> {
        if self.regions.len() as u64 >= MAX_MEM_SLOTS {
            return Err(param("too many memory regions"));
        }
        self.generation += 1;
        let (block, r) = self.block(region, fd)?;
        self.memory.add(block).map_err(|e| {
            tracing::warn!("vhost-user: cannot add a memory region: {e}");
            Error::InvalidParam
        })?;
        self.regions.push(r);
        Ok(None)
    }

    fn remove_mem_region(&mut self, region: &VhostUserSingleMemoryRegion) -> Result<()> {
        let pos = self
            .regions
            .iter()
            .position(|r| r.gpa == region.guest_phys_addr && r.size == region.memory_size)
            .ok_or_else(|| param("REM_MEM_REG of an unknown region"))?;
        self.memory
            .remove(GuestAddress(region.guest_phys_addr))
            .map_err(|_| Error::InvalidParam)?;
        self.regions.remove(pos);
        Ok(())
    }

    fn set_device_state_fd(
        &mut self,
        _direction: VhostTransferStateDirection,
        _phase: VhostTransferStatePhase,
        _fd: File,
    ) -> Result<Option<File>> {
        Err(Error::InvalidOperation("DEVICE_STATE is not offered"))
    }

    fn check_device_state(&mut self) -> Result<()> {
        Err(Error::InvalidOperation("DEVICE_STATE is not offered"))
    }

    fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
        Err(Error::InvalidOperation("no shared memory regions"))
    }

    fn set_log_base(&mut self, _log: &VhostUserLog, _file: File) -> Result<()> {
        Err(Error::InvalidOperation("LOG_SHMFD is not offered"))
    }
}

/// The README's example, run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_eventfds_are_kick_and_call_fds() {
        let efd = nix::sys::eventfd::EventFd::new().unwrap();
        assert!(vring_eventfd(File::from(OwnedFd::from(efd)), "kick").is_ok());
        let (r, _w) = nix::unistd::pipe().unwrap();
        assert!(matches!(
            vring_eventfd(File::from(r), "kick"),
            Err(Error::InvalidParam)
        ));
    }
}
