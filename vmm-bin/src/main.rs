//! The `vmm-bin` command: a QEMU-compatible VMM, or `vmm-bin storage-daemon ...`.

use vmm_bin::cli;
use vmm_bin::machine::{Runner, kvm_available};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("storage-daemon") {
        std::process::exit(vmm_bin::storage_daemon::main(&args[1..]));
    }
    if args
        .iter()
        .any(|a| matches!(a.as_str(), "-help" | "--help" | "-h"))
    {
        print!("{}", cli::USAGE);
        return;
    }
    let config = match cli::parse(args) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("vmm-bin: {e}");
            std::process::exit(1);
        }
    };
    if let Some(reason) = unsupported(&config) {
        eprintln!("vmm-bin: {reason}");
        std::process::exit(1);
    }
    if !kvm_available() {
        eprintln!("vmm-bin: /dev/kvm is not available");
        std::process::exit(1);
    }
    let runner = match Runner::new(&config) {
        Ok(runner) => runner,
        Err(e) => {
            eprintln!("vmm-bin: {e}");
            std::process::exit(1);
        }
    };
    let disks = match vmm_bin::disks::attach(&runner, &config) {
        Ok(disks) => disks,
        Err(e) => {
            eprintln!("vmm-bin: {e}");
            std::process::exit(1);
        }
    };
    let _monitor = match vmm_bin::vm_monitor::attach(&runner, &config, &disks) {
        Ok(monitor) => monitor,
        Err(e) => {
            eprintln!("vmm-bin: {e}");
            std::process::exit(1);
        }
    };
    let status = runner.run(config.start_paused);
    // Removes the QMP socket file.
    drop(_monitor);
    std::process::exit(status);
}

/// Options the command line accepts that the machine cannot honour yet.
fn unsupported(_config: &cli::Config) -> Option<String> {
    None
}
