//! `virtio-blk-pci,drive=ID|NODE[,id=..][,iothread=..][,num-queues=N][,queue-size=N]
//! [,serial=..][,bootindex=N][,addr=SLOT]`: the virtio-blk model on virtio-pci.
//! `drive=` names a `-drive` id or a `-blockdev` node, as in QEMU.

use pc_platform::fw_cfg::bootorder::virtio_blk_pci_path;
use qdev_bus::registry::{
    BusKind, Category, DeviceError, DeviceRegistry, DeviceRequest, DeviceType,
};
use virtio_blk::{BlkOptions, VirtioBlk};

use super::{Devices, take_bootindex};

/// Registers `virtio-blk-pci`.
pub(crate) fn register(registry: &mut DeviceRegistry<Devices>) {
    registry.register(DeviceType::new(
        "virtio-blk-pci",
        BusKind::Pci,
        Category::Storage,
        plug,
    ));
}

fn plug(devices: &Devices, mut r: DeviceRequest) -> Result<(), DeviceError> {
    let reference = r
        .opts
        .string("drive")
        .ok_or_else(|| DeviceError::Device("drive property not set".into()))?;
    let id = r.id.clone().unwrap_or_else(|| format!("{reference}-dev"));
    let options = BlkOptions {
        num_queues: r.opts.number("num-queues")?.unwrap_or(1),
        queue_size: r.opts.number("queue-size")?.unwrap_or(256),
        serial: r.opts.string("serial").unwrap_or_default(),
        ..BlkOptions::default()
    };
    let iothread = r.opts.string("iothread");
    let addr = r.opts.string("addr");
    let bootindex = take_bootindex(&mut r.opts)?;
    r.finish()?;
    let iothread = devices.iothread(iothread.as_deref())?;
    let slot = devices.pci_slot(&r.driver, addr.as_deref())?;
    devices.add_boot_index(bootindex, virtio_blk_pci_path(slot, 0))?;
    let qom = format!("{}/virtio-backend", super::qom_path(&id));
    let claim = devices.claim(&reference, &qom).map_err(|e| match e {
        // QEMU's words for a drive= that names nothing.
        block_node::Error::NotFound(r) => DeviceError::Device(format!(
            "Property 'virtio-blk-device.drive' can't find value '{r}'"
        )),
        e => DeviceError::Device(e.to_string()),
    })?;
    let blk = VirtioBlk::new(claim.drive().clone(), options)
        .map_err(|e| DeviceError::Device(e.to_string()))?;
    let config = devices.plug_virtio_pci(&id, Box::new(blk), iothread.clone(), slot, None)?;
    // block_resize: the driver reads the new capacity after the config interrupt.
    claim.on_resize(move |_| {
        config.notify();
    });
    devices.add_disk(&id, claim, iothread, qom);
    Ok(())
}
