//! `-drive`: QEMU's keys, checks and messages (`drive_new` in blockdev.c), including
//! the legacy placement keys: `index`, `bus` and `unit` place the drive on its
//! interface (the first free unit when none is given) and name an `if=virtio` drive
//! (`virtio<unit>`); `media=cdrom` makes it read-only; `discard=unmap|on` passes the
//! guest's discards to the image, `ignore|off` (QEMU's default) does not.
//!
//! [`parse`] reads the text; [`DriveOptions::check`] turns what it read into what a node
//! needs (cache mode, error policy), with the messages the VMM has always printed.

use std::path::PathBuf;

use block_dma::{ErrorAction, ErrorPolicy};
use qemu_opts::{Grammar, Opts};

use crate::{Error, Result};

/// One `-drive` option, as given.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DriveOptions {
    /// `file=`: the image path.
    pub file: Option<PathBuf>,
    /// `format=` (only `raw`).
    pub format: Option<String>,
    /// `if=`: `ide`, `scsi`, `virtio` or `none` (QEMU's default is `ide`).
    pub interface: String,
    /// `id=`.
    pub id: Option<String>,
    /// `werror=` (`report`, `ignore`, `stop`, `enospc`).
    pub werror: Option<String>,
    /// `rerror=`.
    pub rerror: Option<String>,
    /// `cache=`.
    pub cache: Option<String>,
    /// `aio=`.
    pub aio: Option<String>,
    /// `readonly=on` (or `media=cdrom`).
    pub readonly: bool,
    /// `media=cdrom`.
    pub cdrom: bool,
    /// `discard=unmap|on`: the guest's discards reach the image.
    pub discard: bool,
    /// The bus on the interface (`bus=`, or from `index=`).
    pub bus: u32,
    /// The unit on that bus (`unit=`, from `index=`, or the first free one).
    pub unit: u32,
    /// Every key and value, in order, for the disk code to check further.
    pub options: Opts,
}

/// What a `-drive` asks of its node, checked ([`DriveOptions::check`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DriveSettings {
    /// The image.
    pub file: PathBuf,
    /// `cache=none|directsync`: O_DIRECT.
    pub direct: bool,
    /// `werror`/`rerror`.
    pub policy: ErrorPolicy,
}

impl DriveOptions {
    /// Checks the keys a node needs: `file` present, `format=raw`, a known `cache`
    /// mode, `aio=io_uring`, `werror`/`rerror` (`id` names the drive in messages).
    ///
    /// # Errors
    ///
    /// [`Error::Drive`] naming the drive and the key.
    pub fn check(&self, id: &str) -> Result<DriveSettings> {
        let fail = |m: String| Error::Drive(format!("-drive id={id}: {m}"));
        let file = self
            .file
            .clone()
            .ok_or_else(|| fail("file= is required".into()))?;
        if let Some(f) = self.format.as_deref().filter(|f| *f != "raw") {
            return Err(fail(format!("format={f} is not supported (only raw)")));
        }
        let direct = match self.cache.as_deref() {
            None | Some("writeback" | "writethrough" | "unsafe") => false,
            Some("none" | "directsync") => true,
            Some(c) => return Err(fail(format!("invalid cache mode '{c}'"))),
        };
        if let Some(a) = self.aio.as_deref().filter(|a| *a != "io_uring") {
            return Err(fail(format!(
                "aio={a} is not supported (block I/O always uses io_uring)"
            )));
        }
        let mut policy = ErrorPolicy::default();
        if let Some(w) = &self.werror {
            policy.werror = w
                .parse::<ErrorAction>()
                .map_err(|e| Error::Drive(format!("-drive werror: {e}")))?;
        }
        if let Some(r) = &self.rerror {
            policy.rerror = r
                .parse::<ErrorAction>()
                .map_err(|e| Error::Drive(format!("-drive rerror: {e}")))?;
            if policy.rerror == ErrorAction::Enospc {
                return Err(Error::Drive(
                    "-drive rerror=enospc is not supported (QEMU refuses it too)".into(),
                ));
            }
        }
        Ok(DriveSettings {
            file,
            direct,
            policy,
        })
    }
}

fn invalid(reason: impl Into<String>) -> Error {
    Error::Drive(reason.into())
}

/// QEMU's on/off spellings.
fn parse_bool(key: &str, value: &str) -> Result<bool> {
    qemu_opts::parse_bool(value)
        .ok_or_else(|| invalid(format!("{key}={value}: expected on or off")))
}

/// Units per bus: `if=ide` has 2 (master, slave), `if=scsi` 7; the others have one
/// unit per bus numbering, with no limit (QEMU's `if_max_devs`).
fn max_devs(interface: &str) -> u32 {
    match interface {
        "ide" => 2,
        "scsi" => 7,
        _ => 0,
    }
}

/// Parses one `-drive` (the argument of `option`); `earlier` are the drives before it
/// (for its placement).
///
/// # Errors
///
/// A syntax error, an unknown key, a bad value, a place already taken: QEMU's words.
pub fn parse(option: &str, arg: &str, earlier: &[DriveOptions]) -> Result<DriveOptions> {
    let kv = Opts::parse(option, arg, Grammar::opts())?;
    const KNOWN: &[&str] = &[
        "file", "format", "if", "id", "werror", "rerror", "cache", "aio", "readonly", "media",
        "index", "bus", "unit", "discard",
    ];
    if let Some(bad) = kv.unknown_keys(KNOWN).first() {
        return Err(invalid(format!("unsupported key '{bad}'")));
    }
    let interface = kv.get("if").unwrap_or("ide").to_owned();
    if !matches!(interface.as_str(), "ide" | "scsi" | "virtio" | "none") {
        return Err(invalid(format!(
            "if={interface}: ide, scsi, virtio or none"
        )));
    }
    if let Some(format) = kv.get("format").filter(|f| *f != "raw") {
        return Err(invalid(format!("format={format}: only raw images")));
    }
    for key in ["werror", "rerror"] {
        if let Some(v) = kv.get(key) {
            if !matches!(v, "report" | "ignore" | "stop" | "enospc") {
                return Err(invalid(format!("{key}={v}: report, ignore, stop, enospc")));
            }
        }
    }
    let cdrom = match kv.get("media") {
        None | Some("disk") => false,
        Some("cdrom") => true,
        Some(m) => return Err(invalid(format!("'{m}' invalid media"))),
    };
    let discard = match kv.get("discard") {
        None | Some("ignore" | "off") => false,
        Some("unmap" | "on") => true,
        Some(_) => return Err(invalid("Invalid discard option")),
    };
    let (bus, unit) = place(&kv, &interface, earlier)?;
    let readonly = kv
        .get("readonly")
        .map(|v| parse_bool("readonly", v))
        .transpose()?
        .unwrap_or(false);
    Ok(DriveOptions {
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
fn place(kv: &Opts, interface: &str, earlier: &[DriveOptions]) -> Result<(u32, u32)> {
    let number = |key: &str| -> Result<Option<u32>> {
        kv.get(key)
            .map(|v| {
                v.parse::<u32>()
                    .map_err(|_| invalid(format!("Parameter '{key}' expects a number")))
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
            return Err(invalid("index cannot be used with bus and unit"));
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
        return Err(invalid(format!("unit {unit} too big (max is {})", max - 1)));
    }
    if taken(bus, unit) {
        let index = index.map_or(-1, i64::from);
        return Err(invalid(format!(
            "drive with bus={bus}, unit={unit} (index={index}) exists"
        )));
    }
    Ok((bus, unit))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses the drives in order, as the command line does.
    fn drives(args: &[&str]) -> std::result::Result<Vec<DriveOptions>, String> {
        let mut out: Vec<DriveOptions> = Vec::new();
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
