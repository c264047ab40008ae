//! IDE: `ide-hd` and `ide-cd` on the PIIX3 IDE controller's channels `ide.0` and
//! `ide.1` (kvm-machine's `ide` module: the function is always there on `pc`).
//!
//! `ide-hd|ide-cd[,drive=ID|NODE][,bus=ide.0|ide.1][,unit=0|1][,id=..][,bootindex=N]
//! [,serial=..]`. As in QEMU 10: without `bus=` the device goes on `ide.1` (the bus
//! QEMU's search meets first); without `unit=` on the master, or the slave if the
//! master is taken; `ide-cd` without `drive=` is an empty CD drive. The channels cannot
//! hotplug (`device_add` is refused with QEMU's words); the attaching itself is
//! [`crate::ide::attach_ide_device`], as for `-drive if=ide`.

use kvm_machine::ide::IdeMedia;
use qdev_bus::registry::{
    BusInfo, BusKind, Category, DeviceError, DeviceRegistry, DeviceRequest, DeviceType,
};

use super::{Devices, take_bootindex};
use crate::ide::{IdeDeviceSpec, attach_ide_device};

/// The channels' names, by index.
const BUSES: [&str; 2] = ["ide.0", "ide.1"];

/// Registers `ide-hd` and `ide-cd`.
pub(crate) fn register(registry: &mut DeviceRegistry<Devices>) {
    registry.register(
        DeviceType::new("ide-hd", BusKind::Ide, Category::Storage, |d, r| {
            plug(d, r, IdeMedia::Disk)
        })
        .description("virtual IDE disk"),
    );
    registry.register(
        DeviceType::new("ide-cd", BusKind::Ide, Category::Storage, |d, r| {
            plug(d, r, IdeMedia::Cdrom)
        })
        .description("virtual IDE CD-ROM"),
    );
}

/// The channel `name` (`ide.0` or `ide.1`).
pub(super) fn bus(name: &str) -> Option<BusInfo> {
    BUSES.iter().position(|b| *b == name).map(bus_info)
}

/// The bus QEMU picks for an IDE device without `bus=`: `ide.1`.
pub(super) fn default_bus() -> BusInfo {
    bus_info(1)
}

/// The channel of the `-device ide-hd|ide-cd` with id `id`.
pub(super) fn bus_of(devices: &Devices, id: &str) -> Option<BusInfo> {
    let state = devices.ide.state.borrow();
    state
        .drives
        .iter()
        .find(|d| d.qdev_id.as_deref() == Some(id))?;
    let list = devices.ide_controller().devices();
    let (ch, ..) = list.into_iter().find(|(_, _, ctl_id, _)| ctl_id == id)?;
    Some(bus_info(ch))
}

fn bus_info(channel: usize) -> BusInfo {
    BusInfo {
        name: BUSES[channel].into(),
        kind: BusKind::Ide,
        // Neither QEMU's PIIX3 IDE nor ours can tell a guest of a device coming.
        hotpluggable: false,
    }
}

fn plug(devices: &Devices, mut r: DeviceRequest, media: IdeMedia) -> Result<(), DeviceError> {
    let reference = r.opts.string("drive");
    let unit: Option<u32> = r.opts.number("unit")?;
    let bootindex = take_bootindex(&mut r.opts)?;
    let serial = r.opts.string("serial");
    r.finish()?;
    let channel = BUSES.iter().position(|b| *b == r.bus.name);
    let channel = channel.ok_or_else(|| DeviceError::NoSuchBus(r.bus.name.clone()))?;
    let ctl = devices.ide_controller();
    let taken = |u: usize| ctl.devices().iter().any(|d| (d.0, d.1) == (channel, u));
    // QEMU's order and words (ide_qdev_realize, then the device's realize), before the
    // drive is taken: a refused device leaves its -drive in place.
    let unit = match unit {
        Some(u) if u > 1 => {
            let e = format!("Can't create IDE unit {u}, bus supports only 2 units");
            return Err(DeviceError::Device(e));
        }
        Some(u) => u as usize,
        None => usize::from(taken(0)),
    };
    if taken(unit) {
        return Err(DeviceError::Device(format!("IDE unit {unit} is in use")));
    }
    if media == IdeMedia::Disk && reference.is_none() {
        return Err(DeviceError::Device("No drive specified".into()));
    }
    // The name of an empty CD drive (`query-block`'s `device`) is `-drive if=ide`'s.
    let empty_name = format!("ide{channel}-cd{unit}");
    let spec = IdeDeviceSpec {
        bus: channel,
        unit,
        media,
        drive: reference.as_deref(),
        empty_name: &empty_name,
        qdev_id: r.id.as_deref(),
        options: Default::default(),
        bootindex: bootindex.unwrap_or(-1),
        serial: serial.as_deref(),
    };
    let mut order = devices.boot_order_mut();
    attach_ide_device(devices, spec, &mut order).map_err(DeviceError::Device)
}
