//! `-drive`: QEMU's keys, checks and messages (`drive_new` in blockdev.c), including
//! the legacy placement keys: `index`, `bus` and `unit` place the drive on its
//! interface (the first free unit when none is given) and name an `if=virtio` drive
//! (`virtio<unit>`); `media=cdrom` makes it read-only; `discard=unmap|on` passes the
//! guest's discards to the image, `ignore|off` (QEMU's default) does not.

use std::path::PathBuf;

use qemu_opts::Opts;

use super::{DriveConfig, Result, invalid, opts, parse_bool};

/// Units per bus: `if=ide` has 2 (master, slave), `if=scsi` 7; the others have one
/// unit per bus numbering, with no limit (QEMU's `if_max_devs`).
fn max_devs(interface: &str) -> u32 {
    match interface {
        "ide" => 2,
        "scsi" => 7,
        _ => 0,
    }
}

/// Parses one `-drive`; `earlier` are the drives before it (for its placement).
pub(super) fn parse(option: &str, arg: &str, earlier: &[DriveConfig]) -> Result<DriveConfig> {
    let kv = opts(option, arg, None)?;
    const KNOWN: &[&str] = &[
        "file", "format", "if", "id", "werror", "rerror", "cache", "aio", "readonly", "media",
        "index", "bus", "unit", "discard",
    ];
    if let Some(bad) = kv.unknown_keys(KNOWN).first() {
        return Err(invalid(option, format!("unsupported key '{bad}'")));
    }
    let interface = kv.get("if").unwrap_or("ide").to_owned();
    if !matches!(interface.as_str(), "ide" | "scsi" | "virtio" | "none") {
        return Err(invalid(
            option,
            format!("if={interface}: ide, scsi, virtio or none"),
        ));
    }
    if let Some(format) = kv.get("format").filter(|f| *f != "raw") {
        return Err(invalid(option, format!("format={format}: only raw images")));
    }
    for key in ["werror", "rerror"] {
        if let Some(v) = kv.get(key) {
            if !matches!(v, "report" | "ignore" | "stop" | "enospc") {
                return Err(invalid(
                    option,
                    format!("{key}={v}: report, ignore, stop, enospc"),
                ));
            }
        }
    }
    let cdrom = match kv.get("media") {
        None | Some("disk") => false,
        Some("cdrom") => true,
        Some(m) => return Err(invalid(option, format!("'{m}' invalid media"))),
    };
    let discard = match kv.get("discard") {
        None | Some("ignore" | "off") => false,
        Some("unmap" | "on") => true,
        Some(_) => return Err(invalid(option, "Invalid discard option")),
    };
    let (bus, unit) = place(option, &kv, &interface, earlier)?;
    let readonly = kv
        .get("readonly")
        .map(|v| parse_bool(option, "readonly", v))
        .transpose()?
        .unwrap_or(false);
    Ok(DriveConfig {
        file: kv.get("file").map(PathBuf::from),
        format: kv.get("format").map(str::to_owned),
        interface,
        id: kv.get("id").map(str::to_owned),
        werror: kv.get("werror").map(str::to_owned),
        rerror: kv.get("rerror").map(str::to_owned),
        cache: kv.get("cache").map(str::to_owned),
        aio: kv.get("aio").map(str::to_owned),
        // QEMU: a CD-ROM is read-only, whatever readonly= says.
        readonly: readonly || cdrom,
        cdrom,
        discard,
        bus,
        unit,
        options: kv,
    })
}

/// QEMU's placement: `index` (not with a non-zero `bus` or a `unit`) or `bus`/`unit`,
/// else the first free unit; a place already taken on the interface is an error.
fn place(option: &str, kv: &Opts, interface: &str, earlier: &[DriveConfig]) -> Result<(u32, u32)> {
    let number = |key: &str| -> Result<Option<u32>> {
        kv.get(key)
            .map(|v| {
                v.parse::<u32>()
                    .map_err(|_| invalid(option, format!("Parameter '{key}' expects a number")))
            })
            .transpose()
    };
    let (index, mut bus, mut unit) = (
        number("index")?,
        number("bus")?.unwrap_or(0),
        number("unit")?,
    );
    let max = max_devs(interface);
    if let Some(index) = index {
        if bus != 0 || unit.is_some() {
            return Err(invalid(option, "index cannot be used with bus and unit"));
        }
        (bus, unit) = match (index.checked_div(max), index.checked_rem(max)) {
            (Some(bus), unit) => (bus, unit),
            (None, _) => (0, Some(index)), // one unit numbering, no buses
        };
    }
    let taken = |bus: u32, unit: u32| {
        earlier
            .iter()
            .any(|d| d.interface == interface && (d.bus, d.unit) == (bus, unit))
    };
    let unit = match unit {
        Some(unit) => unit,
        None => {
            let mut unit = 0;
            while taken(bus, unit) {
                unit += 1;
                if max > 0 && unit >= max {
                    unit -= max;
                    bus += 1;
                }
            }
            unit
        }
    };
    if max > 0 && unit >= max {
        return Err(invalid(
            option,
            format!("unit {unit} too big (max is {})", max - 1),
        ));
    }
    if taken(bus, unit) {
        let index = index.map_or(-1, i64::from);
        return Err(invalid(
            option,
            format!("drive with bus={bus}, unit={unit} (index={index}) exists"),
        ));
    }
    Ok((bus, unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses the drives in order, as the command line does.
    fn drives(args: &[&str]) -> std::result::Result<Vec<DriveConfig>, String> {
        let mut out: Vec<DriveConfig> = Vec::new();
        for a in args {
            let d = parse("-drive", a, &out).map_err(|e| e.to_string())?;
            out.push(d);
        }
        Ok(out)
    }

    #[test]
    fn placement_follows_qemu() {
        let d = drives(&[
            "file=a,if=virtio,index=1",
            "file=b,if=virtio",
            "file=c,if=virtio",
            "file=d,if=virtio,unit=5",
            "file=e,if=ide",
            "file=f,if=ide,index=3",
            "file=g,if=ide",
        ])
        .unwrap();
        let places: Vec<(u32, u32)> = d.iter().map(|d| (d.bus, d.unit)).collect();
        assert_eq!(
            places,
            [(0, 1), (0, 0), (0, 2), (0, 5), (0, 0), (1, 1), (0, 1)]
        );
    }

    #[test]
    fn placement_errors_in_qemus_words() {
        let err = |args: &[&str]| drives(args).unwrap_err();
        assert!(
            err(&["file=a,if=virtio,index=1", "file=b,if=virtio,index=1"])
                .ends_with("drive with bus=0, unit=1 (index=1) exists")
        );
        assert!(
            err(&["file=a,if=none,id=x,unit=0", "file=b,if=none,id=y,index=0"])
                .ends_with("drive with bus=0, unit=0 (index=0) exists")
        );
        assert!(
            err(&["file=a,if=virtio,index=1,unit=0"])
                .ends_with("index cannot be used with bus and unit")
        );
        assert!(
            err(&["file=a,if=virtio,index=1,bus=2"])
                .ends_with("index cannot be used with bus and unit")
        );
        assert!(err(&["file=a,if=virtio,index=x"]).ends_with("Parameter 'index' expects a number"));
        assert!(err(&["file=a,if=ide,unit=2"]).ends_with("unit 2 too big (max is 1)"));
        // index with bus=0 is fine, as in QEMU.
        assert!(drives(&["file=a,if=virtio,index=0,bus=0"]).is_ok());
    }

    #[test]
    fn media_and_discard() {
        let d = drives(&[
            "file=a,if=virtio,media=cdrom,readonly=off",
            "file=b,if=virtio,media=disk,discard=unmap",
        ])
        .unwrap();
        assert!(d[0].cdrom && d[0].readonly, "a CD-ROM is read-only");
        assert!(!d[0].discard, "discard=ignore is the default");
        assert!(!d[1].cdrom && !d[1].readonly && d[1].discard);
        assert!(drives(&["file=a,discard=on"]).unwrap()[0].discard);
        assert!(!drives(&["file=a,discard=off"]).unwrap()[0].discard);
        assert!(
            drives(&["file=a,media=floppy"])
                .unwrap_err()
                .ends_with("'floppy' invalid media")
        );
        assert!(
            drives(&["file=a,discard=bogus"])
                .unwrap_err()
                .ends_with("Invalid discard option")
        );
    }
}
