//! `--export type=vhost-user-scsi`: a virtio-scsi controller (the `virtio-scsi`
//! crate) whose bus `<id>.0` carries scsi-hd LUNs, served through vhost-user-export.
//! The export's `node-name` is LUN 0 of target 0; QMP `device_add
//! driver=scsi-hd,bus=<id>.0,drive=<node>,lun=N[,id=..]` and `device_del` add and
//! remove further LUNs on the running export; the guest is told through the event
//! queue (virtio-scsi's hotplug events).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use ::scsi::{HdOptions, ScsiBus, ScsiHd};
use aio_context::AioHandle;
use block_node::{AttachOptions, Claim};
use qdev_bus::{AnyBus, Bus, Device, DeviceDeleted, HotplugHandler, PciAddress};
use qmp::QmpError;
use virtio_core::VirtioDevice;
use virtio_scsi::{ScsiOptions, VirtioScsi};

use super::ExportSpec;
use super::exports::Daemon;

/// The claims of LUNs added by `device_add`, by device id: dropped (the node
/// released) when the LUN's DEVICE_DELETED comes.
type Luns = Arc<Mutex<HashMap<String, Claim>>>;

/// The controller's place in a device tree of its own: it owns the SCSI bus, so
/// LUNs can be plugged and unplugged (qdev-bus needs a tree for both).
struct Controller {
    id: String,
    bus: Arc<ScsiBus>,
}

impl Device for Controller {
    fn id(&self) -> &str {
        &self.id
    }
    fn for_each_child_bus<'a>(&'a self, visit: &mut dyn FnMut(&'a dyn AnyBus)) {
        visit(self.bus.bus());
    }
}

/// A vhost-user-scsi export's controller, as the monitor sees it.
pub(crate) struct ScsiExport {
    /// The tree's root; its one device is the controller.
    _root: Bus<PciAddress>,
    /// The SCSI bus (`<id>.0`).
    pub(crate) bus: Arc<ScsiBus>,
    /// `logical-block-size` of the export, for LUNs added later.
    pub(crate) block_size: u32,
    /// Whether LUNs added later are writable (the export's `writable`).
    writable: bool,
    /// LUNs added by `device_add`.
    luns: Luns,
    /// PARAM_CHANGE events (a LUN's node resized).
    change: virtio_scsi::ChangeNotifier,
}

impl ScsiExport {
    /// The controller with `claim`'s node as LUN 0 (device id `<export id>-lun0`).
    /// A LUN whose unplug was requested is unlinked on `main` (the daemon's main
    /// loop) once its commands in flight completed; `on_deleted` hears of it after
    /// the grace period (DEVICE_DELETED).
    pub(crate) fn new(
        spec: &ExportSpec,
        claim: &Claim,
        main: &AioHandle,
        on_deleted: impl Fn(DeviceDeleted) + Send + Sync + 'static,
    ) -> Result<(Box<dyn VirtioDevice>, ScsiExport), String> {
        let options = ScsiOptions {
            num_queues: spec.num_queues,
            ..ScsiOptions::default()
        };
        let slot: Arc<std::sync::OnceLock<std::sync::Weak<ScsiBus>>> = Arc::default();
        let (s, main) = (slot.clone(), main.clone());
        let device = VirtioScsi::new(&format!("{}.0", spec.id), options, move |id| {
            let s = s.clone();
            // Not inline: the bus's writer lock may be held here.
            main.schedule_oneshot(move || {
                if let Some(bus) = s.get().and_then(std::sync::Weak::upgrade) {
                    if let Err(e) = bus.bus().unplug(&id) {
                        tracing::warn!("unplug of LUN {id}: {e}");
                    }
                }
            });
        })
        .map_err(|e| e.to_string())?;
        let bus = device.bus().clone();
        let _ = slot.set(Arc::downgrade(&bus));
        let luns: Luns = Arc::default();
        let l = luns.clone();
        let root = Bus::root_with_events(&format!("{}-root", spec.id), move |e| {
            l.lock().unwrap_or_else(|e| e.into_inner()).remove(&e.id);
            on_deleted(e);
        });
        let controller = Controller {
            id: spec.id.clone(),
            bus: bus.clone(),
        };
        let slot0 = PciAddress::new(0, 0).map_err(|e| e.to_string())?;
        root.plug(slot0, Box::new(controller) as Box<dyn Device>)
            .map_err(|e| e.to_string())?;
        let scsi = ScsiExport {
            _root: root,
            bus,
            block_size: spec.logical_block_size,
            writable: spec.writable,
            luns,
            change: device.change_notifier(),
        };
        scsi.plug(&format!("{}-lun0", spec.id), claim, 0, 0, &spec.serial)?;
        Ok((Box::new(ChangeFeature(device)), scsi))
    }

    /// The writable backends of the LUNs added later (flushed at exit).
    pub(crate) fn claims(&self) -> Vec<Arc<dyn block_dma::BlockBackend>> {
        let luns = self.luns.lock().unwrap_or_else(|e| e.into_inner());
        luns.values()
            .filter(|c| !c.read_only())
            .map(|c| c.drive().backend().clone())
            .collect()
    }

    /// Plugs a scsi-hd `id` over `claim`'s drive at `target`, `lun`.
    fn plug(
        &self,
        id: &str,
        claim: &Claim,
        target: u16,
        lun: u16,
        serial: &str,
    ) -> Result<(), String> {
        let options = HdOptions {
            serial: serial.to_owned(),
            block_size: self.block_size,
            ..HdOptions::default()
        };
        let hd = ScsiHd::new(id, claim.drive().clone(), options).map_err(|e| e.to_string())?;
        // block_resize: new capacity + unit attention 2A/09, and PARAM_CHANGE.
        let (control, change) = (hd.control(), self.change.clone());
        claim.on_resize(move |size| {
            control.set_capacity(size);
            change.param_change(target, lun, ::scsi::Sense::CAPACITY_CHANGED);
        });
        self.bus
            .plug(target, lun, Box::new(hd))
            .map_err(|e| e.to_string())
    }
}

/// A `device_add` of a scsi-hd.
#[derive(Debug)]
pub(crate) struct LunRequest {
    /// `bus`: `<export id>.0`.
    pub(crate) bus: String,
    /// `drive`: a node name.
    pub(crate) drive: String,
    /// `lun`.
    pub(crate) lun: u16,
    /// `scsi-id`: the target.
    pub(crate) scsi_id: u16,
    /// `id` (default `<export>-t<target>-lun<lun>`).
    pub(crate) id: Option<String>,
    /// `serial`.
    pub(crate) serial: String,
}

/// Plugs a LUN into a running vhost-user-scsi export; the guest hears of it on the
/// event queue (TRANSPORT_RESET RESCAN), and REPORT LUNS shows it.
pub(crate) fn device_add(daemon: &Daemon, r: &LunRequest) -> Result<(), String> {
    let export = daemon
        .exports()
        .into_iter()
        .find(|e| e.scsi.is_some() && format!("{}.0", e.id) == r.bus)
        .ok_or_else(|| format!("Bus '{}' not found", r.bus))?;
    let Some(scsi) = export.scsi.as_ref() else {
        return Err(format!("Bus '{}' not found", r.bus));
    };
    let id =
        r.id.clone()
            .unwrap_or_else(|| format!("{}-t{}-lun{}", export.id, r.scsi_id, r.lun));
    if scsi
        .luns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .contains_key(&id)
    {
        return Err(format!("Duplicate device ID '{id}' for device"));
    }
    if !daemon.nodes.contains(&r.drive) {
        return Err(format!(
            "Property 'scsi-hd.drive' can't find value '{}'",
            r.drive
        ));
    }
    let how = AttachOptions {
        device: Some(id.clone()),
        read_only: !scsi.writable,
        ..AttachOptions::default()
    };
    let claim = daemon
        .nodes
        .attach(&r.drive, how)
        .map_err(|e| e.to_string())?;
    scsi.plug(&id, &claim, r.scsi_id, r.lun, &r.serial)?;
    scsi.luns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(id, claim);
    Ok(())
}

/// Asks the LUN `id` of whichever vhost-user-scsi export has it to leave: the guest
/// is told (TRANSPORT_RESET REMOVED), new commands to it are refused, and once its
/// commands in flight completed it is unlinked; DEVICE_DELETED follows the grace
/// period, and its node is released.
pub(crate) fn device_del(daemon: &Daemon, id: &str) -> Result<(), QmpError> {
    for export in daemon.exports() {
        let Some(scsi) = export.scsi.as_ref() else {
            continue;
        };
        match scsi.bus.bus().device_del(id) {
            Ok(_) => return Ok(()),
            Err(qdev_bus::Error::NoSuchDevice { .. }) => continue,
            Err(e) => return Err(QmpError::generic(e.to_string())),
        }
    }
    Err(QmpError::device_not_found(id))
}

/// `VIRTIO_SCSI_F_CHANGE`.
const F_CHANGE: u64 = 1 << virtio_bindings::virtio_scsi::VIRTIO_SCSI_F_CHANGE;

/// The controller as a vhost-user frontend sees it: QEMU's vhost-user-scsi-pci acks
/// VIRTIO_SCSI_F_CHANGE with the guest whatever the backend offers, and never forwards
/// it (it is not among the bits QEMU negotiates with the backend). So it is offered
/// here and taken as acked once the frontend acks its features: a `block_resize` of a
/// LUN's node then sends PARAM_CHANGE (2A/09), on which Linux's virtio_scsi rescans the
/// LUN; the unit attention (CAPACITY DATA HAS CHANGED) that scsi-hd raises reaches the
/// driver too, at its next command.
struct ChangeFeature(VirtioScsi);

impl VirtioDevice for ChangeFeature {
    fn device_type(&self) -> u32 {
        self.0.device_type()
    }
    fn num_queues(&self) -> u16 {
        self.0.num_queues()
    }
    fn queue_max_size(&self) -> u16 {
        self.0.queue_max_size()
    }
    fn features(&self) -> u64 {
        self.0.features() | F_CHANGE
    }
    fn ack_features(&mut self, features: u64) {
        // QEMU keeps F_CHANGE to itself: a frontend that acked anything is taken to
        // have it (Linux's virtio_scsi accepts it), so resizes send PARAM_CHANGE.
        self.0.ack_features(if features == 0 {
            0
        } else {
            features | F_CHANGE
        });
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.0.read_config(offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.0.write_config(offset, data);
    }
    fn start_queue(
        &mut self,
        index: u16,
        setup: virtio_core::QueueSetup,
    ) -> Result<(), virtio_core::QueueError> {
        self.0.start_queue(index, setup)
    }
    fn stop_queue(&mut self, index: u16) -> Option<virtio_queue::Queue> {
        self.0.stop_queue(index)
    }
    fn reset(&mut self) {
        self.0.reset();
    }
    fn start_queue_async(
        &mut self,
        index: u16,
        setup: virtio_core::QueueSetup,
    ) -> Result<(), virtio_core::QueueError> {
        self.0.start_queue_async(index, setup)
    }
    fn reset_async(&mut self, done: Box<dyn FnOnce() + Send>) {
        self.0.reset_async(done);
    }
}
