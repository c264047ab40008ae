//! The command line's machine options as `kvm-machine`'s [`MachineConfig`]: the only
//! place where the binary's [`Config`] and the machine's configuration meet.

use kvm_machine::{DebugExitPorts, MachineConfig};

use crate::cli::{Config, SerialBackend};

/// The machine `config` describes (RAM, vCPUs, firmware or kernel, COM1, debug exit,
/// CPUID toggles); with a `-qmp` monitor a vCPU failure stops the VM for the user to
/// inspect instead of ending the process.
pub fn machine_config(config: &Config) -> MachineConfig {
    MachineConfig {
        ram_bytes: config.ram_bytes,
        cpus: config.cpus,
        kernel: config.kernel.clone(),
        initrd: config.initrd.clone(),
        append: config.append.clone(),
        bios: config.bios.clone(),
        nographic: config.nographic,
        serial_stdio: config.serial == SerialBackend::Stdio,
        no_reboot: config.no_reboot,
        stop_on_internal_error: !config.qmp.is_empty(),
        debug_exit: config.debug_exit.map(|d| DebugExitPorts {
            iobase: d.iobase,
            iosize: d.iosize,
        }),
        reboot_timeout_ms: config.reboot_timeout_ms,
        cpu_features: config.cpu_features.clone(),
    }
}
