//! What the machine is built from: the part of a command line the machine itself reads
//! (RAM, vCPUs, firmware or kernel, COM1, debug exit, CPUID toggles, reset behaviour).
//! Disks, monitors and iothreads are the composing binary's business.

use std::path::PathBuf;

/// The default firmware: Debian's SeaBIOS (package `seabios`).
pub const DEFAULT_BIOS: &str = "/usr/share/seabios/bios-256k.bin";

/// The ports of QEMU's `isa-debug-exit` device (`-device isa-debug-exit,iobase=..,iosize=..`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugExitPorts {
    /// First port.
    pub iobase: u16,
    /// Number of ports (1, 2 or 4).
    pub iosize: u16,
}

/// The machine a [`Machine`](crate::Machine) or [`Runner`](crate::Runner) builds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MachineConfig {
    /// Guest RAM in bytes (QEMU's default is 128 MiB).
    pub ram_bytes: u64,
    /// Number of vCPUs (1 to 255).
    pub cpus: u32,
    /// Direct Linux boot (a bzImage, or an ELF vmlinux with or without a PVH note)
    /// instead of the firmware.
    pub kernel: Option<PathBuf>,
    /// The initrd of a direct boot.
    pub initrd: Option<PathBuf>,
    /// The kernel command line of a direct boot.
    pub append: Option<String>,
    /// The firmware image, mapped below 4 GiB (unused with `kernel`).
    pub bios: PathBuf,
    /// QEMU's `-nographic` (fw_cfg's `NOGRAPHIC`).
    pub nographic: bool,
    /// COM1 on the process's stdin/stdout (`-serial stdio`); otherwise COM1 writes go
    /// nowhere and nothing is read.
    pub serial_stdio: bool,
    /// A guest reset ends the VM instead (`-no-reboot`).
    pub no_reboot: bool,
    /// Where a vCPU failure stops the VM (for a monitor to inspect) instead of ending
    /// [`Runner::run`](crate::Runner::run) with status 1.
    pub stop_on_internal_error: bool,
    /// An `isa-debug-exit` device at these ports.
    pub debug_exit: Option<DebugExitPorts>,
    /// How long SeaBIOS waits before rebooting after a boot failure (`None`: forever).
    pub reboot_timeout_ms: Option<u32>,
    /// CPUID flags to keep or clear, by QEMU's names ([`cpuid::FEATURES`](crate::cpuid::FEATURES)),
    /// applied in order.
    pub cpu_features: Vec<(String, bool)>,
}

impl Default for MachineConfig {
    fn default() -> MachineConfig {
        MachineConfig {
            ram_bytes: 128 << 20,
            cpus: 1,
            kernel: None,
            initrd: None,
            append: None,
            bios: PathBuf::from(DEFAULT_BIOS),
            nographic: false,
            serial_stdio: false,
            no_reboot: false,
            stop_on_internal_error: false,
            debug_exit: None,
            reboot_timeout_ms: None,
            cpu_features: Vec::new(),
        }
    }
}
