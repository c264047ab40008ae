//! The dispatch table: a sorted, immutable vector of non-overlapping ranges published in
//! an [`rcu::RcuCell`]; writers copy it, change the copy and publish it under a mutex. A
//! vCPU that found a device in the old version keeps using it until its guard drops;
//! the old version (and the last `Arc` of a removed device) is dropped after a grace
//! period. Lookup is a binary search: no lock, no reference count change.

use std::sync::{Arc, Mutex};

use rcu::{RcuCell, ReadSide};

use crate::BusDevice;

/// One mapped range.
#[derive(Clone)]
struct Range {
    base: u64,
    len: u64,
    device: Arc<dyn BusDevice>,
    /// Who mapped it, for [`IoBus::remove_owner`] (a PCI function's BARs).
    owner: u64,
}

/// Why an insert failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("I/O range {base:#x}+{len:#x} is empty, wraps or overlaps {other_base:#x}+{other_len:#x}")]
pub struct Overlap {
    /// The new range.
    pub base: u64,
    /// Its length.
    pub len: u64,
    /// The range in the way (equal to the new one for an empty or wrapping range).
    pub other_base: u64,
    /// Its length.
    pub other_len: u64,
}

/// An address space of devices (the port I/O space, or the MMIO space).
pub struct IoBus {
    name: &'static str,
    current: RcuCell<Vec<Range>>,
    writer: Mutex<()>,
}

/// Owner id for fixed platform devices.
pub const PLATFORM_OWNER: u64 = 0;

impl IoBus {
    /// An empty bus.
    pub fn new(name: &'static str) -> IoBus {
        IoBus {
            name,
            current: RcuCell::new(Vec::new()),
            writer: Mutex::new(()),
        }
    }

    /// The bus's name ("pio", "mmio").
    pub fn name(&self) -> &'static str {
        self.name
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn snapshot(&self) -> Vec<Range> {
        let guard = rcu::read();
        self.current.load(&guard).cloned().unwrap_or_default()
    }

    /// Maps `device` at `base..base + len`.
    ///
    /// # Errors
    ///
    /// [`Overlap`] if the range is empty, wraps, or overlaps a mapped one.
    pub fn insert(
        &self,
        base: u64,
        len: u64,
        owner: u64,
        device: Arc<dyn BusDevice>,
    ) -> Result<(), Overlap> {
        let _w = self.lock();
        let mut ranges = self.snapshot();
        let bad = |other_base, other_len| Overlap {
            base,
            len,
            other_base,
            other_len,
        };
        if len == 0 || base.checked_add(len - 1).is_none() {
            return Err(bad(base, len));
        }
        if let Some(r) = ranges
            .iter()
            .find(|r| r.base <= base + (len - 1) && base <= r.base + (r.len - 1))
        {
            return Err(bad(r.base, r.len));
        }
        let at = ranges.partition_point(|r| r.base < base);
        ranges.insert(
            at,
            Range {
                base,
                len,
                device,
                owner,
            },
        );
        self.current.replace(ranges);
        Ok(())
    }

    /// Unmaps every range `owner` mapped; returns how many.
    pub fn remove_owner(&self, owner: u64) -> usize {
        let _w = self.lock();
        let mut ranges = self.snapshot();
        let before = ranges.len();
        ranges.retain(|r| r.owner != owner);
        let removed = before - ranges.len();
        if removed > 0 {
            self.current.replace(ranges);
        }
        removed
    }

    /// Unmaps the range that starts at `base`, if any.
    pub fn remove(&self, base: u64) -> bool {
        let _w = self.lock();
        let mut ranges = self.snapshot();
        let before = ranges.len();
        ranges.retain(|r| r.base != base);
        let removed = before != ranges.len();
        if removed {
            self.current.replace(ranges);
        }
        removed
    }

    /// The device containing `addr` and `addr`'s offset in its range, under `guard`.
    #[inline]
    pub fn find<'g, G: ReadSide>(
        &'g self,
        guard: &'g G,
        addr: u64,
    ) -> Option<(&'g dyn BusDevice, u64)> {
        let ranges = self.current.load(guard)?;
        let index = ranges.partition_point(|r| r.base <= addr).checked_sub(1)?;
        let r = &ranges[index];
        let offset = addr - r.base;
        (offset < r.len).then_some((&*r.device, offset))
    }

    /// Dispatches a read; returns false (and fills `data` with 0xff, as an unassigned
    /// address reads on a PC) if nothing is mapped there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        let guard = rcu::read();
        match self.find(&guard, addr) {
            Some((device, offset)) => {
                device.read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Dispatches a write; returns false if nothing is mapped there (the write is lost).
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        let guard = rcu::read();
        match self.find(&guard, addr) {
            Some((device, offset)) => {
                device.write(offset, data);
                true
            }
            None => false,
        }
    }
}

impl std::fmt::Debug for IoBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ranges = self.snapshot();
        f.debug_struct("IoBus")
            .field("name", &self.name)
            .field(
                "ranges",
                &ranges
                    .iter()
                    .map(|r| format!("{:#x}+{:#x}", r.base, r.len))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Reg(AtomicU64);
    impl BusDevice for Reg {
        fn read(&self, offset: u64, data: &mut [u8]) {
            data.fill(self.0.load(Ordering::Relaxed) as u8 + offset as u8);
        }
        fn write(&self, _offset: u64, data: &[u8]) {
            self.0.store(u64::from(data[0]), Ordering::Relaxed);
        }
    }

    #[test]
    fn dispatch_overlap_and_removal() {
        let bus = IoBus::new("pio");
        let reg = Arc::new(Reg(AtomicU64::new(7)));
        bus.insert(0x70, 2, 1, reg.clone()).unwrap();
        assert!(bus.insert(0x71, 4, 2, reg.clone()).is_err());
        assert!(bus.insert(0x6f, 2, 2, reg.clone()).is_err());
        assert!(bus.insert(0x10, 0, 2, reg.clone()).is_err());
        assert!(bus.insert(u64::MAX, 2, 2, reg.clone()).is_err());
        bus.insert(0x72, 1, 2, reg.clone()).unwrap();
        let mut b = [0u8; 1];
        assert!(bus.read(0x71, &mut b));
        assert_eq!(b, [8]);
        assert!(!bus.read(0x73, &mut b));
        assert_eq!(b, [0xff]);
        assert!(bus.write(0x70, &[3]));
        assert_eq!(reg.0.load(Ordering::Relaxed), 3);
        assert_eq!(bus.remove_owner(1), 1);
        assert!(!bus.write(0x70, &[3]));
        assert!(bus.remove(0x72));
        assert!(!bus.remove(0x72));
    }

    /// A device removed while a vCPU is inside it: the vCPU finishes on a live device
    /// (the removal does not wait for it), and the device is dropped once the vCPU's
    /// read section has ended and a grace period has passed.
    #[test]
    fn a_removed_device_lives_until_its_readers_are_done() {
        use std::sync::atomic::AtomicBool;
        use std::sync::mpsc;

        struct Tracked(Arc<AtomicBool>);
        impl BusDevice for Tracked {
            fn read(&self, _: u64, data: &mut [u8]) {
                data.fill(0x5a);
            }
            fn write(&self, _: u64, _: &[u8]) {}
        }
        impl Drop for Tracked {
            fn drop(&mut self) {
                self.0.store(true, Ordering::SeqCst);
            }
        }

        let dropped = Arc::new(AtomicBool::new(false));
        let bus = Arc::new(IoBus::new("mmio"));
        bus.insert(0x1000, 0x100, 7, Arc::new(Tracked(dropped.clone())))
            .unwrap();
        let (found_tx, found_rx) = mpsc::channel();
        let (removed_tx, removed_rx) = mpsc::channel::<()>();
        let vcpu = {
            let bus = bus.clone();
            std::thread::spawn(move || {
                let guard = rcu::read();
                let (device, offset) = bus.find(&guard, 0x1010).unwrap();
                found_tx.send(()).unwrap();
                removed_rx.recv().unwrap();
                let mut b = [0u8; 2];
                device.read(offset, &mut b);
                b
            })
        };
        found_rx.recv().unwrap();
        assert_eq!(
            bus.remove_owner(7),
            1,
            "removal does not wait for the reader"
        );
        assert!(!bus.read(0x1010, &mut [0u8]), "new lookups miss it at once");
        assert!(
            !dropped.load(Ordering::SeqCst),
            "a reader is still inside it"
        );
        removed_tx.send(()).unwrap();
        assert_eq!(vcpu.join().unwrap(), [0x5a; 2]);
        rcu::barrier();
        assert!(
            dropped.load(Ordering::SeqCst),
            "dropped after the grace period"
        );
    }
}
