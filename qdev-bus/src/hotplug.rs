//! Hotplug: the handler interface buses implement, the guest-facing controller that
//! decides whether an unplug must wait for the guest, and the deleted event.

use crate::{Address, Device, Result};

/// QEMU's `HotplugHandler`: plugging a device into a bus and taking it out again.
///
/// [`Bus`](crate::Bus) implements it. Unplug has two steps because on many buses the guest
/// must agree: [`unplug_request`](HotplugHandler::unplug_request) asks (QMP `device_del`);
/// it finishes at once where the bus's [`HotplugController`] allows, otherwise it returns
/// [`UnplugStatus::Pending`] and the device model calls [`unplug`](HotplugHandler::unplug)
/// when the guest acknowledges (an ACPI `_EJ0`, a PCIe slot power-off).
pub trait HotplugHandler {
    /// Where children sit on this bus.
    type Address: Address;
    /// What this bus holds.
    type Device: ?Sized + Device;

    /// Realizes `device` and publishes it at `address`, then tells the guest.
    ///
    /// # Errors
    ///
    /// A malformed, duplicate or still-deleting id, an occupied address, a bus that is
    /// detached or being removed, a child bus that already belongs to a tree, or the
    /// device's own realize error. On error nothing is published and `device` is dropped.
    fn plug(&self, address: Self::Address, device: Box<Self::Device>) -> Result<()>;

    /// Asks for the device `id` (a child of this bus) to be unplugged.
    ///
    /// # Errors
    ///
    /// [`NoSuchDevice`](crate::Error::NoSuchDevice), or
    /// [`UnplugPending`](crate::Error::UnplugPending) if a request already waits for the
    /// guest, or [`BusRemoved`](crate::Error::BusRemoved).
    fn unplug_request(&self, id: &str) -> Result<UnplugStatus>;

    /// Unplugs the device `id` now (the guest acknowledged, or ejected it on its own):
    /// unlinks it at once; after a grace period unrealizes it and its subtree, drops them,
    /// and then emits a [`DeviceDeleted`] for each.
    ///
    /// # Errors
    ///
    /// [`NoSuchDevice`](crate::Error::NoSuchDevice) or
    /// [`BusRemoved`](crate::Error::BusRemoved).
    fn unplug(&self, id: &str) -> Result<()>;
}

/// The outcome of an unplug request.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum UnplugStatus {
    /// The device is unlinked; its [`DeviceDeleted`] follows after a grace period.
    Unplugged,
    /// The guest was asked and has not answered; [`HotplugHandler::unplug`] finishes.
    Pending,
}

/// The guest-facing half of hotplug, which differs between buses: how the guest hears
/// of a plug, and whether it must agree to an unplug. A SCSI HBA sends an event and
/// unplugs at once ([`ImmediateUnplug`]); ACPI PCI hotplug raises an interrupt and waits
/// for the guest to eject the slot.
///
/// Called with the tree's writer lock held: it must not call back into the bus (return
/// [`UnplugStatus::Unplugged`] instead of unplugging from inside).
pub trait HotplugController<A: Address>: Send + Sync + 'static {
    /// A device was realized and published at `address`.
    fn plugged(&self, address: A) {
        let _ = address;
    }

    /// The device `id` at `address` is asked to leave: [`UnplugStatus::Unplugged`] lets it
    /// go now; [`UnplugStatus::Pending`] means the guest was notified and the device
    /// model will call [`HotplugHandler::unplug`] when it acknowledges.
    fn unplug_requested(&self, address: A, id: &str) -> UnplugStatus;
}

/// A controller whose devices leave at once, as SCSI LUNs do (the default).
#[derive(Copy, Clone, Debug, Default)]
pub struct ImmediateUnplug;

impl<A: Address> HotplugController<A> for ImmediateUnplug {
    fn unplug_requested(&self, _: A, _: &str) -> UnplugStatus {
        UnplugStatus::Unplugged
    }
}

/// QMP's `DEVICE_DELETED`: the device is unrealized and dropped, and its id is free again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceDeleted {
    /// The device's id.
    pub id: String,
    /// The name of the bus it was on.
    pub bus: String,
    /// Its address on that bus, as displayed.
    pub address: String,
}
