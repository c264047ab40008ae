//! Direct boot through the PVH entry: our own ELF program (tests/pvh/startinfo.S, with a
//! `XEN_ELFNOTE_PHYS32_ENTRY` note like Linux's vmlinux) is loaded by `-kernel`, starts
//! in 32-bit protected mode with `%ebx` = the `hvm_start_info`, and prints everything it
//! was handed — mode, magic, command line, the memory map, the initrd module, the MP
//! table's CPU count and checksums — for this test to compare with what it passed.
//!
//! Skips loudly without `/dev/kvm` or binutils.

mod common;

use std::time::Duration;

use common::{Vm, assemble_pvh, kvm_or_skip};

fn skip(why: &str) {
    eprintln!("SKIPPED pvh_boot: {why}");
}

/// The value after `key=` on the line that starts with `key=`.
fn field<'a>(out: &'a str, key: &str) -> &'a str {
    let prefix = format!("{key}=");
    out.lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {key}= in:\n{out}"))
}

#[test]
fn pvh_entry_gets_start_info_memory_map_initrd_and_mp_table() {
    if !kvm_or_skip("pvh_boot") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let Some(elf) = assemble_pvh(dir.path(), "startinfo", skip) else {
        return;
    };
    let initrd = dir.path().join("initrd");
    let mut data = b"INIT".to_vec();
    data.resize(10_000, 0xa5);
    std::fs::write(&initrd, &data).unwrap();
    let cmdline = "console=ttyS0 pvh-check token=42";

    let mut vm = Vm::start(&[
        "-nographic",
        "-m",
        "128",
        "-smp",
        "3",
        "-kernel",
        elf.to_str().unwrap(),
        "-initrd",
        initrd.to_str().unwrap(),
        "-append",
        cmdline,
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x04",
    ]);
    let status = vm.wait_exit(Duration::from_secs(60));
    let out = vm.seen.replace('\r', "");
    eprintln!("guest output:\n{out}");
    assert_eq!(status.and_then(|s| s.code()), Some(33), "{out}");
    assert!(out.contains("END"), "{out}");

    let cr0 = u32::from_str_radix(field(&out, "cr0"), 16).unwrap();
    assert_eq!(cr0 & 1, 1, "protected mode");
    assert_eq!(cr0 >> 31, 0, "paging off");
    assert_eq!(field(&out, "magic"), "336ec578 version=00000001");
    assert_eq!(field(&out, "cmdline"), cmdline);

    // 128 MiB: conventional RAM to the EBDA, the BIOS area reserved, RAM from 1 MiB.
    assert_eq!(field(&out, "memmap"), "00000003");
    let e820: Vec<&str> = out.lines().filter(|l| l.starts_with("e820 ")).collect();
    assert_eq!(
        e820,
        [
            "e820 0000000000000000 000000000009fc00 00000001",
            "e820 000000000009fc00 0000000000060400 00000002",
            "e820 0000000000100000 0000000007f00000 00000001",
        ]
    );

    assert_eq!(field(&out, "modules"), "00000001");
    let module = out
        .lines()
        .find_map(|l| l.strip_prefix("module "))
        .expect("a module line");
    let parts: Vec<&str> = module.split(' ').collect();
    let paddr = u64::from_str_radix(parts[0], 16).unwrap();
    assert_eq!(paddr % 4096, 0, "page aligned");
    assert!(paddr + data.len() as u64 <= 128 << 20 && paddr >= 0x10_0000);
    assert_eq!(
        u64::from_str_radix(parts[1], 16).unwrap(),
        data.len() as u64
    );
    assert_eq!(parts[2], format!("{:08x}", u32::from_le_bytes(*b"INIT")));

    assert_eq!(field(&out, "mp"), "000f0000");
    assert_eq!(field(&out, "mpcpus"), "00000003 mpsum=00000001");
}
