//! The virtio-pci transport, for the devices of the `virtio-core`/`virtio-blk` crates.

pub mod pci;
