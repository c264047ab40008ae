//! The device side of the tree: what a bus needs from the devices it holds.

use std::sync::Arc;

use crate::{AnyBus, Result};

/// A device model as its bus sees it: an id, a life cycle, and the buses it owns.
///
/// A bus calls [`realize`](Device::realize) before the device becomes visible to readers,
/// [`unrealize`](Device::unrealize) after it has been unplugged *and* a grace period has
/// passed (so no reader can be using it), and [`reset`](Device::reset) from reset walks,
/// which run under a read guard, possibly on several threads at once. All take `&self`:
/// readers share the device, so its mutable state lives behind its own interior
/// mutability (atomics, a mutex, or a state machine the transport drives).
///
/// Subtraits add what a kind of bus dispatches to (a SCSI bus holds
/// `Bus<ScsiAddress, dyn ScsiDevice>` where `trait ScsiDevice: Device`).
pub trait Device: AsDevice + Send + Sync + 'static {
    /// The device's id (QEMU's `id=` property): unique in its tree, [well-formed].
    ///
    /// [well-formed]: crate::Error::InvalidId
    fn id(&self) -> &str;

    /// Brings the device up before it is published on a bus. An error aborts the plug:
    /// the device is dropped and nothing becomes visible. Runs under the tree's writer
    /// lock (and the plugging caller's guard, if any): it must not plug or unplug, nor
    /// wait for a grace period.
    fn realize(&self) -> Result<()> {
        Ok(())
    }

    /// Tears the device down once it is unreachable: after unplug and a grace period,
    /// on the `call_rcu` thread, children before their controller. Must not call
    /// [`rcu::barrier`] (it would wait for itself).
    fn unrealize(&self) {}

    /// Returns the device to its power-on state. Reset walks call it children first.
    fn reset(&self) {}

    /// Calls `visit` with each bus this device owns (a controller's SCSI bus, a bridge's
    /// secondary bus); the default owns none. The buses must be fields of the device,
    /// so that they die with it.
    fn for_each_child_bus<'a>(&'a self, visit: &mut dyn FnMut(&'a dyn AnyBus)) {
        let _ = visit;
    }
}

/// Views any device, sized or a subtrait object, as a `dyn Device`. Implemented for
/// every [`Device`]; trait objects of subtraits get it through their vtable.
pub trait AsDevice {
    /// `self` as a `&dyn Device`.
    fn as_device(&self) -> &dyn Device;
    /// `self` as an `Arc<dyn Device>`.
    fn into_device_arc(self: Arc<Self>) -> Arc<dyn Device>;
}

impl<T: Device> AsDevice for T {
    fn as_device(&self) -> &dyn Device {
        self
    }
    fn into_device_arc(self: Arc<Self>) -> Arc<dyn Device> {
        self
    }
}

/// Checks `id` against QEMU's rule (`id_wellformed`): an ASCII letter, then letters,
/// digits, `-`, `.` and `_`.
pub(crate) fn check_id(id: &str) -> Result<()> {
    let mut chars = id.chars();
    let well_formed = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if well_formed {
        Ok(())
    } else {
        Err(crate::Error::InvalidId { id: id.to_owned() })
    }
}

#[cfg(test)]
mod tests {
    use super::check_id;

    #[test]
    fn ids_follow_qemus_rule() {
        for good in ["disk0", "a", "scsi0.0", "net-1_x"] {
            assert!(check_id(good).is_ok(), "{good}");
        }
        for bad in ["", "0disk", "-x", "a b", "dïsk", "a/b"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
    }
}
