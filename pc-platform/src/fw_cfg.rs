//! QEMU's firmware configuration device (fw_cfg) as the x86 `pc` machine has it
//! (docs/specs/fw_cfg.rst): a 16-bit selector at port 0x510, a byte-wide data port at
//! 0x511, and the DMA interface's 64-bit address register at 0x514.
//!
//! Items are byte strings under 16-bit keys; named files get keys from 0x20 on and are
//! listed, sorted by name, in the file directory (key 0x19: a big-endian count, then
//! 64-byte entries `{be32 size, be16 select, u16 reserved, char name[56]}`). Reading
//! past an item's end, or an unknown key, returns 0.
//!
//! **DMA.** With guest memory ([`FwCfg::with_dma`]) the `FW_CFG_ID` item has bit 1 set
//! and the register at 0x514 takes the guest-physical address of an `FWCfgDmaAccess`
//! `{be32 control, be32 length, be64 address}`, big-endian: the high half written at
//! 0x514, then the low half at 0x518, which starts the transfer (or one 64-bit write at
//! 0x514). Reading the register returns "QEMU CFG". The transfer runs synchronously in
//! the vCPU's port write, as in QEMU: control bits SELECT (selector in bits 16..32), then
//! one of READ, WRITE or SKIP (in that priority), and on completion `control` is written
//! back as 0, or `ERROR`. There are no writable items, so a WRITE of any length sets
//! ERROR (the offset still advances, as QEMU's does); READ past an item's end fills
//! zeros; SKIP moves the offset.
//!
//! | guest input | check |
//! | --- | --- |
//! | selector | any 16-bit value; unknown keys read as zeros; the write-channel bit (0x4000) is ignored, as QEMU masks it |
//! | DMA register writes | only 32-bit at 0x514/0x518 and 64-bit at 0x514 count, other widths and offsets are dropped (QEMU's `valid.accepts`) |
//! | descriptor address | the 16 bytes must be guest RAM (ram-block translation, which refuses holes, ROM and wrap-around); otherwise ERROR is written back (if that lands anywhere) and nothing else happens |
//! | buffer `address + length` | overflow-checked; each chunk translated through the RAM list; the first chunk outside RAM stops the transfer with ERROR |
//! | `length` | a u32; nothing is allocated from it: data is copied from the item in place, zeros from a fixed 4 KiB page, so a transfer costs at most O(length) time bounded by the RAM it may touch |

pub mod bootorder;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use ram_block::RamList;
use vm_memory::{Bytes, GuestAddress};

use io_bus::BusDevice;

/// The selector port; the data port is the next one.
pub const FW_CFG_PORT: u16 = 0x510;

/// The DMA address register (8 bytes: high half here, low half at +4).
pub const FW_CFG_DMA_PORT: u16 = 0x514;

/// What reading the DMA address register returns (QEMU's `FW_CFG_DMA_SIGNATURE`).
pub const DMA_SIGNATURE: [u8; 8] = *b"QEMU CFG";

/// Well-known keys (QEMU's `FW_CFG_*`).
pub mod keys {
    /// "QEMU".
    pub const SIGNATURE: u16 = 0x00;
    /// Interface bits: 1 = traditional, 2 = DMA.
    pub const ID: u16 = 0x01;
    /// RAM size (le64).
    pub const RAM_SIZE: u16 = 0x03;
    /// No graphics (le16).
    pub const NOGRAPHIC: u16 = 0x04;
    /// Boot CPUs (le16).
    pub const NB_CPUS: u16 = 0x05;
    /// Machine id (le32).
    pub const MACHINE_ID: u16 = 0x06;
    /// NUMA data (le64 count, then tables).
    pub const NUMA: u16 = 0x0d;
    /// Boot menu (le16).
    pub const BOOT_MENU: u16 = 0x0e;
    /// Maximum CPUs (le16).
    pub const MAX_CPUS: u16 = 0x0f;
    /// The file directory.
    pub const FILE_DIR: u16 = 0x19;
    /// The first file key.
    pub const FILE_FIRST: u16 = 0x20;
    /// The selector bit that once meant "write channel"; QEMU ignores it on select.
    pub const WRITE_CHANNEL: u16 = 0x4000;
    /// x86: ACPI tables (legacy, le16 count).
    pub const ACPI_TABLES: u16 = 0x8000;
    /// x86: SMBIOS entries (legacy, le16 count).
    pub const SMBIOS_ENTRIES: u16 = 0x8001;
    /// x86: the in-kernel irqchip routes IRQ0 to IOAPIC pin 2 (le32).
    pub const IRQ0_OVERRIDE: u16 = 0x8002;
    /// x86: legacy e820 reservations (le32 count).
    pub const E820_TABLE: u16 = 0x8003;
}

/// `FW_CFG_ID` bits.
pub mod features {
    /// The selector/data port interface.
    pub const TRADITIONAL: u32 = 1 << 0;
    /// The DMA interface.
    pub const DMA: u32 = 1 << 1;
}

/// `FWCfgDmaAccess.control` bits.
pub mod dma_control {
    /// Set by the device when a transfer failed.
    pub const ERROR: u32 = 0x01;
    /// Copy from the selected item to guest memory.
    pub const READ: u32 = 0x02;
    /// Advance the item offset without copying.
    pub const SKIP: u32 = 0x04;
    /// Select the item in bits 16..32 first.
    pub const SELECT: u32 = 0x08;
    /// Copy from guest memory to the item (only writable items; we have none).
    pub const WRITE: u32 = 0x10;
}

/// The size of `FWCfgDmaAccess` in guest memory.
pub const DMA_ACCESS_SIZE: usize = 16;

/// How much zero fill one translation covers.
const ZERO_CHUNK: usize = 4096;

/// The fw_cfg device and its items. Items can be added until the guest runs (device
/// models add `bootorder` entries, for instance).
pub struct FwCfg {
    state: Mutex<State>,
    /// Guest RAM for the DMA interface; `None`: traditional interface only.
    dma: Option<RamList>,
}

#[derive(Default)]
struct State {
    items: BTreeMap<u16, Vec<u8>>,
    files: BTreeMap<String, u16>,
    key: u16,
    offset: usize,
    /// The DMA address register (high half latched until the low half arrives).
    dma_addr: u64,
}

/// A file name longer than fw_cfg's 55 characters, or a duplicate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("fw_cfg file '{0}' has a name too long or already used")]
pub struct BadFileName(pub String);

impl FwCfg {
    /// A device with the signature and ID items and only the traditional interface.
    pub fn new() -> FwCfg {
        FwCfg::build(None)
    }

    /// A device that also offers the DMA interface on `ram` (QEMU's x86 default since
    /// 2.5): map [`dma_register`](Self::dma_register) at [`FW_CFG_DMA_PORT`].
    pub fn with_dma(ram: RamList) -> FwCfg {
        FwCfg::build(Some(ram))
    }

    fn build(dma: Option<RamList>) -> FwCfg {
        let id = features::TRADITIONAL | if dma.is_some() { features::DMA } else { 0 };
        let cfg = FwCfg {
            state: Mutex::new(State::default()),
            dma,
        };
        cfg.add_bytes(keys::SIGNATURE, b"QEMU".to_vec());
        cfg.add_bytes(keys::ID, id.to_le_bytes().to_vec());
        cfg.state().rebuild_directory();
        cfg
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the item under `key`.
    pub fn add_bytes(&self, key: u16, data: Vec<u8>) {
        self.state().items.insert(key, data);
    }

    /// Adds the file `name` (e.g. `etc/e820`) and returns its key.
    ///
    /// # Errors
    ///
    /// [`BadFileName`] if the name does not fit or is taken.
    pub fn add_file(&self, name: &str, data: Vec<u8>) -> Result<u16, BadFileName> {
        let mut s = self.state();
        if name.len() > 55 || name.is_empty() || s.files.contains_key(name) {
            return Err(BadFileName(name.to_owned()));
        }
        let key = keys::FILE_FIRST + s.files.len() as u16;
        s.files.insert(name.to_owned(), key);
        s.items.insert(key, data);
        s.rebuild_directory();
        Ok(key)
    }

    /// Selector 0, offset 0, DMA address 0 (power-on state).
    pub fn reset(&self) {
        let mut s = self.state();
        s.key = 0;
        s.offset = 0;
        s.dma_addr = 0;
    }

    /// A copy of the item under `key`, if any (for tests and the boot code).
    pub fn item(&self, key: u16) -> Option<Vec<u8>> {
        self.state().items.get(&key).cloned()
    }

    /// The DMA address register as a bus device, to map at [`FW_CFG_DMA_PORT`] (8
    /// ports). Without guest memory it still reads the signature, and transfers do
    /// nothing (the guest was not told about DMA).
    pub fn dma_register(self: &Arc<Self>) -> Arc<dyn BusDevice> {
        Arc::new(DmaRegister(self.clone()))
    }

    /// Runs the transfer described at `desc` (QEMU's `fw_cfg_dma_transfer`).
    fn dma_transfer(&self, s: &mut State, desc: u64) {
        let Some(ram) = &self.dma else {
            return;
        };
        let guard = rcu::read();
        let mem = ram.blocks(&guard);
        let control_at = GuestAddress(desc);
        let mut raw = [0u8; DMA_ACCESS_SIZE];
        if desc.checked_add(DMA_ACCESS_SIZE as u64).is_none()
            || mem.read_slice(&mut raw, control_at).is_err()
        {
            let _ = mem.write_slice(&dma_control::ERROR.to_be_bytes(), control_at);
            return;
        }
        let field =
            |at: usize| u32::from_be_bytes([raw[at], raw[at + 1], raw[at + 2], raw[at + 3]]);
        let control = field(0);
        let length = field(4);
        let address = (u64::from(field(8)) << 32) | u64::from(field(12));

        if control & dma_control::SELECT != 0 {
            s.select((control >> 16) as u16);
        }
        let op = if control & dma_control::READ != 0 {
            Op::Read
        } else if control & dma_control::WRITE != 0 {
            Op::Write
        } else if control & dma_control::SKIP != 0 {
            Op::Skip
        } else {
            Op::None
        };
        let result = if op == Op::None {
            Ok(())
        } else {
            s.transfer(mem, op, address, length)
        };
        let done = if result.is_ok() {
            0
        } else {
            dma_control::ERROR
        };
        let _ = mem.write_slice(&done.to_be_bytes(), control_at);
    }
}

/// What a DMA request asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Op {
    Read,
    Write,
    Skip,
    None,
}

/// A failed DMA transfer (reported to the guest as the ERROR bit).
#[derive(Debug)]
struct DmaError;

impl State {
    fn rebuild_directory(&mut self) {
        let mut dir = (self.files.len() as u32).to_be_bytes().to_vec();
        for (name, key) in &self.files {
            let size = self.items.get(key).map_or(0, Vec::len) as u32;
            dir.extend(size.to_be_bytes());
            dir.extend(key.to_be_bytes());
            dir.extend([0u8; 2]);
            let mut field = [0u8; 56];
            field[..name.len()].copy_from_slice(name.as_bytes());
            dir.extend(field);
        }
        self.items.insert(keys::FILE_DIR, dir);
    }

    fn select(&mut self, key: u16) {
        self.key = key & !keys::WRITE_CHANNEL;
        self.offset = 0;
    }

    /// The body of QEMU's transfer loop: the item's remaining bytes first, then (past
    /// the end, or with no item) zeros for a read, nothing for a skip, ERROR for a write.
    fn transfer(
        &mut self,
        mem: &ram_block::RamBlocks,
        op: Op,
        address: u64,
        length: u32,
    ) -> Result<(), DmaError> {
        let length = u64::from(length);
        if length == 0 {
            return Ok(());
        }
        let item = self.items.get(&self.key).map_or(&[][..], Vec::as_slice);
        let available = item.len().saturating_sub(self.offset);
        // `min` with a u32 length: the in-item part fits usize.
        let from_item = (available as u64).min(length) as usize;
        let rest = length - from_item as u64;
        let mut failed = false;
        if from_item > 0 {
            let data = &item[self.offset..self.offset + from_item];
            match op {
                Op::Read => {
                    // A buffer that wraps the address space is never all RAM.
                    failed = address.checked_add(from_item as u64).is_none()
                        || mem.write_slice(data, GuestAddress(address)).is_err();
                }
                // No item is writable (QEMU: `!e->allow_write`).
                Op::Write => failed = true,
                Op::Skip | Op::None => {}
            }
            // QEMU advances the offset even when the copy failed.
            self.offset += from_item;
        }
        if failed {
            return Err(DmaError);
        }
        if rest > 0 {
            match op {
                Op::Read => {
                    let at = address.checked_add(from_item as u64).ok_or(DmaError)?;
                    zero_fill(mem, at, rest)?;
                }
                Op::Write => return Err(DmaError),
                Op::Skip | Op::None => {}
            }
        }
        Ok(())
    }
}

/// Writes `len` zero bytes at `addr`, a page at a time (no allocation from `len`).
fn zero_fill(mem: &ram_block::RamBlocks, addr: u64, len: u64) -> Result<(), DmaError> {
    static ZEROS: [u8; ZERO_CHUNK] = [0; ZERO_CHUNK];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(ZERO_CHUNK as u64) as usize;
        let at = addr.checked_add(done).ok_or(DmaError)?;
        at.checked_add(n as u64).ok_or(DmaError)?;
        mem.write_slice(&ZEROS[..n], GuestAddress(at))
            .map_err(|_| DmaError)?;
        done += n as u64;
    }
    Ok(())
}

impl Default for FwCfg {
    fn default() -> FwCfg {
        FwCfg::new()
    }
}

impl BusDevice for FwCfg {
    fn read(&self, offset: u64, data: &mut [u8]) {
        let mut s = self.state();
        let s = &mut *s;
        match offset {
            1 => {
                let item = s.items.get(&s.key).map_or(&[][..], Vec::as_slice);
                for d in data.iter_mut() {
                    *d = item.get(s.offset).copied().unwrap_or(0);
                    s.offset = s.offset.saturating_add(1);
                }
            }
            _ => data.fill(0),
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        if offset == 0 && !data.is_empty() {
            self.state().select(io_bus::le_value(data) as u16);
        }
        // Writes to the data port are ignored (QEMU 2.4+).
    }
}

/// The DMA address register at 0x514..0x51c (big-endian, like QEMU's
/// `fw_cfg_dma_mem_ops`).
struct DmaRegister(Arc<FwCfg>);

impl BusDevice for DmaRegister {
    fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, d) in data.iter_mut().enumerate() {
            let at = usize::try_from(offset)
                .unwrap_or(usize::MAX)
                .saturating_add(i);
            *d = DMA_SIGNATURE.get(at).copied().unwrap_or(0);
        }
    }

    fn write(&self, offset: u64, data: &[u8]) {
        let mut s = self.0.state();
        match (offset, data.len()) {
            (0, 4) => {
                let high = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                s.dma_addr = u64::from(high) << 32;
            }
            (4, 4) => {
                let low = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                let desc = s.dma_addr | u64::from(low);
                // Reset before the access, as QEMU does: the next one starts from 0.
                s.dma_addr = 0;
                self.0.dma_transfer(&mut s, desc);
            }
            (0, 8) => {
                let mut bytes = [0u8; 8];
                bytes.copy_from_slice(data);
                s.dma_addr = 0;
                self.0.dma_transfer(&mut s, u64::from_be_bytes(bytes));
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ram_block::{Backing, RamBlock};

    fn read_item(cfg: &FwCfg, key: u16, len: usize) -> Vec<u8> {
        cfg.write(0, &key.to_le_bytes());
        let mut out = vec![0; len];
        cfg.read(1, &mut out);
        out
    }

    #[test]
    fn signature_directory_and_past_the_end() {
        let cfg = FwCfg::new();
        let key = cfg.add_file("etc/e820", vec![1, 2, 3]).unwrap();
        cfg.add_file("bootorder", vec![]).unwrap();
        assert!(cfg.add_file("etc/e820", vec![]).is_err());
        assert!(cfg.add_file(&"x".repeat(56), vec![]).is_err());
        assert_eq!(read_item(&cfg, 0, 4), b"QEMU");
        assert_eq!(read_item(&cfg, key, 5), [1, 2, 3, 0, 0]);
        assert_eq!(read_item(&cfg, 0x1234, 2), [0, 0]);
        let dir = read_item(&cfg, keys::FILE_DIR, 4 + 128);
        assert_eq!(&dir[..4], &2u32.to_be_bytes());
        // Sorted by name: bootorder first.
        assert_eq!(&dir[4 + 8..4 + 8 + 9], b"bootorder");
        assert_eq!(&dir[68..72], &3u32.to_be_bytes());
        assert_eq!(&dir[72..74], &key.to_be_bytes());
        // QEMU masks the write-channel bit when selecting.
        assert_eq!(read_item(&cfg, keys::WRITE_CHANNEL, 4), b"QEMU");
    }

    // --- DMA -----------------------------------------------------------------------

    /// RAM: 1 MiB at 0, a hole, 64 KiB at 2 MiB.
    const LOW: u64 = 1 << 20;
    const HIGH: u64 = 2 << 20;
    const HIGH_LEN: u64 = 64 << 10;
    /// Where tests put their descriptor.
    const DESC: u64 = 0x1000;
    /// Where tests put their buffer.
    const BUF: u64 = 0x2_0000;

    struct Rig {
        ram: RamList,
        cfg: Arc<FwCfg>,
        reg: Arc<dyn BusDevice>,
    }

    fn rig() -> Rig {
        let ram = RamList::new();
        let anon = || Backing::Anonymous { huge_pages: false };
        ram.add(RamBlock::new("low", GuestAddress(0), LOW, anon()).unwrap())
            .unwrap();
        ram.add(RamBlock::new("high", GuestAddress(HIGH), HIGH_LEN, anon()).unwrap())
            .unwrap();
        let cfg = Arc::new(FwCfg::with_dma(ram.clone()));
        let reg = cfg.dma_register();
        Rig { ram, cfg, reg }
    }

    impl Rig {
        fn put(&self, addr: u64, data: &[u8]) {
            self.ram
                .memory()
                .write_slice(data, GuestAddress(addr))
                .unwrap();
        }

        fn get(&self, addr: u64, len: usize) -> Vec<u8> {
            let mut out = vec![0; len];
            self.ram
                .memory()
                .read_slice(&mut out, GuestAddress(addr))
                .unwrap();
            out
        }

        fn descriptor(&self, at: u64, control: u32, length: u32, address: u64) {
            let mut d = [0u8; 16];
            d[..4].copy_from_slice(&control.to_be_bytes());
            d[4..8].copy_from_slice(&length.to_be_bytes());
            d[8..].copy_from_slice(&address.to_be_bytes());
            self.put(at, &d);
        }

        /// Starts the transfer at `desc` as SeaBIOS and Linux do: high half, low half.
        fn kick(&self, desc: u64) {
            self.reg.write(0, &((desc >> 32) as u32).to_be_bytes());
            self.reg.write(4, &(desc as u32).to_be_bytes());
        }

        /// Writes a descriptor at [`DESC`], kicks, returns the control word after.
        fn dma(&self, control: u32, length: u32, address: u64) -> u32 {
            self.descriptor(DESC, control, length, address);
            self.kick(DESC);
            self.control(DESC)
        }

        fn control(&self, desc: u64) -> u32 {
            u32::from_be_bytes(self.get(desc, 4).try_into().unwrap())
        }
    }

    fn select(key: u16) -> u32 {
        u32::from(key) << 16 | dma_control::SELECT
    }

    use dma_control::{ERROR, READ, SKIP, WRITE};

    #[test]
    fn id_advertises_dma_only_with_memory() {
        let r = rig();
        assert_eq!(read_item(&r.cfg, keys::ID, 4), 3u32.to_le_bytes());
        assert_eq!(read_item(&FwCfg::new(), keys::ID, 4), 1u32.to_le_bytes());
    }

    #[test]
    fn register_reads_the_signature_at_any_width() {
        let r = rig();
        let mut b8 = [0u8; 8];
        r.reg.read(0, &mut b8);
        assert_eq!(&b8, b"QEMU CFG");
        let mut b4 = [0u8; 4];
        r.reg.read(4, &mut b4);
        assert_eq!(&b4, b" CFG");
        let mut b1 = [0u8; 1];
        r.reg.read(7, &mut b1);
        assert_eq!(b1, *b"G");
        r.reg.read(u64::MAX, &mut b4);
        assert_eq!(b4, [0; 4]);
    }

    #[test]
    fn select_and_read() {
        let r = rig();
        let key = r.cfg.add_file("etc/test", (0..=255u8).collect()).unwrap();
        r.put(BUF, &[0xaa; 300]);
        assert_eq!(r.dma(select(key) | READ, 16, BUF), 0);
        assert_eq!(
            r.get(BUF, 17),
            [&(0..16u8).collect::<Vec<_>>()[..], &[0xaa]].concat()
        );
        // Without SELECT the offset carries on, shared with the data port.
        assert_eq!(r.dma(READ, 4, BUF), 0);
        assert_eq!(r.get(BUF, 4), [16, 17, 18, 19]);
        let mut b = [0u8; 1];
        r.cfg.read(1, &mut b);
        assert_eq!(b, [20]);
        // SELECT resets the offset; the selector port sees the DMA's selection.
        assert_eq!(r.dma(select(key) | READ, 2, BUF), 0);
        assert_eq!(r.get(BUF, 2), [0, 1]);
    }

    #[test]
    fn read_past_the_end_fills_zeros() {
        let r = rig();
        let key = r.cfg.add_file("etc/short", vec![1, 2, 3]).unwrap();
        r.put(BUF, &[0xaa; 16]);
        assert_eq!(r.dma(select(key) | READ, 8, BUF), 0);
        assert_eq!(r.get(BUF, 9), [1, 2, 3, 0, 0, 0, 0, 0, 0xaa]);
        // Entirely past the end, and an unknown key: zeros.
        r.put(BUF, &[0xaa; 16]);
        assert_eq!(r.dma(READ, 4, BUF), 0);
        assert_eq!(r.get(BUF, 5), [0, 0, 0, 0, 0xaa]);
        r.put(BUF, &[0xaa; 16]);
        assert_eq!(r.dma(select(0x3fff) | READ, 4, BUF), 0);
        assert_eq!(r.get(BUF, 5), [0, 0, 0, 0, 0xaa]);
    }

    #[test]
    fn skip_moves_the_offset_without_touching_memory() {
        let r = rig();
        let key = r.cfg.add_file("etc/test", (0..100u8).collect()).unwrap();
        r.put(BUF, &[0xaa; 8]);
        assert_eq!(r.dma(select(key) | SKIP, 10, BUF), 0);
        assert_eq!(r.get(BUF, 8), [0xaa; 8]);
        assert_eq!(r.dma(READ, 2, BUF), 0);
        assert_eq!(r.get(BUF, 2), [10, 11]);
        // Skipping past the end is no error; the buffer address does not matter.
        assert_eq!(r.dma(SKIP, 1000, u64::MAX - 10), 0);
        assert_eq!(r.dma(READ, 1, BUF), 0);
        assert_eq!(r.get(BUF, 1), [0]);
    }

    #[test]
    fn read_wins_over_write_and_skip() {
        let r = rig();
        let key = r.cfg.add_file("etc/test", vec![7; 4]).unwrap();
        assert_eq!(r.dma(select(key) | READ | WRITE | SKIP, 4, BUF), 0);
        assert_eq!(r.get(BUF, 4), [7; 4]);
        // WRITE wins over SKIP: an error, since nothing is writable.
        assert_eq!(r.dma(select(key) | WRITE | SKIP, 4, BUF), ERROR);
    }

    #[test]
    fn write_is_an_error_and_changes_nothing() {
        let r = rig();
        let key = r.cfg.add_file("etc/test", vec![1, 2, 3, 4]).unwrap();
        r.put(BUF, &[9; 4]);
        assert_eq!(r.dma(select(key) | WRITE, 2, BUF), ERROR);
        assert_eq!(r.cfg.item(key).unwrap(), [1, 2, 3, 4]);
        // QEMU advances the offset over the refused bytes.
        assert_eq!(r.dma(READ, 2, BUF), 0);
        assert_eq!(r.get(BUF, 2), [3, 4]);
        // Past the end, and to an unknown key: errors too; length 0: nothing to refuse.
        assert_eq!(r.dma(WRITE, 2, BUF), ERROR);
        assert_eq!(r.dma(select(0x3fff) | WRITE, 1, BUF), ERROR);
        assert_eq!(r.dma(select(key) | WRITE, 0, BUF), 0);
    }

    #[test]
    fn select_alone_and_no_operation() {
        let r = rig();
        let key = r.cfg.add_file("etc/test", vec![5, 6]).unwrap();
        r.put(BUF, &[0xaa; 4]);
        // SELECT without an operation: the length is ignored, nothing is copied.
        assert_eq!(r.dma(select(key), 4, BUF), 0);
        assert_eq!(r.get(BUF, 4), [0xaa; 4]);
        let mut b = [0u8; 2];
        r.cfg.read(1, &mut b);
        assert_eq!(b, [5, 6]);
        // The ERROR bit on input is cleared on completion.
        assert_eq!(r.dma(ERROR, 0, 0), 0);
    }

    #[test]
    fn buffers_outside_ram_set_error() {
        let r = rig();
        let key = r.cfg.add_file("etc/test", vec![1; 64]).unwrap();
        // In the hole, past the top of RAM, wrapping the address space.
        for address in [LOW, HIGH + HIGH_LEN, 4 << 30, u64::MAX - 3] {
            assert_eq!(r.dma(select(key) | READ, 8, address), ERROR, "{address:#x}");
            assert_eq!(
                r.dma(select(0x3fff) | READ, 8, address),
                ERROR,
                "{address:#x}"
            );
        }
        // Straddling the end of a block: the item part, then the zero fill.
        assert_eq!(r.dma(select(key) | READ, 8, LOW - 4), ERROR);
        assert_eq!(r.dma(select(key) | READ, 128, LOW - 96), ERROR);
        assert_eq!(r.get(LOW - 96, 64), [1; 64]);
        // The high block works.
        assert_eq!(r.dma(select(key) | READ, 64, HIGH), 0);
        assert_eq!(r.get(HIGH, 64), [1; 64]);
    }

    #[test]
    fn descriptors_outside_ram_do_nothing() {
        let r = rig();
        let key = r.cfg.add_file("etc/test", vec![1; 64]).unwrap();
        r.put(BUF, &[0xaa; 8]);
        for desc in [
            LOW,
            LOW - 8,
            HIGH - 1,
            HIGH + HIGH_LEN - 15,
            u64::MAX - 7,
            u64::MAX,
        ] {
            r.kick(desc);
        }
        // A descriptor that straddles the end of RAM: the control word in RAM gets
        // ERROR, nothing else happens.
        r.descriptor(LOW - 16, select(key) | READ, 8, BUF);
        r.kick(LOW - 8);
        assert_eq!(r.get(BUF, 8), [0xaa; 8]);
        r.put(LOW - 8, &[0; 8]);
        r.kick(LOW - 8);
        assert_eq!(r.control(LOW - 8), ERROR);
        // Nothing was selected by any of that.
        let mut b = [0u8; 4];
        r.cfg.read(1, &mut b);
        assert_eq!(&b, b"QEMU");
    }

    #[test]
    fn register_protocol() {
        let r = rig();
        let key = r.cfg.add_file("etc/test", vec![3; 4]).unwrap();
        // One 64-bit write starts the transfer.
        r.descriptor(HIGH, select(key) | READ, 4, BUF);
        r.reg.write(0, &HIGH.to_be_bytes());
        assert_eq!(r.control(HIGH), 0);
        assert_eq!(r.get(BUF, 4), [3; 4]);
        // The high half alone does nothing; the address register is cleared after each
        // transfer, so a lone low write uses high = 0.
        r.put(BUF, &[0; 4]);
        r.descriptor(DESC, select(key) | READ, 4, BUF);
        r.reg.write(0, &1u32.to_be_bytes());
        assert_eq!(r.control(DESC), select(key) | READ);
        r.reg.write(4, &(DESC as u32).to_be_bytes()); // 0x1_0000_1000: not RAM
        assert_eq!(r.control(DESC), select(key) | READ);
        r.reg.write(4, &(DESC as u32).to_be_bytes());
        assert_eq!(r.control(DESC), 0);
        assert_eq!(r.get(BUF, 4), [3; 4]);
        // Other widths and offsets are ignored.
        r.descriptor(DESC, select(key) | READ, 4, BUF);
        r.reg.write(4, &(DESC as u16).to_be_bytes());
        r.reg.write(2, &(DESC as u32).to_be_bytes());
        r.reg.write(4, &DESC.to_be_bytes());
        r.reg.write(0, &[0]);
        assert_eq!(r.control(DESC), select(key) | READ);
        // Reset clears a latched high half.
        r.reg.write(0, &1u32.to_be_bytes());
        r.cfg.reset();
        r.kick(DESC);
        assert_eq!(r.control(DESC), 0);
    }

    #[test]
    fn big_transfers() {
        let r = rig();
        let data: Vec<u8> = (0..600 << 10)
            .map(|i: u32| (i * 7 + (i >> 12)) as u8)
            .collect();
        let key = r.cfg.add_file("etc/big", data.clone()).unwrap();
        // 600 KiB then 4 KiB + 1 of zeros, in one request.
        let len = (600 << 10) + 4097;
        r.put(BUF + u64::from(len), &[0xaa; 16]);
        assert_eq!(r.dma(select(key) | READ, len, BUF), 0);
        let got = r.get(BUF, len as usize + 1);
        assert_eq!(&got[..600 << 10], &data[..]);
        assert!(got[600 << 10..len as usize].iter().all(|&b| b == 0));
        assert_eq!(got[len as usize], 0xaa);
        // The largest length: zero fill runs to the end of RAM and stops with ERROR
        // (no allocation, no wrap).
        assert_eq!(r.dma(select(0x3fff) | READ, u32::MAX, 0x8_0000), ERROR);
        assert!(
            r.get(0x8_0000, (LOW - 0x8_0000) as usize)
                .iter()
                .all(|&b| b == 0)
        );
        assert_eq!(r.dma(select(key) | SKIP, u32::MAX, 0), 0);
        assert_eq!(r.dma(select(key) | WRITE, u32::MAX, 0), ERROR);
    }

    /// A seeded generator (deterministic runs), with the two draws the test uses.
    struct Rng(fastrand::Rng);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0.u64(..)
        }
        fn pick<T: Copy>(&mut self, xs: &[T]) -> T {
            *self.0.choice(xs).expect("a non-empty choice")
        }
    }

    /// Random descriptors (random control words, lengths and addresses, biased to the
    /// edges of RAM) against a model of QEMU's transfer: no panic, the control word is
    /// what the model says, the buffer holds what it says, and no byte outside the
    /// buffer and the control word changes.
    #[test]
    fn random_descriptors_match_the_model() {
        let r = rig();
        let items: Vec<Vec<u8>> = (0..4u8)
            .map(|k| vec![k + 1; 37 * usize::from(k) + 1])
            .collect();
        let item_keys: Vec<u16> = items
            .iter()
            .enumerate()
            .map(|(i, d)| r.cfg.add_file(&format!("f{i}"), d.clone()).unwrap())
            .collect();
        let mut rng = Rng(fastrand::Rng::with_seed(0x9e37_79b9_7f4a_7c15));
        let in_ram = |a: u64, n: u64| {
            a.checked_add(n)
                .is_some_and(|end| end <= LOW || (a >= HIGH && end <= HIGH + HIGH_LEN))
        };
        let (mut key, mut offset) = (keys::SIGNATURE, 0usize);
        for round in 0..2000 {
            let edges = [
                0,
                1,
                15,
                16,
                LOW - 16,
                LOW - 8,
                LOW - 1,
                LOW,
                HIGH - 8,
                HIGH,
                HIGH + HIGH_LEN - 16,
                u64::MAX - 15,
            ];
            let desc = if rng.next() % 4 == 0 {
                rng.pick(&edges)
            } else {
                0x100 + (rng.next() % 0x100)
            };
            let sel = rng.pick(&[
                item_keys[0],
                item_keys[1],
                item_keys[2],
                item_keys[3],
                0,
                0x3fff,
                0x4000 | item_keys[1],
            ]);
            let control = (u32::from(sel) << 16) | (rng.next() as u32 & 0x1f);
            let any = rng.next() as u32 % 4096;
            let length = rng.pick(&[0, 1, 5, 40, 200, any, u32::MAX]);
            let address = if rng.next() % 2 == 0 {
                0x1_0000 + rng.next() % 0x1_0000
            } else {
                rng.pick(&edges)
                    .wrapping_add(rng.next() % 64)
                    .wrapping_sub(32)
            };
            let desc_ok = in_ram(desc, 16);
            if desc_ok {
                r.descriptor(desc, control, length, address);
            }
            let before = r.get(0, LOW as usize);
            let before_high = r.get(HIGH, HIGH_LEN as usize);
            r.kick(desc);
            if !desc_ok {
                continue;
            }
            // The model.
            if control & dma_control::SELECT != 0 {
                key = sel & !keys::WRITE_CHANNEL;
                offset = 0;
            }
            // Our files, or the signature (0), or nothing (0x3fff).
            let item: &[u8] = match item_keys.iter().position(|&k| k == key) {
                Some(i) => &items[i],
                None if key == keys::SIGNATURE => b"QEMU",
                None => &[],
            };
            let op = if control & READ != 0 {
                READ
            } else if control & WRITE != 0 {
                WRITE
            } else if control & SKIP != 0 {
                SKIP
            } else {
                0
            };
            let len = if op == 0 { 0 } else { u64::from(length) };
            let from_item = (item.len().saturating_sub(offset) as u64).min(len) as usize;
            let mut expect = vec![0u8; 0];
            let mut error = false;
            if len > 0 {
                offset += from_item;
                match op {
                    READ => {
                        error = !in_ram(address, len);
                        if !error {
                            expect = item[offset - from_item..offset].to_vec();
                            expect.resize(len as usize, 0);
                        }
                    }
                    WRITE => error = true,
                    _ => {}
                }
            }
            let want = if error { ERROR } else { 0 };
            assert_eq!(
                r.control(desc),
                want,
                "round {round}: control {control:#x} len {length} at {address:#x}"
            );
            let after = r.get(0, LOW as usize);
            let after_high = r.get(HIGH, HIGH_LEN as usize);
            let untouched = |base: u64, old: &[u8], new: &[u8]| {
                for (i, (a, b)) in old.iter().zip(new).enumerate() {
                    let at = base + i as u64;
                    let in_desc = at >= desc && at < desc + 4;
                    let in_buf = op == READ
                        && at >= address
                        && address.checked_add(len).is_none_or(|end| at < end);
                    assert!(
                        a == b || in_desc || in_buf,
                        "round {round}: byte {at:#x} changed"
                    );
                }
            };
            untouched(0, &before, &after);
            untouched(HIGH, &before_high, &after_high);
            if op == READ && !error {
                assert_eq!(r.get(address, len as usize), expect, "round {round}");
            }
        }
    }
}
