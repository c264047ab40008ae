//! Values as QEMU spells them: booleans, numbers and sizes.

/// QEMU's boolean spellings (`qapi_bool_parse`): `on`, `yes`, `true`, `y` and `off`,
/// `no`, `false`, `n`; anything else is `None`.
///
/// ```
/// assert_eq!(qemu_opts::parse_bool("on"), Some(true));
/// assert_eq!(qemu_opts::parse_bool("no"), Some(false));
/// assert_eq!(qemu_opts::parse_bool("maybe"), None);
/// ```
pub fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "on" | "yes" | "true" | "y" => Some(true),
        "off" | "no" | "false" | "n" => Some(false),
        _ => None,
    }
}

/// An unsigned number in decimal or `0x` hex (QEMU also reads a leading `0` as octal;
/// we read it as decimal, as this project always has).
///
/// ```
/// assert_eq!(qemu_opts::parse_number("0xf4"), Some(0xf4));
/// assert_eq!(qemu_opts::parse_number("42"), Some(42));
/// assert_eq!(qemu_opts::parse_number("-1"), None);
/// ```
pub fn parse_number(text: &str) -> Option<u64> {
    match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => text.parse().ok(),
    }
}

/// The unit of a size written without a suffix: bytes for most keys, MiB for `-m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeUnit {
    /// Bytes (QEMU's `qemu_strtosz`).
    Bytes,
    /// KiB.
    KiB,
    /// MiB (QEMU's `qemu_strtosz_MiB`, used by `-m`).
    MiB,
    /// GiB.
    GiB,
}

impl SizeUnit {
    fn shift(self) -> u32 {
        match self {
            SizeUnit::Bytes => 0,
            SizeUnit::KiB => 10,
            SizeUnit::MiB => 20,
            SizeUnit::GiB => 30,
        }
    }
}

/// A size: a number, optionally with a fraction of up to 6 digits (`1.5G`), and an
/// optional suffix `B`, `K`, `M`, `G`, `T`, `P` or `E` (any case, with or without a
/// trailing `B` or `iB`: `MB`, `MiB`), powers of 1024 as in QEMU. Without a suffix the
/// number is in `unit`. Surrounding whitespace is ignored; an overflow is `None`.
///
/// ```
/// use qemu_opts::{SizeUnit, parse_size};
/// assert_eq!(parse_size("512", SizeUnit::MiB), Some(512 << 20));
/// assert_eq!(parse_size("1.5G", SizeUnit::Bytes), Some(3 << 29));
/// assert_eq!(parse_size("4096k", SizeUnit::Bytes), Some(4 << 20));
/// assert_eq!(parse_size("lots", SizeUnit::MiB), None);
/// ```
pub fn parse_size(text: &str, unit: SizeUnit) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let shift = match suffix.to_ascii_uppercase().as_str() {
        "" => unit.shift(),
        "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        "P" | "PB" | "PIB" => 50,
        "E" | "EB" | "EIB" => 60,
        _ => return None,
    };
    if let Some((int, frac)) = number.split_once('.') {
        // "1.5G": exact for the fractions people write.
        let int: u64 = int.parse().ok()?;
        let digits = u32::try_from(frac.len())
            .ok()
            .filter(|&d| d > 0 && d <= 6)?;
        let frac: u64 = frac.parse().ok()?;
        let scale = 10u64.pow(digits);
        let whole = int.checked_mul(scale)?.checked_add(frac)?;
        // The product may pass 2^64 even when the size does not (1.5E): use 128 bits.
        let bytes = u128::from(whole).checked_mul(1u128 << shift)? / u128::from(scale);
        return u64::try_from(bytes).ok();
    }
    number.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_qemus_suffixes() {
        let mib = |t| parse_size(t, SizeUnit::MiB);
        assert_eq!(mib("512"), Some(512 << 20));
        assert_eq!(mib("512M"), Some(512 << 20));
        assert_eq!(mib("512MiB"), Some(512 << 20));
        assert_eq!(mib("2G"), Some(2 << 30));
        assert_eq!(mib("1.5G"), Some(3 << 29));
        assert_eq!(mib("4096k"), Some(4 << 20));
        assert_eq!(mib("1P"), Some(1 << 50));
        assert_eq!(mib("1.5E"), Some(3 << 59));
        assert_eq!(mib("16E"), None);
        assert_eq!(mib("100B"), Some(100));
        assert_eq!(mib(" 8 "), Some(8 << 20));
        assert_eq!(parse_size("8", SizeUnit::Bytes), Some(8));
        assert_eq!(parse_size("8", SizeUnit::KiB), Some(8 << 10));
        assert_eq!(parse_size("8", SizeUnit::GiB), Some(8 << 30));
        for bad in [
            "x",
            "-1",
            "",
            ".",
            "1.",
            "1.1234567G",
            "1.2.3",
            "99999999999999999999T",
            "18446744073709551615G",
            "1Q",
        ] {
            assert_eq!(mib(bad), None, "{bad}");
        }
    }

    #[test]
    fn numbers_and_booleans() {
        assert_eq!(parse_number("0X10"), Some(16));
        assert_eq!(parse_number("0x"), None);
        assert_eq!(parse_number(""), None);
        assert_eq!(parse_number("18446744073709551616"), None);
        for t in ["on", "yes", "true", "y"] {
            assert_eq!(parse_bool(t), Some(true));
        }
        for f in ["off", "no", "false", "n"] {
            assert_eq!(parse_bool(f), Some(false));
        }
        assert_eq!(parse_bool("ON"), None, "QEMU's spellings are lower case");
    }
}
