//! `-boot`: QEMU's keys, checks and messages. `order`/`once` go to the CMOS boot
//! registers, `menu`/`splash-time`/`strict` to fw_cfg (see `disks::configure_boot`),
//! `reboot-timeout` to fw_cfg's `etc/boot-fail-wait`.

use super::{Config, Result, invalid, opts};

/// `-boot` as the `pc` machine gives it to SeaBIOS: the device classes through CMOS
/// (`order`, `once`), the menu and strictness through fw_cfg. Per-device order comes
/// from `bootindex` (fw_cfg `bootorder`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootOptions {
    /// `order=`: drive letters (`a` floppy, `c` disk, `d` CD-ROM, `n` network), at most 3.
    pub order: Option<String>,
    /// `once=`: the order for the first boot only; a reset restores `order`.
    pub once: Option<String>,
    /// `menu=on|off` (fw_cfg `BOOT_MENU`).
    pub menu: bool,
    /// `splash-time=MS` (fw_cfg `etc/boot-menu-wait`).
    pub splash_time: Option<u16>,
    /// `strict=on`: boot only from the `bootindex` devices (`HALT` ends `bootorder`).
    pub strict: bool,
}

/// QEMU's boot device letters (`validate_bootdevices`, then the PC's `set_boot_dev`).
fn parse_boot_devices(option: &str, devices: &str) -> Result<String> {
    let mut seen = Vec::new();
    for c in devices.chars() {
        if !('a'..='p').contains(&c) {
            return Err(invalid(option, format!("Invalid boot device '{c}'")));
        }
        if seen.contains(&c) {
            return Err(invalid(
                option,
                format!("Boot device '{c}' was given twice"),
            ));
        }
        seen.push(c);
    }
    if seen.len() > 3 {
        return Err(invalid(option, "Too many boot devices for PC"));
    }
    if let Some(c) = seen
        .iter()
        .find(|c| !matches!(c, 'a' | 'b' | 'c' | 'd' | 'n'))
    {
        return Err(invalid(
            option,
            format!("Invalid boot device for PC: '{c}'"),
        ));
    }
    Ok(devices.to_owned())
}

/// `-boot [order=]DRIVES,once=DRIVES,menu=on|off,splash-time=MS,reboot-timeout=MS,strict=on|off`.
pub(super) fn parse(config: &mut Config, option: &str, arg: &str) -> Result<()> {
    let kv = opts(option, arg, Some("order"))?;
    let number = |k: &str, v: &str| {
        v.parse::<i64>()
            .map_err(|_| invalid(option, format!("Parameter 'boot.{k}' expects integer")))
    };
    for (k, v) in kv.iter() {
        match k {
            "reboot-timeout" => {
                let ms = number(k, v)?;
                if !(-1..=0xffff).contains(&ms) {
                    return Err(invalid(
                        option,
                        "reboot timeout is invalid,it should be a value between -1 and 65535",
                    ));
                }
                config.reboot_timeout_ms = u32::try_from(ms).ok();
            }
            "splash-time" => {
                let ms = u16::try_from(number(k, v)?).map_err(|_| {
                    invalid(
                        option,
                        "splash-time is invalid,it should be a value between 0 and 65535",
                    )
                })?;
                config.boot.splash_time = Some(ms);
            }
            "order" => config.boot.order = Some(parse_boot_devices(option, v)?),
            "once" => config.boot.once = Some(parse_boot_devices(option, v)?),
            "menu" | "strict" => {
                let on = match v {
                    "on" => true,
                    "off" => false,
                    _ => {
                        return Err(invalid(
                            option,
                            format!("Parameter 'boot.{k}' expects 'on' or 'off'"),
                        ));
                    }
                };
                if k == "menu" {
                    config.boot.menu = on;
                } else {
                    config.boot.strict = on;
                }
            }
            "splash" => {
                return Err(invalid(
                    option,
                    "splash= is not supported: there is no display to show it",
                ));
            }
            _ => {
                return Err(invalid(
                    option,
                    format!("Parameter 'boot.{k}' is unexpected"),
                ));
            }
        }
    }
    Ok(())
}
