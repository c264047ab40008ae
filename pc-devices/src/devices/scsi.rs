//! SCSI: `virtio-scsi-pci` (the virtio-scsi model on virtio-pci, with its SCSI bus
//! `<id>.0`) and `scsi-hd` (a disk on such a bus, hotpluggable).
//!
//! - `virtio-scsi-pci[,id=..][,iothread=..][,num_queues=N][,virtqueue_size=N]
//!   [,max_sectors=N][,cmd_per_lun=N][,hotplug=on|off][,addr=SLOT]`
//! - `scsi-hd,drive=ID|NODE[,bus=scsi0.0][,scsi-id=N][,lun=N][,channel=0][,bootindex=N]
//!   [,serial=..][,write-cache=on|off][,vendor=..][,product=..][,ver=..]
//!   [,logical_block_size=512|4096]`; `werror`/`rerror` are the drive's.
//!
//! Unplug: `device_del` asks the bus; virtio-scsi tells the guest, refuses new commands
//! to the LUN and calls its drained hook once the LUN's commands in flight are done;
//! the hook has the main loop finish the unplug, and the tree emits DEVICE_DELETED
//! after the grace period.

use std::sync::{Arc, OnceLock, Weak};

use ::scsi::{HdOptions, MAX_LUN, MAX_TARGET, ScsiBus, ScsiHd};
use pc_platform::fw_cfg::bootorder::virtio_scsi_disk_path;
use qdev_bus::registry::{
    BusInfo, BusKind, Category, DeviceError, DeviceRegistry, DeviceRequest, DeviceType, Phase,
};
use qdev_bus::{AnyBus, HotplugHandler, ScsiAddress};
use tracing::warn;
use virtio_pci::ChildBus;
use virtio_scsi::{ScsiOptions, VirtioScsi};

use super::{ChildBusEntry, ChildBusKind, Devices, ScsiController, take_bootindex};

/// Registers `virtio-scsi-pci` and `scsi-hd`.
pub(crate) fn register(registry: &mut DeviceRegistry<Devices>) {
    registry.register(DeviceType::new(
        "virtio-scsi-pci",
        BusKind::Pci,
        Category::Storage,
        plug_controller,
    ));
    registry.register(
        DeviceType::new("scsi-hd", BusKind::Scsi, Category::Storage, plug_disk)
            .description("virtual SCSI disk"),
    );
}

/// The controller's SCSI bus as virtio-pci's child bus.
struct ScsiChild(Arc<ScsiBus>);

impl ChildBus for ScsiChild {
    fn bus(&self) -> &dyn AnyBus {
        self.0.bus()
    }
}

fn plug_controller(devices: &Devices, mut r: DeviceRequest) -> Result<(), DeviceError> {
    let defaults = ScsiOptions::default();
    let options = ScsiOptions {
        num_queues: r.opts.number("num_queues")?.unwrap_or(defaults.num_queues),
        queue_size: r
            .opts
            .number("virtqueue_size")?
            .unwrap_or(defaults.queue_size),
        max_sectors: r
            .opts
            .number("max_sectors")?
            .unwrap_or(defaults.max_sectors),
        cmd_per_lun: r
            .opts
            .number("cmd_per_lun")?
            .unwrap_or(defaults.cmd_per_lun),
        hotplug: r.opts.flag("hotplug", defaults.hotplug)?,
    };
    let iothread = r.opts.string("iothread");
    let addr = r.opts.string("addr");
    r.finish()?;
    let n = devices.bus_count(BusKind::Scsi);
    let (id, bus_name) = match &r.id {
        Some(id) => (id.clone(), format!("{id}.0")),
        // QEMU names an anonymous controller's bus after the bus type.
        None => (format!("virtio-scsi-pci.{n}"), format!("scsi.{n}")),
    };
    let iothread = devices.iothread(iothread.as_deref())?;
    let slot = devices.pci_slot(&r.driver, addr.as_deref())?;
    // The drained hook runs on any thread, maybe under the bus's writer lock: it hands
    // the unplug to the main loop, which finds the bus through a weak reference (the
    // hook lives in the bus: a strong one would be a cycle).
    let weak: Arc<OnceLock<Weak<ScsiBus>>> = Arc::new(OnceLock::new());
    let (main, cell) = (devices.main_loop().clone(), weak.clone());
    let on_drained = move |lun_id: String| {
        let cell = cell.clone();
        main.schedule_oneshot(move || {
            let Some(bus) = cell.get().and_then(Weak::upgrade) else {
                return;
            };
            if let Err(e) = bus.bus().unplug(&lun_id) {
                warn!("unplug of {lun_id}: {e}");
            }
        });
    };
    let scsi = VirtioScsi::new(&bus_name, options, on_drained)
        .map_err(|e| DeviceError::Device(e.to_string()))?;
    let bus = scsi.bus().clone();
    let _ = weak.set(Arc::downgrade(&bus));
    let child = Arc::new(ScsiChild(bus.clone()));
    let change = scsi.change_notifier();
    devices.plug_virtio_pci(&id, Box::new(scsi), iothread.clone(), slot, Some(child))?;
    devices.add_child_bus(ChildBusEntry {
        info: BusInfo {
            name: bus_name,
            kind: BusKind::Scsi,
            // The guest hears of LUNs coming and going through the event queue.
            hotpluggable: true,
        },
        kind: ChildBusKind::Scsi(ScsiController {
            bus,
            iothread,
            slot,
            change,
        }),
    });
    Ok(())
}

/// The first target with `lun` free (QEMU's choice for a scsi-hd without `scsi-id`).
fn free_target(bus: &ScsiBus, lun: u16) -> Option<u16> {
    let guard = rcu::read();
    let used = bus.bus().addresses(&guard);
    (0..=MAX_TARGET).find(|t| !used.contains(&ScsiAddress::new(*t, lun)))
}

fn hd_options(r: &mut DeviceRequest) -> Result<HdOptions, DeviceError> {
    let d = HdOptions::default();
    Ok(HdOptions {
        serial: r.opts.string("serial").unwrap_or(d.serial),
        vendor: r.opts.string("vendor").unwrap_or(d.vendor),
        product: r.opts.string("product").unwrap_or(d.product),
        revision: r.opts.string("ver").unwrap_or(d.revision),
        block_size: r.opts.number("logical_block_size")?.unwrap_or(d.block_size),
        write_cache: r.opts.flag("write-cache", d.write_cache)?,
    })
}

fn plug_disk(devices: &Devices, mut r: DeviceRequest) -> Result<(), DeviceError> {
    let reference = r
        .opts
        .string("drive")
        .ok_or_else(|| DeviceError::Device("drive property not set".into()))?;
    let target: Option<u16> = r.opts.number("scsi-id")?;
    let lun: u16 = r.opts.number("lun")?.unwrap_or(0);
    if r.opts.number::<u16>("channel")?.unwrap_or(0) != 0 {
        return Err(DeviceError::Device("bad scsi device channel id".into()));
    }
    let bootindex = take_bootindex(&mut r.opts)?;
    let options = hd_options(&mut r)?;
    r.finish()?;
    let ScsiController {
        bus,
        iothread,
        slot,
        change,
    } = devices
        .scsi_bus(&r.bus.name)
        .ok_or_else(|| DeviceError::NoSuchBus(r.bus.name.clone()))?;
    // QEMU's checks and words (scsi_qdev_realize), before the drive is taken: a
    // refused device leaves its -drive in place.
    if lun > MAX_LUN {
        return Err(DeviceError::Device(format!("bad scsi device lun: {lun}")));
    }
    let target = match target {
        Some(t) if t > MAX_TARGET => {
            return Err(DeviceError::Device(format!("bad scsi device id: {t}")));
        }
        Some(t) => t,
        None => {
            free_target(&bus, lun).ok_or_else(|| DeviceError::Device("no free target".into()))?
        }
    };
    {
        let guard = rcu::read();
        if let Some(other) = bus.bus().get(&guard, ScsiAddress::new(target, lun)) {
            return Err(DeviceError::Device(format!(
                "lun already used by '{}'",
                other.id()
            )));
        }
    }
    if r.phase == Phase::ColdPlug {
        // The firmware reads the boot order once; a hotplugged disk's bootindex is
        // accepted and has no effect until the next start, as in QEMU.
        devices.add_boot_index(bootindex, virtio_scsi_disk_path(slot, 0, target, lun))?;
    }
    let id = r.id.clone().unwrap_or_else(|| format!("{reference}-dev"));
    let qom = super::qom_path(&id);
    let claim = devices.claim(&reference, &qom).map_err(|e| match e {
        block_node::Error::NotFound(r) => {
            DeviceError::Device(format!("Property 'scsi-hd.drive' can't find value '{r}'"))
        }
        e => DeviceError::Device(e.to_string()),
    })?;
    let hd = ScsiHd::new(id.clone(), claim.drive().clone(), options)
        .map_err(|e| DeviceError::Device(e.to_string()))?;
    // block_resize: new capacity + unit attention 2A/09, and PARAM_CHANGE.
    let control = hd.control();
    claim.on_resize(move |size| {
        control.set_capacity(size);
        change.param_change(target, lun, ::scsi::Sense::CAPACITY_CHANGED);
    });
    bus.plug(target, lun, Box::new(hd)).map_err(|e| match e {
        ::scsi::Error::Bus(e) => DeviceError::from(e),
        e => DeviceError::Device(e.to_string()),
    })?;
    devices.add_disk(&id, claim, iothread, qom);
    Ok(())
}
