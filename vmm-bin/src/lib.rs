//! `vmm-bin`: the composition of the vmm-core crates into a KVM virtual machine monitor
//! (SeaBIOS and Linux guests, QMP) and a vhost-user storage daemon.
//!
//! The machine is the `kvm-machine` crate, the devices and transports are crates of their
//! own; the library target exists so that integration tests can reach the command line,
//! the disks and the monitor. The product is the `vmm-bin` binary.

pub mod devices;
pub mod disks;
pub mod ide;
pub mod logging;
pub mod monitor;
pub mod vm_monitor;

// `crate::signals::terminating` (the monitor's startup wait) now lives in aio-context.
pub(crate) use aio_context::signals;

pub mod cli;
pub mod machine;
