//! Virtio devices and their PCI transport, on the `virtio-core` crate (the device
//! trait, interrupts and the generic queue runner).

pub mod blk;
pub mod pci;
