//! `-drive`: the grammar and its checks live in the block-node crate
//! ([`block_node::drive`]); this puts its errors in the command line's form.

use super::{DriveConfig, Error, Result, invalid};

/// Parses one `-drive`; `earlier` are the drives before it (for its placement).
pub(super) fn parse(option: &str, arg: &str, earlier: &[DriveConfig]) -> Result<DriveConfig> {
    block_node::drive::parse(option, arg, earlier).map_err(|e| match e {
        block_node::Error::Syntax(e) => Error::from(e),
        e => invalid(option, e.to_string()),
    })
}

/// `-hda FILE`..`-hdd FILE` and `-cdrom FILE` as the `-drive` QEMU makes of them: the
/// default interface (IDE) at index 0..3 (`-cdrom`: index 2, `media=cdrom`).
pub(super) fn legacy(name: &str, file: &str) -> String {
    let (index, media) = match name {
        "hdb" => (1, "disk"),
        "hdc" => (2, "disk"),
        "hdd" => (3, "disk"),
        "cdrom" => (2, "cdrom"),
        _ => (0, "disk"),
    };
    // The file name is one value: its commas are doubled to stay in it.
    let file = file.replace(',', ",,");
    format!("file={file},index={index},media={media}")
}
