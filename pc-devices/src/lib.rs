//! `pc-devices`: the device composition of a KVM `pc` machine (the `kvm-machine`
//! crate): which devices a user can name, how `-drive`/`-blockdev`/`-device` become
//! devices on the machine, and the VM's QMP monitor.
//!
//! - [`registry`] and [`Devices`]: qdev-bus's `DeviceRegistry` with this machine's
//!   drivers (`virtio-blk-pci`, `virtio-scsi-pci`, `scsi-hd`, `ide-hd`, `ide-cd`), and
//!   the `DeviceHost` they plug through: cold plug from the command line, hotplug from
//!   QMP `device_add`/`device_del`, `DEVICE_DELETED` after the grace period.
//! - [`attach`]: a [`DevicesConfig`] (block nodes, drives, devices, boot options,
//!   iothreads) attached to a `Runner`'s machine, in QEMU's order, with QEMU's errors.
//! - [`monitor`]: the VM's QMP monitor on the `qmp` crate's server, with the run state
//!   commands (`query-status`, `stop`, `cont`, `system_reset`, `quit`) and events.
//! - [`vm_monitor::attach`]: that monitor wired to the machine: the block commands
//!   (block-node's), `device_add`/`device_del`, the IDE trays (`eject`,
//!   `blockdev-change-medium`), `query-iothreads`, BLOCK_IO_ERROR and DEVICE_DELETED.
//!
//! The binary (vmm-bin) translates its command line into these types and runs the
//! main loop; nothing here parses a command line (the option grammars are qemu-opts'
//! and block-node's). See DESIGN.md.

#![deny(missing_docs)]

mod attach;
mod boot;
mod devices;
mod ide;
pub mod monitor;
pub mod vm_monitor;

pub use attach::{DeviceOption, DevicesConfig, Error, attach};
pub use devices::qmp::device_opts;
pub use devices::{Devices, Disk, IoErrorHook, PCI_BUS, qom_path, registry};
pub use ide::IdeDisks;

/// The README's example, run as a doctest.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
