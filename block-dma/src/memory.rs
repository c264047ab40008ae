//! [`DmaMemory`]: the address space a device's DMA sees: guest RAM from ram-block, and
//! an optional slow path (MMIO) reached through map-client's bounce buffer.

use std::sync::Arc;

use map_client::{Bounce, GuestMemoryAccess};
use ram_block::{RamBlock, RamList};
use vm_memory::GuestAddress;

use crate::Errno;

/// Guest-physical memory that is not RAM but can be a DMA target (a device's MMIO
/// region, a ROM): QEMU's `address_space_rw` slow path.
pub trait MmioAccess: Send + Sync {
    /// Reads `buf.len()` bytes at `addr`.
    ///
    /// # Errors
    ///
    /// `EFAULT` (or another error) if nothing there accepts DMA.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno>;
    /// Writes `buf` at `addr`.
    ///
    /// # Errors
    ///
    /// As [`MmioAccess::read`].
    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Errno>;
}

/// A device's view of guest memory for DMA. Cheap to clone.
#[derive(Clone)]
pub struct DmaMemory {
    ram: RamList,
    bounce: Bounce,
    mmio: Option<Arc<dyn MmioAccess>>,
}

impl std::fmt::Debug for DmaMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaMemory")
            .field("ram", &self.ram)
            .field("bounce_budget", &self.bounce.budget())
            .field("mmio", &self.mmio.is_some())
            .finish()
    }
}

/// RAM mapped in place for DMA: the block stays mapped while this lives.
pub struct DirectRange {
    /// The block (a counted reference: hot remove waits for it).
    pub block: Arc<RamBlock>,
    /// Host address of the first byte.
    pub ptr: *mut u8,
}

impl DmaMemory {
    /// RAM only; any other address fails DMA with `EFAULT`. The bounce buffer has
    /// QEMU's default budget.
    pub fn new(ram: RamList) -> DmaMemory {
        DmaMemory {
            ram,
            bounce: Bounce::default(),
            mmio: None,
        }
    }

    /// Uses `bounce` (shared with other devices of the address space).
    pub fn with_bounce(mut self, bounce: Bounce) -> Self {
        self.bounce = bounce;
        self
    }

    /// Routes non-RAM addresses to `mmio` through the bounce buffer.
    pub fn with_mmio(mut self, mmio: Arc<dyn MmioAccess>) -> Self {
        self.mmio = Some(mmio);
        self
    }

    /// The RAM list.
    pub fn ram(&self) -> &RamList {
        &self.ram
    }

    /// Whether non-RAM addresses reach a slow path ([`with_mmio`](Self::with_mmio)).
    pub fn has_mmio(&self) -> bool {
        self.mmio.is_some()
    }

    /// The bounce buffer.
    pub fn bounce(&self) -> &Bounce {
        &self.bounce
    }
}

impl GuestMemoryAccess for DmaMemory {
    type Direct<'a> = DirectRange;
    type Error = Errno;

    fn map_direct(&self, addr: u64, len: usize) -> Option<(DirectRange, usize)> {
        let guard = rcu::read();
        let block = self.ram.blocks(&guard).find_shared(GuestAddress(addr))?;
        let offset = addr - block.start().0; // `find` checked start <= addr < end
        let avail = block.size() - offset;
        let len = (len as u64).min(avail) as usize;
        // SAFETY: `offset` < the block's size, so the pointer stays inside its mapping,
        // which `block` keeps alive.
        let ptr = unsafe { block.host_address().add(offset as usize) };
        Some((DirectRange { block, ptr }, len))
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Errno> {
        match &self.mmio {
            Some(m) => m.read(addr, buf),
            None => Err(Errno::EFAULT),
        }
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Errno> {
        match &self.mmio {
            Some(m) => m.write(addr, buf),
            None => Err(Errno::EFAULT),
        }
    }
}
