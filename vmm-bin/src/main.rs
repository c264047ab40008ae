//! The `vmm-bin` command: a QEMU-compatible VMM, or `vmm-bin storage-daemon ...`.

fn main() {
    eprintln!("vmm-bin: not yet implemented");
    std::process::exit(1);
}
