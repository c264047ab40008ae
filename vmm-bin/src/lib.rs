//! `vmm-bin`: the composition of the vmm-core crates into a KVM virtual machine monitor
//! (SeaBIOS and Linux guests, QMP) and a vhost-user storage daemon.
//!
//! The machine is the `kvm-machine` crate, the devices and transports are crates of their
//! own; the library target exists so that integration tests can reach the command line,
//! the disks and the monitor. The product is the `vmm-bin` binary.

pub mod devices;
pub mod disks;
pub mod ide;
pub mod monitor;
pub mod signals;
pub mod storage_daemon;
pub mod vm_monitor;

pub mod cli;
pub mod machine;
