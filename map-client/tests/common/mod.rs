//! A guest address space for the tests: RAM in `[0, ram)`, MMIO above (slow path only).

use std::sync::Mutex;

use map_client::GuestMemoryAccess;

pub(crate) struct TestMemory {
    pub(crate) ram: Vec<u8>,
    pub(crate) mmio: Mutex<Vec<u8>>,
}

impl TestMemory {
    pub(crate) fn new(ram: usize, mmio: usize) -> TestMemory {
        TestMemory {
            ram: vec![0xaa; ram],
            mmio: Mutex::new(vec![0; mmio]),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("no memory at {0:#x}")]
pub(crate) struct Unassigned(pub(crate) u64);

impl GuestMemoryAccess for TestMemory {
    type Direct<'a> = &'a [u8];
    type Error = Unassigned;

    fn map_direct(&self, addr: u64, len: usize) -> Option<(&[u8], usize)> {
        let start = usize::try_from(addr).ok().filter(|&a| a < self.ram.len())?;
        let len = len.min(self.ram.len() - start);
        Some((&self.ram[start..start + len], len))
    }

    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), Unassigned> {
        let mmio = self.mmio.lock().unwrap();
        let off = (addr as usize)
            .checked_sub(self.ram.len())
            .ok_or(Unassigned(addr))?;
        let src = mmio.get(off..off + buf.len()).ok_or(Unassigned(addr))?;
        buf.copy_from_slice(src);
        Ok(())
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), Unassigned> {
        let mut mmio = self.mmio.lock().unwrap();
        let off = (addr as usize)
            .checked_sub(self.ram.len())
            .ok_or(Unassigned(addr))?;
        let dst = mmio.get_mut(off..off + buf.len()).ok_or(Unassigned(addr))?;
        dst.copy_from_slice(buf);
        Ok(())
    }
}
