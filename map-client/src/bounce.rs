//! The bounce buffer of one address space: a byte budget, and the clients waiting for
//! it (QEMU's `max-bounce-buffer-size`, `address_space_map` / `_unmap`).

use bottom_half::Bh;

use crate::clients::MapClients;
use crate::sync::{Arc, AtomicUsize, Ordering};
use crate::{Direction, GuestMemoryAccess, MapError};

/// QEMU's default `max-bounce-buffer-size`.
pub const DEFAULT_BUDGET: usize = 4096;

struct Shared {
    max: usize,
    used: AtomicUsize,
    clients: MapClients,
}

/// One address space's bounce buffer: how many bytes may be bounced at once, and the
/// DMA requests waiting for some to be released. Cheap to clone (shared).
#[derive(Clone)]
pub struct Bounce {
    shared: Arc<Shared>,
}

/// A mapping returned by [`Bounce::map`].
pub enum Mapping<'a, M: GuestMemoryAccess + ?Sized + 'a> {
    /// The guest range is RAM: the device accesses it in place.
    Direct {
        /// Host memory for the mapped prefix.
        memory: M::Direct<'a>,
        /// Bytes mapped: the contiguous prefix of what was asked.
        len: usize,
    },
    /// The range is not RAM (MMIO): the device works on a bounce buffer.
    Bounce(BounceMapping),
}

impl<M: GuestMemoryAccess + ?Sized> Mapping<'_, M> {
    /// Bytes mapped (possibly fewer than asked).
    pub fn len(&self) -> usize {
        match self {
            Mapping::Direct { len, .. } => *len,
            Mapping::Bounce(b) => b.len(),
        }
    }

    /// Whether nothing was mapped (never true for a successful map).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<M: GuestMemoryAccess + ?Sized> std::fmt::Debug for Mapping<'_, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Mapping::Direct { len, .. } => f.debug_struct("Direct").field("len", len).finish(),
            Mapping::Bounce(b) => b.fmt(f),
        }
    }
}

/// A bounced part of guest memory. Its budget is returned when it is unmapped (or,
/// without write-back, dropped).
pub struct BounceMapping {
    addr: u64,
    direction: Direction,
    data: Box<[u8]>,
    bounce: Bounce,
}

impl BounceMapping {
    /// The guest address the buffer stands for.
    pub fn addr(&self) -> u64 {
        self.addr
    }
    /// The buffer's length.
    pub fn len(&self) -> usize {
        self.data.len()
    }
    /// Whether the buffer is empty (never, for a successful map).
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    /// The data the device reads ([`Direction::ToDevice`]: prefilled from guest memory).
    pub fn as_slice(&self) -> &[u8] {
        &self.data
    }
    /// The buffer the device fills ([`Direction::FromDevice`]: written back on unmap).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.data
    }
}

impl Drop for BounceMapping {
    fn drop(&mut self) {
        self.bounce.release(self.data.len());
    }
}

impl std::fmt::Debug for BounceMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BounceMapping")
            .field("addr", &self.addr)
            .field("len", &self.data.len())
            .field("direction", &self.direction)
            .finish()
    }
}

/// A registered map client: dropping it (or [`Waiter::cancel`]) unregisters it.
#[must_use = "dropping the waiter unregisters it"]
pub struct Waiter {
    bounce: Bounce,
    id: u64,
    bh: Bh,
}

impl Waiter {
    /// Cancels the wait (QEMU's `dma_aio_cancel` path): unregisters the client and
    /// deletes its BH, so it never runs, even if a release is notifying concurrently.
    pub fn cancel(self) {
        self.bh.delete();
        drop(self);
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.bounce.shared.clients.unregister(self.id);
    }
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter").field("id", &self.id).finish()
    }
}

impl Bounce {
    /// A bounce buffer with a budget of `max_bytes` (QEMU: 4096 unless configured).
    pub fn new(max_bytes: usize) -> Bounce {
        Bounce {
            shared: Arc::new(Shared {
                max: max_bytes,
                used: AtomicUsize::new(0),
                clients: MapClients::default(),
            }),
        }
    }

    /// The budget.
    pub fn budget(&self) -> usize {
        self.shared.max
    }

    /// Bytes bounced now.
    pub fn in_use(&self) -> usize {
        self.shared.used.load(Ordering::SeqCst)
    }

    /// Clients waiting for budget.
    pub fn waiting(&self) -> usize {
        self.shared.clients.len()
    }

    /// Maps `[addr, addr + len)` for a device access in `direction`: directly if it is
    /// RAM (the contiguous prefix), else through a bounce buffer of at most the budget
    /// left (prefilled from guest memory for [`Direction::ToDevice`]).
    ///
    /// # Errors
    ///
    /// [`MapError::Busy`] when the budget is spent (register a [`Waiter`] and retry when
    /// its BH runs); [`MapError::Empty`] for a zero length; [`MapError::Access`] if the
    /// prefill read fails.
    pub fn map<'a, M: GuestMemoryAccess + ?Sized>(
        &self,
        memory: &'a M,
        addr: u64,
        len: usize,
        direction: Direction,
    ) -> Result<Mapping<'a, M>, MapError> {
        if len == 0 {
            return Err(MapError::Empty { addr });
        }
        if let Some((memory, len)) = memory.map_direct(addr, len) {
            return Ok(Mapping::Direct { memory, len });
        }
        let granted = self.reserve(len);
        if granted == 0 {
            return Err(MapError::Busy { addr, len });
        }
        let mut mapping = BounceMapping {
            addr,
            direction,
            data: vec![0; granted].into_boxed_slice(),
            bounce: self.clone(),
        };
        if direction == Direction::ToDevice {
            memory
                .read(addr, &mut mapping.data)
                .map_err(|e| MapError::Access {
                    addr,
                    len: granted,
                    source: e.into(),
                })?;
        }
        Ok(Mapping::Bounce(mapping))
    }

    /// Ends a mapping after the device accessed `access_len` bytes: a bounce buffer for
    /// [`Direction::FromDevice`] is written back to guest memory, then its budget is
    /// released and the waiting clients are notified.
    ///
    /// # Errors
    ///
    /// The guest memory's error if the write-back fails (the budget is released anyway).
    pub fn unmap<M: GuestMemoryAccess + ?Sized>(
        &self,
        memory: &M,
        mapping: Mapping<'_, M>,
        access_len: usize,
    ) -> Result<(), MapError> {
        let Mapping::Bounce(b) = mapping else {
            return Ok(());
        };
        if b.direction == Direction::FromDevice {
            let n = access_len.min(b.data.len());
            memory
                .write(b.addr, &b.data[..n])
                .map_err(|e| MapError::Access {
                    addr: b.addr,
                    len: n,
                    source: e.into(),
                })?;
        }
        Ok(())
    }

    /// Registers `bh` to be scheduled (in its own context) once budget is released; if
    /// some is available already, it is scheduled at once. One-shot: re-register after
    /// each wake-up if the retry fails again.
    pub fn register(&self, bh: &Bh) -> Waiter {
        let shared = &self.shared;
        let id = shared.clients.register(bh.clone(), || {
            shared.used.load(Ordering::Relaxed) < shared.max
        });
        Waiter {
            bounce: self.clone(),
            id,
            bh: bh.clone(),
        }
    }

    /// Takes up to `len` bytes of budget; returns how many.
    fn reserve(&self, len: usize) -> usize {
        let shared = &self.shared;
        let mut used = shared.used.load(Ordering::Relaxed);
        loop {
            let grant = shared.max.saturating_sub(used).min(len);
            if grant == 0 {
                return 0;
            }
            match shared.used.compare_exchange_weak(
                used,
                used + grant,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return grant,
                Err(now) => used = now,
            }
        }
    }

    /// Returns `len` bytes of budget and notifies the waiting clients.
    fn release(&self, len: usize) {
        // Release: the buffer's last use happens before a new owner's reservation.
        // `notify` fences before it reads the client list.
        let previous = self.shared.used.fetch_sub(len, Ordering::Release);
        debug_assert!(previous >= len, "bounce budget underflow");
        self.shared.clients.notify();
    }
}

impl Default for Bounce {
    fn default() -> Self {
        Bounce::new(DEFAULT_BUDGET)
    }
}

impl std::fmt::Debug for Bounce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bounce")
            .field("budget", &self.budget())
            .field("in_use", &self.in_use())
            .finish()
    }
}
