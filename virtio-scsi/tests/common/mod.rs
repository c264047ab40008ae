//! Shared by the integration tests: guest RAM, images, drives, and the controller as
//! a PCI device that owns its SCSI bus.
#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};

use block_dma::{Drive, ErrorPolicy, FileBackend, FileOptions};
use qdev_bus::{AnyBus, Device};
use ram_block::{Backing, RamBlock, RamList};
use virtio_scsi::VirtioScsi;
use vm_memory::GuestAddress;

/// The controller as a PCI device owning its SCSI bus (so LUNs can be hot-plugged).
pub struct Hba(pub Mutex<VirtioScsi>, pub Arc<scsi::ScsiBus>);

impl Device for Hba {
    fn id(&self) -> &str {
        "scsi0"
    }
    fn for_each_child_bus<'a>(&'a self, visit: &mut dyn FnMut(&'a dyn AnyBus)) {
        visit(self.1.bus())
    }
}

/// Guest RAM: one memfd block of 4 MiB at 0.
pub fn ram() -> RamList {
    let ram = RamList::new();
    let block = RamBlock::new(
        "ram",
        GuestAddress(0),
        4 << 20,
        Backing::Memfd { huge_pages: false },
    );
    ram.add(block.unwrap()).unwrap();
    ram
}

/// A temporary raw image of `size` bytes.
pub fn image(size: u64) -> tempfile::NamedTempFile {
    let img = tempfile::NamedTempFile::new_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    img.as_file().set_len(size).unwrap();
    img
}

/// A drive `id` over `img`; `None` (with a loud SKIPPED line) without io_uring.
pub fn drive(img: &tempfile::NamedTempFile, id: &str) -> Option<Drive> {
    match FileBackend::open(&FileOptions::new(img.path())) {
        Ok(b) => Some(Drive::new(
            id,
            id,
            Arc::new(b),
            ErrorPolicy::default(),
            None,
        )),
        Err(block_dma::OpenError::Unsupported(what)) => {
            eprintln!("SKIPPED: io_uring lacks {what}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}
