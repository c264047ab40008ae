//! Devices and buses for a VMM: QEMU's qdev tree (bus → device → bus → device) with
//! child lists that readers walk without locks while hotplug changes them.
//!
//! A [`Bus`] keeps its children, sorted by a typed [`Address`] (a [`ScsiAddress`], a
//! [`PciAddress`]), in an [`rcu::RcuList`]. vCPU and iothreads dispatch to a child
//! ([`Bus::get`]), enumerate ([`Bus::addresses`], REPORT LUNS), find a device by id
//! through nested buses ([`Bus::find_by_id`]), walk and reset the tree, all under a read
//! guard and never blocking, while the main thread plugs and unplugs through the
//! [`HotplugHandler`] interface, one writer per tree at a time.
//!
//! **The invariant** (the design's invariant 4, from QEMU commit "device-core: use RCU for
//! list of children of a bus"): a device reachable under a guard is realized and stays
//! valid until the guard is dropped; references cannot outlive their guard (the borrow
//! checker says so); an unplugged device is unlinked at once, unrealized and dropped only
//! after a grace period, and its [`DeviceDeleted`] event is emitted after that drop.
//!
//! ```
//! use std::sync::mpsc;
//! use qdev_bus::{AnyBus, Bus, Device, HotplugHandler, PciAddress, ScsiAddress};
//!
//! struct Disk(&'static str);
//! impl Device for Disk {
//!     fn id(&self) -> &str { self.0 }
//! }
//!
//! /// A SCSI controller owns the SCSI bus its disks plug into.
//! struct ScsiController { id: &'static str, bus: Bus<ScsiAddress> }
//! impl Device for ScsiController {
//!     fn id(&self) -> &str { self.id }
//!     fn for_each_child_bus<'a>(&'a self, visit: &mut dyn FnMut(&'a dyn AnyBus)) {
//!         visit(&self.bus)
//!     }
//! }
//!
//! # fn main() -> qdev_bus::Result<()> {
//! let (events, deleted) = mpsc::channel();
//! let pci: Bus<PciAddress> = Bus::root_with_events("pci.0", move |e| events.send(e).unwrap());
//! let scsi0 = ScsiController { id: "scsi0", bus: Bus::new("scsi0.0") };
//! pci.plug(PciAddress::new(4, 0)?, Box::new(scsi0))?;
//!
//! // device_add scsi-hd,id=disk0,bus=scsi0.0,lun=0: find the bus, then plug.
//! {
//!     let guard = rcu::read();
//!     let bus = pci.find_bus(&guard, "scsi0.0").unwrap();
//!     let bus = bus.downcast_ref::<Bus<ScsiAddress>>().unwrap();
//!     bus.plug(ScsiAddress::new(0, 0), Box::new(Disk("disk0")))?;
//!     assert_eq!(bus.addresses(&guard), [ScsiAddress::new(0, 0)]);
//! }
//!
//! // A reader finds the disk through the controller's bus...
//! let guard = rcu::read();
//! let disk = pci.find_by_id(&guard, "disk0").unwrap();
//! // ...and keeps using it while device_del unplugs the controller and its disk.
//! pci.device_del("scsi0")?;
//! assert_eq!(disk.id(), "disk0");
//! assert!(pci.find_by_id(&rcu::read(), "disk0").is_none()); // gone for new readers
//! drop(guard);
//! // After the grace period: unrealized, dropped, then DEVICE_DELETED, children first.
//! assert_eq!(deleted.recv().unwrap().id, "disk0");
//! assert_eq!(deleted.recv().unwrap().id, "scsi0");
//! # Ok(()) }
//! ```
//!
//! `DESIGN.md` beside this crate explains the choices: `Box`-owned children, the one
//! writer lock per tree, the post-order reset, the inventory behind [`Bus::addresses`],
//! and how reclaim orders unrealize, drop and the event.
#![deny(missing_docs)]
#![cfg_attr(loom, allow(dead_code, unused_imports))]

// `rcu` compiles only its grace-period core under `--cfg loom`; so does this crate
// (its loom model, `tests/loom_child_list.rs`, stands alone).
#[cfg(not(loom))]
mod address;
#[cfg(not(loom))]
mod bus;
#[cfg(not(loom))]
mod device;
#[cfg(not(loom))]
mod hotplug;
#[cfg(not(loom))]
pub mod registry;
#[cfg(not(loom))]
mod section;
#[cfg(not(loom))]
mod tree;

#[cfg(not(loom))]
pub use address::{Address, PciAddress, ScsiAddress};
#[cfg(not(loom))]
pub use bus::{Bus, Child, Children};
#[cfg(not(loom))]
pub use device::{AsDevice, Device};
#[cfg(not(loom))]
pub use hotplug::{
    DeviceDeleted, HotplugController, HotplugHandler, ImmediateUnplug, UnplugStatus,
};
#[cfg(not(loom))]
pub use section::ReadGuard;
#[cfg(not(loom))]
pub use tree::{AnyBus, Node, Order, reset_device};

/// Errors of this crate; each names the input that was wrong.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The id breaks QEMU's rule: an ASCII letter, then letters, digits, `-`, `.`, `_`.
    #[error(
        "device id {id:?} is not well-formed: it must start with a letter and contain only letters, digits, '-', '.' and '_'"
    )]
    InvalidId {
        /// The id.
        id: String,
    },
    /// Another device in the tree has this id.
    #[error("device id {id:?} is already in use")]
    DuplicateId {
        /// The id.
        id: String,
    },
    /// A device with this id was unplugged and has not been reclaimed yet.
    #[error("device id {id:?} is still being deleted: wait for its DEVICE_DELETED event")]
    IdBeingDeleted {
        /// The id.
        id: String,
    },
    /// The address is taken.
    #[error("address {address} on bus {bus:?} is already occupied by device {occupant:?}")]
    AddressInUse {
        /// The bus.
        bus: String,
        /// The address, as displayed.
        address: String,
        /// The id of the device there.
        occupant: String,
    },
    /// The address is not one this kind of bus has.
    #[error("invalid address {address}: {reason}")]
    InvalidAddress {
        /// The address, as given.
        address: String,
        /// The rule it breaks.
        reason: &'static str,
    },
    /// No child of the bus (or, for `device_del`, nothing below it) has this id.
    #[error("no device with id {id:?} on bus {bus:?}")]
    NoSuchDevice {
        /// The bus searched.
        bus: String,
        /// The id.
        id: String,
    },
    /// The bus's controller has not been plugged yet.
    #[error("bus {bus:?} is not attached to a device tree: plug the device that owns it first")]
    BusDetached {
        /// The bus.
        bus: String,
    },
    /// A device offered a child bus that already belongs to a tree.
    #[error("bus {bus:?} of device {device:?} already belongs to a device tree")]
    BusAlreadyAttached {
        /// The bus.
        bus: String,
        /// The device being plugged.
        device: String,
    },
    /// The device owning this bus has been unplugged.
    #[error("bus {bus:?} is being removed with the device that owns it")]
    BusRemoved {
        /// The bus.
        bus: String,
    },
    /// An unplug request for this device already waits for the guest.
    #[error("unplug of device {id:?} is already pending the guest's acknowledgement")]
    UnplugPending {
        /// The id.
        id: String,
    },
    /// A device failed to realize (returned by [`Device::realize`] implementations).
    #[error("device {id:?} failed to realize: {reason}")]
    Realize {
        /// The device's id.
        id: String,
        /// Why.
        reason: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;
