//! The firmware's boot configuration, as QEMU's `pc` machine gives it to SeaBIOS.

use kvm_machine::Runner;
use pc_platform::fw_cfg::bootorder::BootOrder;
use pc_platform::fw_cfg::keys;
use qemu_opts::BootOptions;

/// QEMU's `-boot` drive letters as the CMOS boot registers 0x3d/0x38 (`set_boot_dev`,
/// with the floppy signature check on, QEMU's default).
fn cmos_boot_registers(devices: &str) -> [u8; 2] {
    let mut nibbles = [0u8; 3];
    for (n, c) in nibbles.iter_mut().zip(devices.chars()) {
        *n = match c {
            'a' | 'b' => 1,
            'c' => 2,
            'd' => 3,
            'n' => 4,
            _ => 0, // refused by the command line
        };
    }
    [nibbles[1] << 4 | nibbles[0], nibbles[2] << 4]
}

/// Tells the firmware how to boot, as QEMU's `pc` machine does: `bootorder` from the
/// devices' `bootindex` (and `HALT` with `strict=on`), `-boot menu=`/`splash-time=`
/// through fw_cfg, `-boot order=`/`once=` through the CMOS boot registers.
pub(crate) fn configure(
    runner: &Runner,
    boot: &BootOptions,
    order: &BootOrder,
) -> Result<(), String> {
    let platform = runner.machine().platform();
    let fw_cfg = &platform.fw_cfg;
    let file = |name: &str, data: Vec<u8>| fw_cfg.add_file(name, data).map(drop);
    file("bootorder", order.file(boot.strict)).map_err(|e| e.to_string())?;
    fw_cfg.add_bytes(keys::BOOT_MENU, u16::from(boot.menu).to_le_bytes().to_vec());
    if let Some(ms) = boot.splash_time {
        file("etc/boot-menu-wait", ms.to_le_bytes().to_vec()).map_err(|e| e.to_string())?;
    }
    // The `pc` machine's default order is "cad".
    let after_reset = cmos_boot_registers(boot.order.as_deref().unwrap_or("cad"));
    let now = boot
        .once
        .as_deref()
        .map_or(after_reset, cmos_boot_registers);
    platform.cmos.set_boot_registers(now, after_reset);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmos_registers_are_qemus() {
        // What QEMU 10 writes (read back by tests/bootsector/bootorder.S).
        assert_eq!(cmos_boot_registers("cad"), [0x12, 0x30]);
        assert_eq!(cmos_boot_registers("ndc"), [0x34, 0x20]);
        assert_eq!(cmos_boot_registers("c"), [0x02, 0x00]);
        assert_eq!(cmos_boot_registers("dn"), [0x43, 0x00]);
    }
}
