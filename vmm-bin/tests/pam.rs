//! The i440FX PAM registers drive the BIOS shadow area, as on QEMU: SeaBIOS boots our
//! boot sector (`tests/bootsector/pamtest.S`) from a virtio-blk disk, and the program
//! finds 0xF0000 write-protected by the firmware through PAM, makes it writable, sees
//! the ROM alias again with PAM0 = 0, and the empty PCI space at 0xDC000; it prints
//! PASS. Then it plants an exit trap over the POST entry point in the shadow RAM, and a
//! QMP `system_reset` must bring the ROM back (PAM registers 0): the firmware boots the
//! sector a second time instead of running the trap (isa-debug-exit status 37).
//!
//! Guards against the old memory map (0xE0000-0xFFFFF plain RAM, PAM registers only
//! stored): step 1 fails there. Skips loudly without /dev/kvm (or its read-only
//! memory slots), SeaBIOS, or binutils.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn skip(why: &str) {
    eprintln!("SKIPPED pam: {why}");
}

/// Waits until `log` holds `count` READY lines (or a FAIL, or the VMM exits).
fn wait_ready(vm: &mut Child, log: &Path, count: usize) -> Result<String, String> {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let serial = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
        if serial.matches("READY").count() >= count {
            return Ok(serial);
        }
        if serial.contains("FAIL") {
            return Err(format!("the boot sector failed; serial:\n{serial}"));
        }
        if let Some(status) = vm.try_wait().unwrap() {
            let why = match status.code() {
                Some(37) => ": after the reset the CPU ran the shadow RAM, not the ROM",
                _ => "",
            };
            return Err(format!("the VMM exited ({status}){why}; serial:\n{serial}"));
        }
        if Instant::now() > deadline {
            return Err(format!("no READY #{count} within 90 s; serial:\n{serial}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends one QMP command and returns the reply line (events before it are skipped).
fn qmp(stream: &mut UnixStream, reader: &mut impl BufRead, command: &str) -> String {
    writeln!(stream, "{{\"execute\": \"{command}\"}}").unwrap();
    loop {
        let mut line = String::new();
        assert_ne!(reader.read_line(&mut line).unwrap(), 0, "QMP closed");
        if line.contains("\"return\"") || line.contains("\"error\"") {
            return line;
        }
    }
}

#[test]
fn pam_registers_remap_the_bios_area_and_reset_restores_the_rom() {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        return skip("/dev/kvm is not available");
    }
    // Without read-only slots the machine keeps mode 1 (and the ROM alias) writable;
    // the guest-visible checks below assume KVM has them (every x86 KVM since 3.16).
    let readonly_mem =
        kvm_ioctls::Kvm::new().is_ok_and(|kvm| kvm.check_extension(kvm_ioctls::Cap::ReadonlyMem));
    if !readonly_mem {
        return skip("KVM lacks KVM_CAP_READONLY_MEM: PAM's read-only modes stay writable");
    }
    if !Path::new("/usr/share/seabios/bios-256k.bin").exists() {
        return skip("/usr/share/seabios/bios-256k.bin is missing (apt-get install seabios)");
    }
    let dir: PathBuf =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("pam-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(boot) = common::assemble_boot_sector(&dir, "pamtest", skip) else {
        return;
    };
    let image = dir.join("pamtest.img");
    let mut disk = boot;
    disk.resize(1 << 20, 0);
    std::fs::write(&image, disk).unwrap();
    let sock = dir.join("qmp.sock");
    let log = dir.join("serial.log");
    let mut vm = Command::new(env!("CARGO_BIN_EXE_vmm-bin"))
        .args(["-nographic", "-m", "128"])
        .arg("-drive")
        .arg(format!("file={},format=raw,if=none,id=d0", image.display()))
        .args(["-device", "virtio-blk-pci,drive=d0,bootindex=1"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", sock.display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let first = wait_ready(&mut vm, &log, 1);
    let second = first.and_then(|serial| {
        assert!(serial.contains("PASS"), "serial:\n{serial}");
        let mut stream = UnixStream::connect(&sock).expect("QMP socket");
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let mut greeting = String::new();
        reader.read_line(&mut greeting).unwrap();
        assert!(greeting.contains("QMP"), "{greeting}");
        qmp(&mut stream, &mut reader, "qmp_capabilities");
        let reply = qmp(&mut stream, &mut reader, "system_reset");
        assert!(reply.contains("\"return\""), "{reply}");
        let serial = wait_ready(&mut vm, &log, 2)?;
        qmp(&mut stream, &mut reader, "quit");
        Ok(serial)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = vm.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            let _ = vm.kill();
            let _ = vm.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = vm
        .stderr
        .take()
        .map(|mut e| {
            let mut s = String::new();
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
            s
        })
        .unwrap_or_default();
    let _ = std::fs::remove_dir_all(&dir);
    let serial = second.unwrap_or_else(|e| panic!("{e}\nstderr:\n{stderr}"));
    assert_eq!(serial.matches("PASS").count(), 2, "serial:\n{serial}");
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "quit ends the VMM; stderr:\n{stderr}"
    );
}
