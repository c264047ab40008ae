//! QEMU's firmware configuration device (fw_cfg), traditional port interface: a 16-bit
//! selector at 0x510 and a byte-wide data port at 0x511 (docs/specs/fw_cfg.rst).
//!
//! Items are byte strings under 16-bit keys; named files get keys from 0x20 on and are
//! listed, sorted by name, in the file directory (key 0x19: a big-endian count, then
//! 64-byte entries `{be32 size, be16 select, u16 reserved, char name[56]}`). Reading
//! past an item's end, or an unknown key, returns 0.

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::machine::BusDevice;

/// The selector port; the data port is the next one.
pub const FW_CFG_PORT: u16 = 0x510;

/// Well-known keys (QEMU's `FW_CFG_*`).
pub mod keys {
    /// "QEMU".
    pub const SIGNATURE: u16 = 0x00;
    /// Interface bits: 1 = traditional.
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
    /// x86: ACPI tables (legacy, le16 count).
    pub const ACPI_TABLES: u16 = 0x8000;
    /// x86: SMBIOS entries (legacy, le16 count).
    pub const SMBIOS_ENTRIES: u16 = 0x8001;
    /// x86: the in-kernel irqchip routes IRQ0 to IOAPIC pin 2 (le32).
    pub const IRQ0_OVERRIDE: u16 = 0x8002;
    /// x86: legacy e820 reservations (le32 count).
    pub const E820_TABLE: u16 = 0x8003;
}

/// The fw_cfg device and its items. Items can be added until the guest runs (device
/// models add `bootorder` entries, for instance).
pub struct FwCfg {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    items: BTreeMap<u16, Vec<u8>>,
    files: BTreeMap<String, u16>,
    key: u16,
    offset: usize,
}

/// A file name longer than fw_cfg's 55 characters, or a duplicate.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("fw_cfg file '{0}' has a name too long or already used")]
pub struct BadFileName(pub String);

impl FwCfg {
    /// A device with the signature and ID items.
    pub fn new() -> FwCfg {
        let cfg = FwCfg {
            state: Mutex::new(State::default()),
        };
        cfg.add_bytes(keys::SIGNATURE, b"QEMU".to_vec());
        cfg.add_bytes(keys::ID, 1u32.to_le_bytes().to_vec());
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

    /// Selector 0, offset 0 (power-on state).
    pub fn reset(&self) {
        let mut s = self.state();
        s.key = 0;
        s.offset = 0;
    }

    /// A copy of the item under `key`, if any (for tests and the boot code).
    pub fn item(&self, key: u16) -> Option<Vec<u8>> {
        self.state().items.get(&key).cloned()
    }
}

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
            let mut s = self.state();
            s.key = super::le_value(data) as u16;
            s.offset = 0;
        }
        // Writes to the data port are ignored (QEMU 2.4+).
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
