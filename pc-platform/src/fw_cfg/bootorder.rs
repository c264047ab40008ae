//! The fw_cfg file `bootorder`: the firmware's per-device boot order, built as QEMU's
//! `get_boot_devices_list` builds it from the devices' `bootindex` properties, so
//! SeaBIOS (`boot.c`, which matches its own device paths against these lines) treats
//! our machine as it treats QEMU's.
//!
//! The file holds one Open Firmware device path per line, lowest `bootindex` first,
//! `\n`-separated and NUL-terminated (no trailing newline); with `-boot strict=on` a last
//! line `HALT` tells SeaBIOS not to boot anything not listed. Without any `bootindex`
//! the file is empty (QEMU adds it all the same).

use std::collections::BTreeMap;

/// Two devices claimed the same `bootindex` (QEMU's message).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("The bootindex {0} has already been used")]
pub struct BootIndexUsed(pub i32);

/// The device paths of the devices that have a `bootindex`, in boot order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootOrder {
    entries: BTreeMap<i32, String>,
}

impl BootOrder {
    /// An empty order.
    pub fn new() -> BootOrder {
        BootOrder::default()
    }

    /// Adds the device at `path` with `bootindex`; a negative index means "not
    /// bootable by index" (QEMU's default of -1) and adds nothing.
    ///
    /// # Errors
    ///
    /// [`BootIndexUsed`] if another device has that index.
    pub fn add(&mut self, bootindex: i32, path: String) -> Result<(), BootIndexUsed> {
        if bootindex < 0 {
            return Ok(());
        }
        if self.entries.contains_key(&bootindex) {
            return Err(BootIndexUsed(bootindex));
        }
        self.entries.insert(bootindex, path);
        Ok(())
    }

    /// The file's contents; `strict` appends `HALT` (only when something is listed).
    pub fn file(&self, strict: bool) -> Vec<u8> {
        if self.entries.is_empty() {
            return Vec::new();
        }
        let mut lines: Vec<&str> = self.entries.values().map(String::as_str).collect();
        if strict {
            lines.push("HALT");
        }
        let mut bytes = lines.join("\n").into_bytes();
        bytes.push(0);
        bytes
    }
}

/// The device path QEMU gives a virtio-blk-pci disk on the `pc` machine's root bus:
/// the PCI node named by its class (mass storage, SCSI: `scsi`) at `slot[,function]`,
/// then the disk (`/disk@0,0`, virtio-blk's bootindex suffix).
pub fn virtio_blk_pci_path(slot: u8, function: u8) -> String {
    format!("{}/disk@0,0", storage_pci_path(slot, function))
}

/// The device path QEMU gives a scsi-hd at `target`/`lun` on a virtio-scsi-pci
/// controller on the root bus: the controller's node, the SCSI bus's channel 0, then
/// the disk (`/pci@i0cf8/scsi@4/channel@0/disk@0,0`).
pub fn virtio_scsi_disk_path(slot: u8, function: u8, target: u16, lun: u16) -> String {
    format!(
        "{}/channel@0/disk@{target:x},{lun:x}",
        storage_pci_path(slot, function)
    )
}

/// A mass-storage (SCSI class) PCI function's node on the root bus.
fn storage_pci_path(slot: u8, function: u8) -> String {
    if function == 0 {
        format!("/pci@i0cf8/scsi@{slot:x}")
    } else {
        format!("/pci@i0cf8/scsi@{slot:x},{function:x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scsi_disk_paths_as_qemu() {
        // QEMU 10's bootorder line for scsi-hd,scsi-id=1 on virtio-scsi-pci,addr=0x4.
        assert_eq!(
            virtio_scsi_disk_path(4, 0, 1, 0),
            "/pci@i0cf8/scsi@4/channel@0/disk@1,0"
        );
        assert_eq!(
            virtio_scsi_disk_path(0x1f, 2, 0x10, 3),
            "/pci@i0cf8/scsi@1f,2/channel@0/disk@10,3"
        );
    }

    #[test]
    fn lowest_index_first_nul_terminated_as_qemu() {
        let mut order = BootOrder::new();
        assert_eq!(order.file(true), b"", "nothing listed: empty, even strict");
        order.add(2, virtio_blk_pci_path(3, 0)).unwrap();
        order.add(-1, virtio_blk_pci_path(6, 0)).unwrap();
        order.add(1, virtio_blk_pci_path(0x1f, 0)).unwrap();
        // Byte for byte what QEMU 10 puts in fw_cfg for the same devices.
        assert_eq!(
            order.file(false),
            b"/pci@i0cf8/scsi@1f/disk@0,0\n/pci@i0cf8/scsi@3/disk@0,0\0"
        );
        assert_eq!(
            order.file(true),
            b"/pci@i0cf8/scsi@1f/disk@0,0\n/pci@i0cf8/scsi@3/disk@0,0\nHALT\0"
        );
        assert_eq!(
            order
                .add(1, virtio_blk_pci_path(4, 0))
                .unwrap_err()
                .to_string(),
            "The bootindex 1 has already been used"
        );
    }

    #[test]
    fn functions_other_than_zero_are_named() {
        assert_eq!(virtio_blk_pci_path(5, 3), "/pci@i0cf8/scsi@5,3/disk@0,0");
    }
}
