//! `block_resize` seen by the device: the capacity in config space follows the drive's
//! size (whole sectors), which is what a driver reads after the config-change
//! interrupt its transport raises.

use std::sync::Arc;

use block_dma::{BlockBackend, Drive, ErrorPolicy, FileBackend, FileOptions};
use virtio_blk::{BlkOptions, VirtioBlk};
use virtio_core::VirtioDevice;

fn capacity_in_config(blk: &VirtioBlk) -> u64 {
    let mut bytes = [0u8; 8];
    blk.read_config(0, &mut bytes);
    u64::from_le_bytes(bytes)
}

#[test]
fn the_config_space_capacity_follows_a_resize() {
    let img = tempfile::NamedTempFile::new().unwrap();
    img.as_file().set_len(1 << 20).unwrap();
    let file = Arc::new(FileBackend::open(&FileOptions::new(img.path())).unwrap());
    let drive = Drive::new("d", "n", file.clone(), ErrorPolicy::default(), None);
    let blk = VirtioBlk::new(drive, BlkOptions::default()).unwrap();
    assert_eq!(capacity_in_config(&blk), 2048);

    file.resize(2 << 20).unwrap();
    assert_eq!(capacity_in_config(&blk), 4096);
    assert_eq!(blk.capacity(), 4096);
    // A size that is not whole sectors shows the whole sectors.
    file.resize((1 << 20) + 1000).unwrap();
    assert_eq!(capacity_in_config(&blk), 2049);
    // Config reads of the other fields are unchanged (blk_size at 20).
    let mut blk_size = [0u8; 4];
    blk.read_config(20, &mut blk_size);
    assert_eq!(u32::from_le_bytes(blk_size), 512);
}
