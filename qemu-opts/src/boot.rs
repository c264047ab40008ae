//! `-boot [order=]DRIVES,once=DRIVES,menu=on|off,splash-time=MS,reboot-timeout=MS,strict=on|off`:
//! QEMU's keys, checks and messages (`qemu_boot_set`/`validate_bootdevices`, and the
//! `pc` machine's `set_boot_dev` limits on the drive letters).

use crate::{Error, Grammar, Opts, Result};

/// `-boot` as QEMU's `pc` machine reads it: the device classes (for the CMOS boot
/// registers), the menu, the strictness and the timeouts (for the firmware). Per-device
/// order comes from `bootindex`, not from here.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BootOptions {
    /// `order=`: drive letters (`a` floppy, `c` disk, `d` CD-ROM, `n` network), at most 3.
    pub order: Option<String>,
    /// `once=`: the order for the first boot only; a reset restores `order`.
    pub once: Option<String>,
    /// `menu=on|off`.
    pub menu: bool,
    /// `splash-time=MS`: how long the menu waits.
    pub splash_time: Option<u16>,
    /// `strict=on`: boot only from the `bootindex` devices.
    pub strict: bool,
    /// `reboot-timeout=MS`: how long the firmware waits before rebooting after a boot
    /// failure (`None`: forever, QEMU's default and `-1`).
    pub reboot_timeout_ms: Option<u32>,
}

impl BootOptions {
    /// Applies one `-boot` argument (`option` names it in errors); keys it does not
    /// give keep their values, as a second `-boot` does in QEMU.
    ///
    /// # Errors
    ///
    /// QEMU's messages (`Invalid boot device 'z'`, `Parameter 'boot.menu' expects 'on'
    /// or 'off'`, ...) as [`Error::Invalid`], or the grammar's own errors.
    ///
    /// ```
    /// use qemu_opts::BootOptions;
    ///
    /// let mut boot = BootOptions::default();
    /// boot.apply("-boot", "dc,menu=on,reboot-timeout=0")?;
    /// assert_eq!(boot.order.as_deref(), Some("dc"));
    /// assert!(boot.menu);
    /// assert_eq!(boot.reboot_timeout_ms, Some(0));
    /// let e = boot.apply("-boot", "order=cc").unwrap_err();
    /// assert_eq!(e.reason(), "Boot device 'c' was given twice");
    /// # Ok::<(), qemu_opts::Error>(())
    /// ```
    pub fn apply(&mut self, option: &str, arg: &str) -> Result<()> {
        let invalid = |message: String| Error::Invalid {
            option: option.to_owned(),
            message,
        };
        let kv = Opts::parse(option, arg, Grammar::opts().implied("order"))?;
        let number = |k: &str, v: &str| {
            v.parse::<i64>()
                .map_err(|_| invalid(format!("Parameter 'boot.{k}' expects integer")))
        };
        for (k, v) in kv.iter() {
            match k {
                "reboot-timeout" => {
                    let ms = number(k, v)?;
                    if !(-1..=0xffff).contains(&ms) {
                        return Err(invalid(
                            "reboot timeout is invalid,it should be a value between -1 and 65535"
                                .into(),
                        ));
                    }
                    self.reboot_timeout_ms = u32::try_from(ms).ok();
                }
                "splash-time" => {
                    let ms = u16::try_from(number(k, v)?).map_err(|_| {
                        invalid(
                            "splash-time is invalid,it should be a value between 0 and 65535"
                                .into(),
                        )
                    })?;
                    self.splash_time = Some(ms);
                }
                "order" => self.order = Some(boot_devices(option, v)?),
                "once" => self.once = Some(boot_devices(option, v)?),
                "menu" | "strict" => {
                    let on = match v {
                        "on" => true,
                        "off" => false,
                        _ => {
                            return Err(invalid(format!(
                                "Parameter 'boot.{k}' expects 'on' or 'off'"
                            )));
                        }
                    };
                    if k == "menu" {
                        self.menu = on;
                    } else {
                        self.strict = on;
                    }
                }
                "splash" => {
                    return Err(invalid(
                        "splash= is not supported: there is no display to show it".into(),
                    ));
                }
                _ => return Err(invalid(format!("Parameter 'boot.{k}' is unexpected"))),
            }
        }
        Ok(())
    }
}

/// QEMU's boot device letters (`validate_bootdevices`, then the PC's `set_boot_dev`).
fn boot_devices(option: &str, devices: &str) -> Result<String> {
    let invalid = |message: String| Error::Invalid {
        option: option.to_owned(),
        message,
    };
    let mut seen = Vec::new();
    for c in devices.chars() {
        if !('a'..='p').contains(&c) {
            return Err(invalid(format!("Invalid boot device '{c}'")));
        }
        if seen.contains(&c) {
            return Err(invalid(format!("Boot device '{c}' was given twice")));
        }
        seen.push(c);
    }
    if seen.len() > 3 {
        return Err(invalid("Too many boot devices for PC".into()));
    }
    if let Some(c) = seen
        .iter()
        .find(|c| !matches!(c, 'a' | 'b' | 'c' | 'd' | 'n'))
    {
        return Err(invalid(format!("Invalid boot device for PC: '{c}'")));
    }
    Ok(devices.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_options_follow_qemu() {
        let mut b = BootOptions::default();
        b.apply("-boot", "order=dn,once=c,menu=on,splash-time=500,strict=on")
            .unwrap();
        assert_eq!(
            b,
            BootOptions {
                order: Some("dn".into()),
                once: Some("c".into()),
                menu: true,
                splash_time: Some(500),
                strict: true,
                reboot_timeout_ms: None,
            }
        );
        // A second -boot changes only what it names.
        b.apply("-boot", "cd,reboot-timeout=-1").unwrap();
        assert_eq!(b.order.as_deref(), Some("cd"));
        assert!(b.menu);
        assert_eq!(b.reboot_timeout_ms, None);
        b.apply("-boot", "reboot-timeout=0").unwrap();
        assert_eq!(b.reboot_timeout_ms, Some(0));
    }

    #[test]
    fn qemus_errors_in_qemus_words() {
        let err = |arg: &str| {
            BootOptions::default()
                .apply("-boot", arg)
                .unwrap_err()
                .reason()
        };
        let cases = [
            ("order=z", "Invalid boot device 'z'"),
            ("order=cc", "Boot device 'c' was given twice"),
            ("once=cdna", "Too many boot devices for PC"),
            ("order=e", "Invalid boot device for PC: 'e'"),
            ("menu=maybe", "Parameter 'boot.menu' expects 'on' or 'off'"),
            (
                "strict=yes",
                "Parameter 'boot.strict' expects 'on' or 'off'",
            ),
            ("foo=1", "Parameter 'boot.foo' is unexpected"),
            (
                "splash-time=x",
                "Parameter 'boot.splash-time' expects integer",
            ),
            (
                "splash-time=70000",
                "splash-time is invalid,it should be a value between 0 and 65535",
            ),
            (
                "reboot-timeout=70000",
                "reboot timeout is invalid,it should be a value between -1 and 65535",
            ),
            (
                "reboot-timeout=soon",
                "Parameter 'boot.reboot-timeout' expects integer",
            ),
            (
                "splash=logo.jpg",
                "splash= is not supported: there is no display to show it",
            ),
        ];
        for (arg, want) in cases {
            assert_eq!(err(arg), want, "{arg}");
        }
    }
}
