//! The machine end to end without any asset: a 64 KiB "firmware" of our own, whose
//! reset vector (the last 16 bytes, at 0xFFFFFFF0) writes to `isa-debug-exit`, runs on
//! a real vCPU; [`Runner::run`] ends with QEMU's debug-exit status. This boots the
//! whole machine: KVM's irqchip and PIT, the GSI routing table, RAM and the ROM slots,
//! the PAM map, the platform devices on the port bus, a vCPU thread, the event channel
//! and the main loop.
//!
//! Skips loudly without `/dev/kvm`.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use kvm_machine::{DebugExitPorts, MachineConfig, Runner, kvm_available};

/// The debug-exit port (QEMU's usual `iobase=0x501`) and the value the program writes.
const PORT: u16 = 0x501;
const VALUE: u8 = 0x2a;

/// A 64 KiB firmware image whose reset vector writes [`VALUE`] to [`PORT`], then halts.
fn firmware() -> Vec<u8> {
    let mut image = vec![0xf4u8; 64 << 10]; // hlt everywhere
    let [lo, hi] = PORT.to_le_bytes();
    let reset_vector = [
        0xba, lo, hi, // mov dx, PORT
        0xb0, VALUE, // mov al, VALUE
        0xee,  // out dx, al
        0xf4,  // hlt
        0xeb, 0xfd, // jmp hlt
    ];
    let at = image.len() - 16;
    image[at..at + reset_vector.len()].copy_from_slice(&reset_vector);
    image
}

#[test]
fn the_reset_vector_runs_and_exits_through_isa_debug_exit() {
    if !kvm_available() {
        eprintln!("SKIPPED kvm-machine boot test: /dev/kvm unavailable");
        return;
    }
    let dir = std::env::temp_dir().join(format!("kvm-machine-boot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bios: PathBuf = dir.join("reset-vector.bin");
    std::fs::write(&bios, firmware()).unwrap();
    let config = MachineConfig {
        ram_bytes: 16 << 20,
        bios,
        debug_exit: Some(DebugExitPorts {
            iobase: PORT,
            iosize: 2,
        }),
        ..MachineConfig::default()
    };

    // The runner owns this thread's main context: run it on a thread of its own, so a
    // hang fails the test at the deadline instead of stalling it.
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let result = Runner::new(&config).map(|runner| runner.run(false));
        let _ = tx.send(result.map_err(|e| e.to_string()));
    });
    let status = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the machine did not exit within 60 s")
        .expect("the machine could not be built");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        status,
        (i32::from(VALUE) << 1) | 1,
        "QEMU's isa-debug-exit status for {VALUE:#x}"
    );
}
