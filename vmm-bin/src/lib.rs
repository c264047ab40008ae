//! `vmm-bin`: the composition of the vmm-core crates into a KVM virtual machine monitor
//! (SeaBIOS and Linux guests, QMP) and a vhost-user storage daemon.
//!
//! The library target exists so that integration tests and benchmarks can reach the device
//! models and the monitor; the product is the `vmm-bin` binary.

pub mod disks;
pub mod logging;
pub mod monitor;
pub mod signals;
pub mod storage_daemon;
pub mod vm_monitor;

pub mod cli;
pub mod devices;
pub mod machine;
