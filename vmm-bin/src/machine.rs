//! The machine the command line describes, as `kvm-machine` builds it: the parsed
//! [`MachineConfig`] with what other options imply (a `-qmp` monitor keeps a failed VM).

use kvm_machine::MachineConfig;

use crate::cli::Config;

/// The machine `config` describes (RAM, vCPUs, firmware or kernel, COM1, debug exit,
/// CPUID toggles); with a `-qmp` monitor a vCPU failure stops the VM for the user to
/// inspect instead of ending the process.
pub fn machine_config(config: &Config) -> MachineConfig {
    MachineConfig {
        stop_on_internal_error: !config.qmp.is_empty(),
        ..config.machine.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_machine::DebugExitPorts;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(str::to_owned).collect()
    }

    /// The machine gets what the command line says, and only a `-qmp` monitor keeps a
    /// failed vCPU's VM around (stopped) instead of ending the process.
    #[test]
    fn the_command_line_maps_onto_the_machine() {
        let config = crate::cli::parse(args(
            "-m 256 -smp 2 -nographic -no-reboot -cpu host,-pdpe1gb \
             -device isa-debug-exit,iobase=0xf4,iosize=0x04 -boot reboot-timeout=100",
        ))
        .unwrap();
        let machine = machine_config(&config);
        assert_eq!(machine.ram_bytes, 256 << 20);
        assert_eq!(machine.cpus, 2);
        assert!(machine.nographic && machine.serial_stdio && machine.no_reboot);
        assert!(!machine.stop_on_internal_error);
        assert_eq!(
            machine.debug_exit,
            Some(DebugExitPorts {
                iobase: 0xf4,
                iosize: 4
            })
        );
        assert_eq!(machine.reboot_timeout_ms, Some(100));
        assert_eq!(machine.cpu_features, vec![("pdpe1gb".to_owned(), false)]);
        assert_eq!(machine.bios, config.machine.bios);

        let monitored = crate::cli::parse(args("-qmp unix:/tmp/q.sock,server=on,wait=off"));
        let machine = machine_config(&monitored.unwrap());
        assert!(machine.stop_on_internal_error && !machine.serial_stdio);
    }
}
