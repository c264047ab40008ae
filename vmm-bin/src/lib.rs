//! `vmm-bin`: the composition of the vmm-core crates into a KVM virtual machine monitor
//! (SeaBIOS and Linux guests, QMP) and a vhost-user storage daemon.
//!
//! The machine is the `kvm-machine` crate, its device composition and QMP monitor the
//! `pc-devices` crate, the devices and transports are crates of their own; the
//! storage daemon is the `storage-daemon` crate. The library target exists so that
//! integration tests can reach the command line and the disks; the product is the
//! `vmm-bin` binary.

pub mod disks;

pub mod cli;
pub mod machine;
