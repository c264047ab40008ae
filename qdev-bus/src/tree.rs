//! The tree (bus → device → bus → …): the writer lock and id namespace its buses share,
//! deferred reclaim of unplugged subtrees, and the walks that cross buses of different
//! types through `dyn AnyBus`.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::section::Section;
use crate::section::sealed::AsSection;
use crate::{Device, DeviceDeleted, Error, ReadGuard, Result, UnplugStatus};

/// A bus of any address and device type, as a device's [`for_each_child_bus`] and the
/// tree walks see it. Implemented only by [`Bus`](crate::Bus); the walks are inherent
/// methods of `dyn AnyBus` (and of `Bus`), [`downcast_ref`] recovers the typed bus.
///
/// [`for_each_child_bus`]: crate::Device::for_each_child_bus
/// [`downcast_ref`]: #method.downcast_ref
pub trait AnyBus: sealed::BusInternals + Send + Sync {
    /// The bus's name (QEMU's `bus=` value, such as `scsi0.0`).
    fn name(&self) -> &str;
}

pub(crate) mod sealed {
    use super::*;

    /// What the tree needs from every bus, whatever its types. Not for users.
    pub trait BusInternals {
        /// Calls `visit` with each child device, in address order, until it breaks.
        fn visit_children<'g>(
            &'g self,
            section: Section<'g>,
            visit: &mut dyn FnMut(&'g dyn Device) -> ControlFlow<()>,
        ) -> ControlFlow<()>;
        /// The device `id` among this bus's children or below them, pre-order.
        fn find_by_id_dyn<'g>(&'g self, section: Section<'g>, id: &str) -> Option<&'g dyn Device>;
        /// Marks this bus removed (no more plugs or unplugs) and appends every child's
        /// subtree to `out`, children before parents. Tree writer lock held.
        fn doom_children(&self, section: Section<'_>, out: &mut Vec<Doomed>);
        /// The tree this bus belongs to, once attached.
        fn tree(&self) -> Option<&Arc<Tree>>;
        /// Joins `tree`; false if the bus already belongs to one.
        fn attach(&self, tree: &Arc<Tree>) -> bool;
        /// [`HotplugHandler::unplug_request`](crate::HotplugHandler::unplug_request).
        fn unplug_request_dyn(&self, id: &str) -> Result<UnplugStatus>;
        /// For [`downcast_ref`](super::AnyBus).
        fn as_any(&self) -> &dyn Any;
    }
}

/// An unplugged device on its way to reclaim, with the event it will produce.
pub struct Doomed {
    pub(crate) device: Arc<dyn Device>,
    pub(crate) event: DeviceDeleted,
}

/// What the buses of one tree share: writers are serialized by one lock because ids
/// must be unique across the whole tree (QEMU's `/machine/peripheral`), which a
/// per-bus lock could not keep; hotplug is rare and readers never take it.
pub struct Tree {
    writer: Mutex<()>,
    ids: Mutex<HashMap<String, IdState>>,
    on_deleted: Box<dyn Fn(DeviceDeleted) + Send + Sync>,
}

/// Where an id is in its life: its device is plugged, or unplugged and not yet reclaimed
/// (the id stays taken until its [`DeviceDeleted`], so that a new device cannot meet the
/// old one's not-yet-released resources).
#[derive(Copy, Clone, PartialEq, Eq)]
enum IdState {
    Plugged,
    Deleting,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic under the lock (in a device's realize) leaves the map consistent: every
    // change to it is a single insert or update.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Tree {
    pub(crate) fn new(on_deleted: Box<dyn Fn(DeviceDeleted) + Send + Sync>) -> Tree {
        Tree {
            writer: Mutex::new(()),
            ids: Mutex::new(HashMap::new()),
            on_deleted,
        }
    }

    /// Serializes plug and unplug across the tree.
    pub(crate) fn lock_writer(&self) -> MutexGuard<'_, ()> {
        lock(&self.writer)
    }

    /// Whether `id` may be plugged. Writer lock held.
    pub(crate) fn check_id_free(&self, id: &str) -> Result<()> {
        match lock(&self.ids).get(id) {
            None => Ok(()),
            Some(IdState::Plugged) => Err(Error::DuplicateId { id: id.to_owned() }),
            Some(IdState::Deleting) => Err(Error::IdBeingDeleted { id: id.to_owned() }),
        }
    }

    /// Whether `id` is plugged or still being deleted.
    pub(crate) fn id_taken(&self, id: &str) -> bool {
        lock(&self.ids).contains_key(id)
    }

    /// Takes `id` for a plugged device. Writer lock held.
    pub(crate) fn insert_id(&self, id: String) {
        lock(&self.ids).insert(id, IdState::Plugged);
    }

    /// Unlinks a subtree (already unlinked by the caller) for reclaim: its ids stay taken
    /// until the grace period has passed and the devices are dropped. Writer lock held.
    pub(crate) fn defer_reclaim(self: &Arc<Tree>, doomed: Vec<Doomed>) {
        let mut ids = lock(&self.ids);
        for d in &doomed {
            ids.insert(d.event.id.clone(), IdState::Deleting);
        }
        drop(ids);
        let tree = self.clone();
        // The caller unlinked the root before this call, and the list queued its node's
        // drop (with the node's `Arc`) then; `call_rcu` runs callbacks in queue order,
        // so when `reclaim` runs, its `Arc`s are the last ones.
        rcu::call_rcu(move || tree.reclaim(doomed));
    }

    /// After the grace period: unrealize (children first), drop, free the ids, emit.
    fn reclaim(&self, doomed: Vec<Doomed>) {
        for d in &doomed {
            d.device.unrealize();
        }
        let root_is_last_reference = doomed
            .last()
            .is_some_and(|d| Arc::strong_count(&d.device) == 1);
        debug_assert!(root_is_last_reference, "unplugged device still referenced");
        // The root comes last; dropping it drops its buses and with them the last
        // references to the rest of the subtree.
        let events: Vec<DeviceDeleted> = doomed.into_iter().map(|d| d.event).collect();
        let mut ids = lock(&self.ids);
        for e in &events {
            ids.remove(&e.id);
        }
        drop(ids);
        for e in events {
            (self.on_deleted)(e);
        }
    }
}

/// Appends `device`'s subtree to `out`, children first, marking its buses removed.
pub(crate) fn doom_subtree(
    section: Section<'_>,
    device: Arc<dyn Device>,
    event: DeviceDeleted,
    out: &mut Vec<Doomed>,
) {
    device.for_each_child_bus(&mut |bus| bus.doom_children(section, out));
    out.push(Doomed { device, event });
}

/// A place in the tree, as [`walk`](crate::Bus::walk) visits it.
#[derive(Copy, Clone)]
pub enum Node<'g> {
    /// A bus.
    Bus(&'g dyn AnyBus),
    /// A device.
    Device(&'g dyn Device),
}

impl fmt::Debug for Node<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Node::Bus(b) => f.debug_tuple("Bus").field(&b.name()).finish(),
            Node::Device(d) => f.debug_tuple("Device").field(&d.id()).finish(),
        }
    }
}

/// The order of a walk (QEMU's `qbus_walk_children` has both hooks).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Order {
    /// A bus before its devices, a device before its buses: find, print.
    Pre,
    /// Devices before their bus, buses before their device: reset, teardown.
    Post,
}

type Visit<'v, 'g> = &'v mut dyn FnMut(Node<'g>) -> ControlFlow<()>;

fn walk_bus<'g>(
    bus: &'g dyn AnyBus,
    section: Section<'g>,
    order: Order,
    visit: Visit<'_, 'g>,
) -> ControlFlow<()> {
    if order == Order::Pre {
        visit(Node::Bus(bus))?;
    }
    bus.visit_children(section, &mut |device| {
        walk_device(device, section, order, visit)
    })?;
    if order == Order::Post {
        visit(Node::Bus(bus))?;
    }
    ControlFlow::Continue(())
}

fn walk_device<'g>(
    device: &'g dyn Device,
    section: Section<'g>,
    order: Order,
    visit: Visit<'_, 'g>,
) -> ControlFlow<()> {
    if order == Order::Pre {
        visit(Node::Device(device))?;
    }
    let mut flow = ControlFlow::Continue(());
    device.for_each_child_bus(&mut |bus| {
        if flow.is_continue() {
            flow = walk_bus(bus, section, order, visit);
        }
    });
    flow?;
    if order == Order::Post {
        visit(Node::Device(device))?;
    }
    ControlFlow::Continue(())
}

/// The bus under `bus` (or `bus` itself) whose direct child is `id`.
fn parent_of<'g>(bus: &'g dyn AnyBus, section: Section<'g>, id: &str) -> Option<&'g dyn AnyBus> {
    let mut found = None;
    let _ = bus.visit_children(section, &mut |device| {
        if device.id() == id {
            found = Some(bus);
        } else {
            device.for_each_child_bus(&mut |child| {
                if found.is_none() {
                    found = parent_of(child, section, id);
                }
            });
        }
        if found.is_some() {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    });
    found
}

/// Resets `device` and everything below it, children first (QEMU's `qdev_reset_all`),
/// as a virtio-scsi target reset does for one target.
pub fn reset_device<G: ReadGuard>(guard: &G, device: &dyn Device) {
    let _ = walk_device(device, guard.section(), Order::Post, &mut |node| {
        if let Node::Device(d) = node {
            d.reset();
        }
        ControlFlow::Continue(())
    });
}

impl<'b> dyn AnyBus + 'b {
    /// The device `id` on this bus or below it (pre-order: QEMU's
    /// `qdev_find_recursive`), valid while `guard` lives.
    pub fn find_by_id<'g, G: ReadGuard>(
        &'g self,
        guard: &'g G,
        id: &str,
    ) -> Option<&'g dyn Device> {
        self.find_by_id_dyn(guard.section(), id)
    }

    /// The first bus named `name`, this one or below it, in pre-order (QEMU's
    /// `qbus_find`); [`downcast_ref`](#method.downcast_ref) makes it typed.
    pub fn find_bus<'g, G: ReadGuard>(
        &'g self,
        guard: &'g G,
        name: &str,
    ) -> Option<&'g dyn AnyBus> {
        let mut found = None;
        let _ = walk_bus(self, guard.section(), Order::Pre, &mut |node| match node {
            Node::Bus(b) if b.name() == name => {
                found = Some(b);
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        });
        found
    }

    /// Visits this bus and everything below it in `order`.
    pub fn walk<'g, G: ReadGuard>(
        &'g self,
        guard: &'g G,
        order: Order,
        mut visit: impl FnMut(Node<'g>),
    ) {
        let _ = walk_bus(self, guard.section(), order, &mut |node| {
            visit(node);
            ControlFlow::Continue(())
        });
    }

    /// Resets every device below this bus, children before their controller (QEMU's
    /// `qbus_reset_all`, a post-order walk). A device unplugged during the walk may
    /// still be reset: it is unrealized only after the walk's guard is gone.
    pub fn reset<G: ReadGuard>(&self, guard: &G) {
        let _ = walk_bus(self, guard.section(), Order::Post, &mut |node| {
            if let Node::Device(d) = node {
                d.reset();
            }
            ControlFlow::Continue(())
        });
    }

    /// QMP `device_del`: finds `id` anywhere below this bus and sends its bus an unplug
    /// request.
    ///
    /// # Errors
    ///
    /// [`Error::NoSuchDevice`] if no device below this bus has that id; otherwise as
    /// [`HotplugHandler::unplug_request`](crate::HotplugHandler::unplug_request).
    pub fn device_del(&self, id: &str) -> Result<UnplugStatus> {
        let guard = rcu::read();
        let parent = parent_of(self, guard.section(), id).ok_or_else(|| Error::NoSuchDevice {
            bus: self.name().to_owned(),
            id: id.to_owned(),
        })?;
        parent.unplug_request_dyn(id)
    }

    /// This bus as its concrete type, such as `Bus<ScsiAddress>`.
    pub fn downcast_ref<B: AnyBus + 'static>(&self) -> Option<&B> {
        self.as_any().downcast_ref()
    }
}
