//! A bus: children sorted by address in an RCU list, read without locks, plugged and
//! unplugged under the tree's writer lock.

use std::any::Any;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use rcu::{RcuCell, RcuList};

use crate::device::check_id;
use crate::section::Section;
use crate::section::sealed::AsSection;
use crate::tree::{Doomed, Tree, doom_subtree, sealed::BusInternals};
use crate::{
    Address, AnyBus, Device, DeviceDeleted, Error, HotplugController, HotplugHandler,
    ImmediateUnplug, Node, Order, ReadGuard, Result, UnplugStatus,
};

/// A bus holding devices of type `D` at addresses of type `A`.
///
/// Readers ([`get`](Bus::get), [`iter`](Bus::iter), [`addresses`](Bus::addresses),
/// [`find_by_id`](Bus::find_by_id), [`walk`](Bus::walk), [`reset`](Bus::reset)) take a
/// read guard and never block; what they return borrows the guard. Writers
/// ([`HotplugHandler`]) are serialized by the tree's writer lock. A device reachable
/// under a guard is realized: it is realized before it is published and unrealized only
/// a grace period after it is unlinked.
///
/// `D` is `dyn Device` for a bus of anything, or a subtrait object (`dyn ScsiDevice`)
/// for a bus that dispatches to a richer interface. Name the type where a bus is made
/// (`let pci: Bus<PciAddress> = Bus::root("pci.0")`): default type parameters do not
/// guide inference, so the first `plug` would otherwise fix `D` to one device type.
pub struct Bus<A: Address, D: ?Sized + Device = dyn Device> {
    name: String,
    children: RcuList<Child<A, D>>,
    /// The occupied addresses in order, one immutable version per change, so that a
    /// count and a listing taken from one version agree (REPORT LUNS).
    addresses: RcuCell<Vec<A>>,
    /// Set at construction for a root bus, when its controller is plugged otherwise.
    tree: OnceLock<Arc<Tree>>,
    /// Set, under the writer lock, when the device owning this bus is unplugged.
    removed: AtomicBool,
    controller: Box<dyn HotplugController<A>>,
}

/// A device on a bus, with its address.
pub struct Child<A, D: ?Sized> {
    address: A,
    /// Shared only with the reclaim callback once unplugged; never handed out.
    device: Arc<D>,
    /// Written under the writer lock; read there, or by readers as a hint.
    unplug_pending: AtomicBool,
}

impl<A: Address, D: ?Sized + Device> Child<A, D> {
    /// Where the device sits.
    pub fn address(&self) -> A {
        self.address
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// Whether an unplug request is waiting for the guest.
    pub fn unplug_pending(&self) -> bool {
        self.unplug_pending.load(Ordering::Relaxed)
    }
}

impl<A: Address, D: ?Sized + Device> fmt::Debug for Child<A, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Child")
            .field("address", &self.address)
            .field("id", &self.device.id())
            .finish()
    }
}

/// The children of a bus in address order, under a guard.
pub struct Children<'g, A, D: ?Sized>(rcu::Iter<'g, Child<A, D>>);

impl<'g, A, D: ?Sized> Iterator for Children<'g, A, D> {
    type Item = &'g Child<A, D>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        self.0.next()
    }
}

impl<A: Address, D: ?Sized + Device> Bus<A, D> {
    fn with_tree(name: &str, tree: Option<Tree>) -> Self {
        let attached = OnceLock::new();
        if let Some(tree) = tree {
            let _ = attached.set(Arc::new(tree));
        }
        Bus {
            name: name.to_owned(),
            children: RcuList::new(),
            addresses: RcuCell::new(Vec::new()),
            tree: attached,
            removed: AtomicBool::new(false),
            controller: Box::new(ImmediateUnplug),
        }
    }

    /// The root bus of a new tree (a machine's main PCI or system bus), whose
    /// [`DeviceDeleted`] events go nowhere.
    pub fn root(name: &str) -> Self {
        Self::root_with_events(name, |_| {})
    }

    /// The root bus of a new tree whose [`DeviceDeleted`] events go to `on_deleted`
    /// (the QMP monitor; a channel in tests). It runs on the `call_rcu` thread: it must
    /// be quick and must not call [`rcu::barrier`].
    pub fn root_with_events(
        name: &str,
        on_deleted: impl Fn(DeviceDeleted) + Send + Sync + 'static,
    ) -> Self {
        Self::with_tree(name, Some(Tree::new(Box::new(on_deleted))))
    }

    /// A bus for a controller to own (a virtio-scsi controller's SCSI bus). It joins
    /// its controller's tree when the controller is plugged; until then plugging into it
    /// fails with [`Error::BusDetached`].
    pub fn new(name: &str) -> Self {
        Self::with_tree(name, None)
    }

    /// Replaces the default controller ([`ImmediateUnplug`]) with `controller`.
    #[must_use]
    pub fn with_controller(mut self, controller: impl HotplugController<A>) -> Self {
        self.controller = Box::new(controller);
        self
    }

    /// Whether a device of this bus's tree has `id`: plugged, or unplugged and not yet
    /// reclaimed (its DEVICE_DELETED still to come). False for a detached bus.
    pub fn id_taken(&self, id: &str) -> bool {
        self.tree.get().is_some_and(|tree| tree.id_taken(id))
    }

    /// The bus's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The device at `address`: the dispatch path of a vCPU exit or an I/O request.
    #[inline]
    pub fn get<'g, G: ReadGuard>(&'g self, guard: &'g G, address: A) -> Option<&'g D> {
        self.children
            .iter(guard)
            .take_while(|c| c.address <= address)
            .find(|c| c.address == address)
            .map(|c| &*c.device)
    }

    /// The direct child with id `id`.
    pub fn find<'g, G: ReadGuard>(&'g self, guard: &'g G, id: &str) -> Option<&'g Child<A, D>> {
        self.children.find(guard, |c| c.device.id() == id)
    }

    /// The children in address order. Two walks under one guard may differ (RCU keeps
    /// what you reach alive, it does not stop writers); use [`addresses`](Bus::addresses)
    /// where a count and a listing must agree.
    pub fn iter<'g, G: ReadGuard>(&'g self, guard: &'g G) -> Children<'g, A, D> {
        Children(self.children.iter(guard))
    }

    /// The occupied addresses in order, as one version of the bus: a REPORT LUNS handler
    /// sizes its buffer from `len()` and fills it from the same slice, so count and
    /// contents always agree, whatever hotplug does meanwhile.
    pub fn addresses<'g, G: ReadGuard>(&'g self, guard: &'g G) -> &'g [A] {
        self.addresses.load(guard).map_or(&[], Vec::as_slice)
    }

    /// The device `id` on this bus or below it; see [`AnyBus`]'s `find_by_id`.
    pub fn find_by_id<'g, G: ReadGuard>(
        &'g self,
        guard: &'g G,
        id: &str,
    ) -> Option<&'g dyn Device> {
        self.find_by_id_dyn(guard.section(), id)
    }

    /// The first bus named `name`, this one or below it; see [`AnyBus`]'s `find_bus`.
    pub fn find_bus<'g, G: ReadGuard>(
        &'g self,
        guard: &'g G,
        name: &str,
    ) -> Option<&'g dyn AnyBus> {
        (self as &dyn AnyBus).find_bus(guard, name)
    }

    /// Visits this bus and everything below it in `order`.
    pub fn walk<'g, G: ReadGuard>(
        &'g self,
        guard: &'g G,
        order: Order,
        visit: impl FnMut(Node<'g>),
    ) {
        (self as &dyn AnyBus).walk(guard, order, visit)
    }

    /// Resets every device below this bus, children first; see [`AnyBus`]'s `reset`.
    pub fn reset<G: ReadGuard>(&self, guard: &G) {
        (self as &dyn AnyBus).reset(guard)
    }

    /// QMP `device_del` from this bus down; see [`AnyBus`]'s `device_del`.
    ///
    /// # Errors
    ///
    /// As [`HotplugHandler::unplug_request`], searching the whole subtree.
    pub fn device_del(&self, id: &str) -> Result<UnplugStatus> {
        (self as &dyn AnyBus).device_del(id)
    }

    /// The tree's writer lock, taken, if this bus may change.
    fn lock_tree(&self) -> Result<(&Arc<Tree>, std::sync::MutexGuard<'_, ()>)> {
        let tree = self.tree.get().ok_or_else(|| Error::BusDetached {
            bus: self.name.clone(),
        })?;
        let writer = tree.lock_writer();
        // Relaxed: `removed` is written under the writer lock we now hold.
        if self.removed.load(Ordering::Relaxed) {
            return Err(Error::BusRemoved {
                bus: self.name.clone(),
            });
        }
        Ok((tree, writer))
    }

    fn no_such_device(&self, id: &str) -> Error {
        Error::NoSuchDevice {
            bus: self.name.clone(),
            id: id.to_owned(),
        }
    }

    /// Unlinks the child `id` and queues its subtree's reclaim. Writer lock held.
    fn unplug_locked(&self, tree: &Arc<Tree>, id: &str) -> Result<()> {
        let mut list = self.children.write();
        let (address, device) = list
            .iter()
            .find(|c| c.device.id() == id)
            .map(|c| (c.address, c.device.clone()))
            .ok_or_else(|| self.no_such_device(id))?;
        let event = DeviceDeleted {
            id: id.to_owned(),
            bus: self.name.clone(),
            address: address.to_string(),
        };
        let mut doomed = Vec::new();
        doom_subtree(
            rcu::read().section(),
            device.into_device_arc(),
            event,
            &mut doomed,
        );
        // New readers stop seeing it in the inventory, then in the list.
        self.addresses.replace(
            list.iter()
                .map(|c| c.address)
                .filter(|a| *a != address)
                .collect(),
        );
        list.remove_first(|c| c.address == address);
        drop(list);
        tree.defer_reclaim(doomed);
        Ok(())
    }
}

impl<A: Address, D: ?Sized + Device> HotplugHandler for Bus<A, D> {
    type Address = A;
    type Device = D;

    fn plug(&self, address: A, device: Box<D>) -> Result<()> {
        let (tree, _writer) = self.lock_tree()?;
        let id = device.id().to_owned();
        check_id(&id)?;
        tree.check_id_free(&id)?;
        if let Some(occupant) = self.children.write().iter().find(|c| c.address == address) {
            return Err(Error::AddressInUse {
                bus: self.name.clone(),
                address: address.to_string(),
                occupant: occupant.device.id().to_owned(),
            });
        }
        let mut attached_bus = None;
        device.for_each_child_bus(&mut |bus| {
            if attached_bus.is_none() && bus.tree().is_some() {
                attached_bus = Some(bus.name().to_owned());
            }
        });
        if let Some(bus) = attached_bus {
            return Err(Error::BusAlreadyAttached { bus, device: id });
        }
        device.realize()?;
        // Under the writer lock no other tree member can attach these buses; only a
        // bus shared with another tree (which `for_each_child_bus` forbids) could race.
        let mut raced = None;
        device.for_each_child_bus(&mut |bus| {
            if !bus.attach(tree) && raced.is_none() {
                raced = Some(bus.name().to_owned());
            }
        });
        if let Some(bus) = raced {
            device.unrealize();
            return Err(Error::BusAlreadyAttached { bus, device: id });
        }
        tree.insert_id(id);
        let mut list = self.children.write();
        list.insert_before(
            Child {
                address,
                device: Arc::from(device),
                unplug_pending: AtomicBool::new(false),
            },
            |c| c.address > address,
        );
        self.addresses
            .replace(list.iter().map(|c| c.address).collect());
        drop(list);
        self.controller.plugged(address);
        Ok(())
    }

    fn unplug_request(&self, id: &str) -> Result<UnplugStatus> {
        let (tree, _writer) = self.lock_tree()?;
        let list = self.children.write();
        let child = list
            .iter()
            .find(|c| c.device.id() == id)
            .ok_or_else(|| self.no_such_device(id))?;
        // Relaxed: `unplug_pending` is written only under the writer lock we hold.
        if child.unplug_pending.load(Ordering::Relaxed) {
            return Err(Error::UnplugPending { id: id.to_owned() });
        }
        match self.controller.unplug_requested(child.address, id) {
            UnplugStatus::Pending => {
                child.unplug_pending.store(true, Ordering::Relaxed);
                Ok(UnplugStatus::Pending)
            }
            UnplugStatus::Unplugged => {
                drop(list);
                self.unplug_locked(tree, id)?;
                Ok(UnplugStatus::Unplugged)
            }
        }
    }

    fn unplug(&self, id: &str) -> Result<()> {
        let (tree, _writer) = self.lock_tree()?;
        self.unplug_locked(tree, id)
    }
}

impl<A: Address, D: ?Sized + Device> AnyBus for Bus<A, D> {
    fn name(&self) -> &str {
        &self.name
    }
}

impl<A: Address, D: ?Sized + Device> BusInternals for Bus<A, D> {
    fn visit_children<'g>(
        &'g self,
        section: Section<'g>,
        visit: &mut dyn FnMut(&'g dyn Device) -> ControlFlow<()>,
    ) -> ControlFlow<()> {
        for child in section.iter(&self.children) {
            visit(child.device.as_device())?;
        }
        ControlFlow::Continue(())
    }

    fn find_by_id_dyn<'g>(&'g self, section: Section<'g>, id: &str) -> Option<&'g dyn Device> {
        // The hot path of QMP lookups: one pass, no visitor closures per device.
        for child in section.iter(&self.children) {
            let device = &*child.device;
            if device.id() == id {
                return Some(device.as_device());
            }
            let mut found = None;
            device.for_each_child_bus(&mut |bus| {
                if found.is_none() {
                    found = bus.find_by_id_dyn(section, id);
                }
            });
            if found.is_some() {
                return found;
            }
        }
        None
    }

    fn doom_children(&self, section: Section<'_>, out: &mut Vec<Doomed>) {
        // Relaxed: read and written only under the writer lock, which our caller holds.
        self.removed.store(true, Ordering::Relaxed);
        for child in section.iter(&self.children) {
            let event = DeviceDeleted {
                id: child.device.id().to_owned(),
                bus: self.name.clone(),
                address: child.address.to_string(),
            };
            doom_subtree(section, child.device.clone().into_device_arc(), event, out);
        }
    }

    fn tree(&self) -> Option<&Arc<Tree>> {
        self.tree.get()
    }

    fn attach(&self, tree: &Arc<Tree>) -> bool {
        self.tree.set(tree.clone()).is_ok()
    }

    fn unplug_request_dyn(&self, id: &str) -> Result<UnplugStatus> {
        self.unplug_request(id)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl<A: Address, D: ?Sized + Device> fmt::Debug for Bus<A, D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let guard = rcu::read();
        f.debug_struct("Bus")
            .field("name", &self.name)
            .field("children", &self.iter(&guard).collect::<Vec<_>>())
            .finish()
    }
}
