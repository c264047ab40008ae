//! `-drive ...,discard=`: the guest is offered discard (`VIRTIO_BLK_F_DISCARD`) only
//! when the drive says `discard=unmap` (or `on`); QEMU's default is `ignore`.

use block_dma::{BlockBackend, FileBackend, FileOptions};
use virtio_blk::{BlkOptions, VirtioBlk};
use virtio_core::VirtioDevice;

/// `VIRTIO_BLK_F_DISCARD`.
const F_DISCARD: u64 = 1 << 13;

/// Whether the guest is offered discard for a drive given as `-drive ARG`.
fn offers_discard(arg: &str) -> bool {
    let img = tempfile::NamedTempFile::new().unwrap();
    img.as_file().set_len(1 << 20).unwrap();
    let config = vmm_bin::cli::parse([
        "-drive".to_owned(),
        format!("file={},if=virtio,{arg}", img.path().display()),
    ])
    .unwrap();
    let file = FileBackend::open(&FileOptions::new(img.path())).unwrap();
    assert!(
        file.info().discard,
        "the file backend offers discard on this host (fallocate)"
    );
    // As the disks build it: a drive in the node registry, taken by the device.
    let nodes = block_node::NodeRegistry::new();
    nodes.add_drive(&config.drives[0], "d").unwrap();
    let claim = nodes
        .attach("d", block_node::AttachOptions::default())
        .unwrap();
    let blk = VirtioBlk::new(claim.drive().clone(), BlkOptions::default()).unwrap();
    blk.features() & F_DISCARD != 0
}

#[test]
fn discard_reaches_the_guest_only_with_unmap() {
    assert!(
        !offers_discard("media=disk"),
        "discard=ignore is QEMU's default"
    );
    assert!(!offers_discard("discard=ignore"));
    assert!(!offers_discard("discard=off"));
    assert!(offers_discard("discard=unmap"));
    assert!(offers_discard("discard=on"));
}
