//! cargo-fuzz target: fw_cfg's ports (selector, data) and its DMA interface against
//! arbitrary guest memory (`cargo +nightly fuzz run fw_cfg` in `pc-platform/`).
//!
//! The device is filled as kvm-machine fills it for SeaBIOS, over two RAM blocks with
//! a hole (`0..64K`, `128K..192K`; either can be hot-removed and re-added: memory that
//! shrinks under a transfer). A shadow model of the spec (docs/specs/fw_cfg.rst)
//! runs beside it, and every access is checked against the model:
//! - the file directory is well-formed (big-endian count, entries sorted by name, each
//!   naming its key and size);
//! - data port reads return the selected item's next bytes (zeros past its end or for
//!   unknown keys), the selector reads 0, the DMA register reads "QEMU CFG";
//! - a DMA transfer whose descriptor is RAM writes back control 0 or ERROR, ERROR
//!   exactly when the model says so (a write, a buffer that is not all RAM); a
//!   successful READ leaves the item's bytes then zeros in the buffer; the offset
//!   advances as QEMU's does, so later port reads still match.
//!
//! Input format: ops of one byte followed by operands (little-endian), see
//! `seeds/gen.py` (the seeds replay SeaBIOS's accesses captured from QEMU).
#![no_main]

#[path = "../../../scripts/fuzz-common/guest_ram.rs"]
mod guest_ram;
#[path = "../../../scripts/fuzz-common/input.rs"]
mod input;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use guest_ram::{fresh_ram, toggle};
use input::Input;
use io_bus::BusDevice;
use pc_platform::fw_cfg::{DMA_SIGNATURE, FwCfg, dma_control, keys};
use ram_block::RamList;
use vm_memory::{Bytes, GuestAddress, GuestMemory, Permissions};

const MAX_OPS: usize = 1024;

/// The items kvm-machine and vmm-bin add (sizes as for a 1-CPU, 16 MiB guest).
fn items() -> (Vec<(u16, Vec<u8>)>, Vec<(&'static str, Vec<u8>)>) {
    let fixed = vec![
        (keys::RAM_SIZE, (16u64 << 20).to_le_bytes().to_vec()),
        (keys::NOGRAPHIC, 1u16.to_le_bytes().to_vec()),
        (keys::NB_CPUS, 1u16.to_le_bytes().to_vec()),
        (keys::MAX_CPUS, 1u16.to_le_bytes().to_vec()),
        (keys::MACHINE_ID, 0u32.to_le_bytes().to_vec()),
        (keys::BOOT_MENU, 0u16.to_le_bytes().to_vec()),
        (keys::IRQ0_OVERRIDE, 1u32.to_le_bytes().to_vec()),
        (keys::NUMA, vec![0; 16]),
        (keys::ACPI_TABLES, 0u16.to_le_bytes().to_vec()),
        (keys::SMBIOS_ENTRIES, 0u16.to_le_bytes().to_vec()),
        (keys::E820_TABLE, 0u32.to_le_bytes().to_vec()),
    ];
    let files = vec![
        ("etc/e820", (0..40u8).collect()),
        (
            "etc/smbios/smbios-tables",
            (0..=255u8).cycle().take(700).collect(),
        ),
        ("etc/smbios/smbios-anchor", vec![0x5f; 24]),
        ("etc/boot-cpus", 1u16.to_le_bytes().to_vec()),
        ("etc/boot-fail-wait", u32::MAX.to_le_bytes().to_vec()),
        ("etc/sercon-port", 0x3f8u16.to_le_bytes().to_vec()),
        ("bootorder", b"/pci@i0cf8/*@4\n".to_vec()),
    ];
    (fixed, files)
}

/// The spec's view of the device.
struct Model {
    /// The items: read-only (fw_cfg has no writable items), shared by every run.
    items: &'static BTreeMap<u16, Vec<u8>>,
    key: u16,
    offset: usize,
    dma_high: u64,
}

impl Model {
    fn byte(&mut self) -> u8 {
        let b = self
            .items
            .get(&self.key)
            .and_then(|i| i.get(self.offset))
            .copied()
            .unwrap_or(0);
        self.offset = self.offset.saturating_add(1);
        b
    }
    fn select(&mut self, key: u16) {
        self.key = key & !keys::WRITE_CHANNEL;
        self.offset = 0;
    }
}

/// The model's items (directory included) and the device's inputs, built once; the
/// first device's directory is checked against the spec then.
struct Fixture {
    fixed: Vec<(u16, Vec<u8>)>,
    files: Vec<(&'static str, Vec<u8>)>,
    model: BTreeMap<u16, Vec<u8>>,
}

fn fixture(ram: &RamList) -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let (fixed, files) = items();
        let cfg = device(ram, &fixed, &files);
        let mut model = BTreeMap::new();
        model.insert(keys::SIGNATURE, b"QEMU".to_vec());
        model.insert(keys::ID, 3u32.to_le_bytes().to_vec());
        model.extend(fixed.iter().cloned());
        let mut sorted = BTreeMap::new();
        for (i, (name, data)) in files.iter().enumerate() {
            let key = keys::FILE_FIRST + i as u16;
            model.insert(key, data.clone());
            sorted.insert(*name, key);
        }
        let dir = cfg.item(keys::FILE_DIR).expect("the directory exists");
        assert_eq!(dir.len(), 4 + 64 * sorted.len());
        assert_eq!(dir[..4], (sorted.len() as u32).to_be_bytes());
        for (entry, (name, key)) in dir[4..].chunks(64).zip(&sorted) {
            let size = model[key].len() as u32;
            assert_eq!(entry[..4], size.to_be_bytes(), "{name}");
            assert_eq!(entry[4..6], key.to_be_bytes(), "{name}");
            let end = 8 + name.len();
            assert_eq!(&entry[8..end], name.as_bytes());
            assert!(entry[end..].iter().all(|&b| b == 0), "{name}");
        }
        model.insert(keys::FILE_DIR, dir);
        Fixture {
            fixed,
            files,
            model,
        }
    })
}

/// A device filled with `fixed` items and `files`.
fn device(ram: &RamList, fixed: &[(u16, Vec<u8>)], files: &[(&str, Vec<u8>)]) -> Arc<FwCfg> {
    let cfg = FwCfg::with_dma(ram.clone());
    for (key, data) in fixed {
        cfg.add_bytes(*key, data.clone());
    }
    for (name, data) in files {
        cfg.add_file(name, data.clone())
            .expect("distinct short names");
    }
    Arc::new(cfg)
}

/// The device (built once: it has no writable items, so a reset and zeroed RAM give
/// every run the same start) and a fresh model over the shared items.
fn setup() -> (&'static RamList, &'static Arc<FwCfg>, Model) {
    static DEVICE: OnceLock<Arc<FwCfg>> = OnceLock::new();
    let ram = fresh_ram();
    let cfg = DEVICE.get_or_init(|| {
        let f = fixture(ram);
        device(ram, &f.fixed, &f.files)
    });
    cfg.reset();
    let model = Model {
        items: &fixture(ram).model,
        key: 0,
        offset: 0,
        dma_high: 0,
    };
    (ram, cfg, model)
}

/// Whether all of `[addr, addr + len)` is RAM now.
fn all_ram(ram: &RamList, addr: u64, len: u64) -> bool {
    addr.checked_add(len).is_some()
        && (len == 0
            || ram
                .memory()
                .check_range(GuestAddress(addr), len as usize, Permissions::ReadWrite))
}

/// Runs the transfer at `desc` on the model and checks what the device did.
fn dma(ram: &RamList, model: &mut Model, desc: u64, write: impl FnOnce()) {
    let mut raw = [0u8; 16];
    let desc_ok = all_ram(ram, desc, 16)
        && ram
            .memory()
            .read_slice(&mut raw, GuestAddress(desc))
            .is_ok();
    write();
    if !desc_ok {
        return;
    }
    let field = |at: usize| u32::from_be_bytes(raw[at..at + 4].try_into().unwrap());
    let (control, length) = (field(0), u64::from(field(4)));
    let address = (u64::from(field(8)) << 32) | u64::from(field(12));
    if control & dma_control::SELECT != 0 {
        model.select((control >> 16) as u16);
    }
    let item: &[u8] = model.items.get(&model.key).map_or(&[], Vec::as_slice);
    let from_item = (item.len().saturating_sub(model.offset) as u64).min(length);
    let buffer_ok = all_ram(ram, address, length);
    let (error, read) = if control & dma_control::READ != 0 {
        (!buffer_ok, true)
    } else if control & dma_control::WRITE != 0 {
        (length > 0, false)
    } else {
        (false, false)
    };
    let start = model.offset;
    if control & (dma_control::READ | dma_control::WRITE | dma_control::SKIP) != 0 {
        model.offset += from_item as usize;
    }
    let mem = ram.memory();
    let back: u32 = u32::from_be(mem.read_obj(GuestAddress(desc)).expect("descriptor is RAM"));
    let want = if error { dma_control::ERROR } else { 0 };
    assert_eq!(
        back, want,
        "control after {control:#x} len {length} at {address:#x}"
    );
    // The buffer's contents, unless the control write-back landed in it.
    let overlaps = address < desc + 4 && desc < address.saturating_add(length);
    if read && !error && !overlaps && length <= 0x1_0000 {
        let mut got = vec![0u8; length as usize];
        mem.read_slice(&mut got, GuestAddress(address))
            .expect("buffer is RAM");
        let n = from_item as usize;
        assert_eq!(got[..n], item[start.min(item.len())..][..n], "item bytes");
        assert!(got[n..].iter().all(|&b| b == 0), "zeros past the item");
    }
}

fn run(data: &[u8]) -> Option<()> {
    let (ram, cfg, mut model) = setup();
    let mut present = [true, true];
    let dma_reg = cfg.dma_register();
    let mut input = Input(data);
    for _ in 0..MAX_OPS {
        let op = input.u8()?;
        let width = [1usize, 2, 4, 8][usize::from(op >> 4 & 3)];
        match op & 0x0f {
            0 => {
                let v = input.u32()?.to_le_bytes();
                let w = width.min(4);
                cfg.write(0, &v[..w]);
                model.select(io_bus::le_value(&v[..w]) as u16);
            }
            1 => {
                let mut got = [0u8; 8];
                cfg.read(1, &mut got[..width]);
                for (i, &b) in got[..width].iter().enumerate() {
                    assert_eq!(b, model.byte(), "data byte {i} of key {:#x}", model.key);
                }
            }
            2 => cfg.write(1, &input.u32()?.to_le_bytes()[..width.min(4)]),
            3 => {
                let mut got = [0xffu8; 8];
                cfg.read(0, &mut got[..width]);
                assert!(got[..width].iter().all(|&b| b == 0), "selector reads 0");
            }
            4 => {
                // A DMA register write: offset and width from the input.
                let off = u64::from(input.u8()? & 7);
                let v = input.u64()?.to_be_bytes();
                let bytes = &v[8 - width..];
                match (off, width) {
                    (0, 4) => {
                        model.dma_high =
                            u64::from(u32::from_be_bytes(bytes.try_into().ok()?)) << 32;
                        dma_reg.write(off, bytes);
                    }
                    (4, 4) | (0, 8) => {
                        let desc = if width == 8 {
                            u64::from_be_bytes(v)
                        } else {
                            model.dma_high | u64::from(u32::from_be_bytes(bytes.try_into().ok()?))
                        };
                        model.dma_high = 0;
                        dma(ram, &mut model, desc, || dma_reg.write(off, bytes));
                    }
                    _ => dma_reg.write(off, bytes),
                }
            }
            5 => {
                let off = usize::from(input.u8()? & 7);
                let mut got = [0u8; 8];
                dma_reg.read(off as u64, &mut got[..width]);
                for (i, &b) in got[..width].iter().enumerate() {
                    assert_eq!(b, DMA_SIGNATURE.get(off + i).copied().unwrap_or(0));
                }
            }
            6 => {
                let at = input.u32()?;
                let n = usize::from(input.u8()?);
                let bytes = input.bytes(n)?;
                let _ = ram.memory().write_slice(bytes, GuestAddress(u64::from(at)));
            }
            7 => {
                // An FWCfgDmaAccess {be32 control, be32 length, be64 address} at `at`.
                let at = u64::from(input.u32()?);
                let mut d = [0u8; 16];
                d[..4].copy_from_slice(&input.u32()?.to_be_bytes());
                d[4..8].copy_from_slice(&input.u32()?.to_be_bytes());
                d[8..].copy_from_slice(&u64::from(input.u32()?).to_be_bytes());
                let _ = ram.memory().write_slice(&d, GuestAddress(at));
            }
            8 => {
                cfg.reset();
                model.key = 0;
                model.offset = 0;
                model.dma_high = 0;
            }
            _ => toggle(ram, &mut present, usize::from(input.u8()? & 1))?,
        }
    }
    Some(())
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = run(data);
});
