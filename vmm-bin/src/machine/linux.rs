//! Direct Linux boot: linux-loader puts the kernel (bzImage, or an ELF vmlinux), the
//! initrd, the command line and the zero page into guest RAM; we build identity page
//! tables and a GDT and start the boot vCPU in 64-bit mode at the kernel's 64-bit entry
//! with `rsi` = the zero page (the x86 boot protocol's 64-bit entry, as Firecracker and
//! Cloud Hypervisor do).

use std::fs::File;
use std::path::Path;

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::{BzImage, Cmdline, Elf, KernelLoader, load_cmdline};
use ram_block::RamList;
use vm_memory::{Bytes, GuestAddress};

use super::layout::{E820Type, RamLayout};
use super::vcpu::BootEntry;
use super::{Error, Result};

const HIMEM_START: u64 = 0x10_0000;
const ZERO_PAGE: u64 = 0x7000;
const CMDLINE_START: u64 = 0x2_0000;
const CMDLINE_MAX: usize = 0x1_0000;
const BOOT_STACK: u64 = 0x8ff0;
const GDT_START: u64 = 0x500;
const IDT_START: u64 = 0x520;
const PML4_START: u64 = 0x9000;
const PDPTE_START: u64 = 0xa000;
const PDE_START: u64 = 0xb000;
/// GiB of identity mapping the boot page tables give (2 MiB pages).
const IDENTITY_GIB: u64 = 4;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448;
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x100_0000;

fn boot_err(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Boot(format!("{what}: {e}"))
}

/// Loads `kernel` (and `initrd`, `cmdline`) into `ram` and returns the boot vCPU's
/// entry state.
///
/// # Errors
///
/// [`Error::Boot`] for files that cannot be read, images that are neither bzImage nor
/// ELF, or that do not fit in RAM.
pub(crate) fn load(
    ram: &RamList,
    layout: RamLayout,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<BootEntry> {
    let mem = ram.memory();
    let mut file = File::open(kernel).map_err(|e| boot_err(&kernel.display().to_string(), e))?;
    let himem = Some(GuestAddress(HIMEM_START));
    let (result, entry) = match BzImage::load(&*mem, None, &mut file, himem) {
        Ok(r) => {
            // The 64-bit entry point is 0x200 past the protected-mode kernel.
            let entry = r.kernel_load.0 + 0x200;
            (r, entry)
        }
        Err(bz) => {
            let r = Elf::load(&*mem, None, &mut file, himem).map_err(|elf| {
                boot_err(
                    &kernel.display().to_string(),
                    format!("neither a bzImage ({bz}) nor an ELF kernel ({elf})"),
                )
            })?;
            let entry = r.kernel_load.0;
            (r, entry)
        }
    };

    let mut params = boot_params::default();
    if let Some(hdr) = result.setup_header {
        params.hdr = hdr;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }

    let mut line = Cmdline::new(CMDLINE_MAX).map_err(|e| boot_err("command line", e))?;
    line.insert_str(cmdline)
        .map_err(|e| boot_err("command line", e))?;
    load_cmdline(&*mem, GuestAddress(CMDLINE_START), &line)
        .map_err(|e| boot_err("command line", e))?;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline.len() as u32 + 1;

    if let Some(path) = initrd {
        let data = std::fs::read(path).map_err(|e| boot_err(&path.display().to_string(), e))?;
        let max = match params.hdr.initrd_addr_max {
            0 => 0x37ff_ffff,
            m => u64::from(m),
        };
        let top = layout.below_4g.min(max + 1);
        let size = data.len() as u64;
        let start = top
            .checked_sub(size)
            .map(|s| s & !0xfff)
            .filter(|&s| s >= result.kernel_end)
            .ok_or_else(|| boot_err("initrd", format!("{size} bytes do not fit below {top:#x}")))?;
        mem.write_slice(&data, GuestAddress(start))
            .map_err(|e| boot_err("initrd", e))?;
        params.hdr.ramdisk_image = start as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    let e820 = layout.linux_e820();
    for (slot, e) in params.e820_table.iter_mut().zip(&e820) {
        *slot = boot_e820_entry {
            addr: e.addr,
            size: e.size,
            r#type: match e.kind {
                E820Type::Ram => 1,
                E820Type::Reserved => 2,
            },
        };
    }
    params.e820_entries = e820.len().min(params.e820_table.len()) as u8;
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE)),
        &*mem,
    )
    .map_err(|e| boot_err("zero page", e))?;

    write_page_tables(&mem)?;
    let (code, data, tss) = write_gdt(&mem)?;
    drop(mem);

    let mut sregs = kvm_sregs {
        cs: code,
        ds: data,
        es: data,
        fs: data,
        gs: data,
        ss: data,
        tr: tss,
        ..Default::default()
    };
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = 4 * 8 - 1;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cr3 = PML4_START;
    sregs.cr4 = 1 << 5; // PAE
    sregs.cr0 = 0x8000_0011; // PG | ET | PE
    sregs.efer = (1 << 8) | (1 << 10); // LME | LMA
    sregs.apic_base = 0xfee0_0000 | (1 << 11) | (1 << 8); // enabled, BSP
    sregs.ldt = kvm_segment {
        selector: 0,
        type_: 2,
        present: 1,
        limit: 0xffff,
        ..Default::default()
    };

    let regs = kvm_regs {
        rflags: 2,
        rip: entry,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: ZERO_PAGE,
        ..Default::default()
    };
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    Ok(BootEntry {
        regs,
        sregs,
        fpu,
        // MTRRs on, write-back by default.
        msrs: vec![(0x2ff, (1 << 11) | 6)],
        lint: true,
    })
}

/// Identity maps the first [`IDENTITY_GIB`] GiB with 2 MiB pages.
fn write_page_tables(mem: &ram_block::RamMemory) -> Result<()> {
    let err = |e| boot_err("page tables", e);
    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
        .map_err(err)?;
    for gib in 0..IDENTITY_GIB {
        let pd = PDE_START + gib * 0x1000;
        mem.write_obj(pd | 0x03, GuestAddress(PDPTE_START + gib * 8))
            .map_err(err)?;
        for i in 0..512u64 {
            let page = (gib << 30) | (i << 21) | 0x83; // present, writable, 2 MiB
            mem.write_obj(page, GuestAddress(pd + i * 8)).map_err(err)?;
        }
    }
    Ok(())
}

/// A GDT of null, 64-bit code, data and TSS descriptors; returns the segments.
fn write_gdt(mem: &ram_block::RamMemory) -> Result<(kvm_segment, kvm_segment, kvm_segment)> {
    let table: [u64; 4] = [
        0,
        gdt_entry(0xa09b, 0, 0xfffff), // code: 64-bit, present, execute/read
        gdt_entry(0xc093, 0, 0xfffff), // data: present, read/write
        gdt_entry(0x808b, 0, 0xfffff), // TSS: present, busy
    ];
    for (i, entry) in table.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_START + 8 * i as u64))
            .map_err(|e| boot_err("GDT", e))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(|e| boot_err("IDT", e))?;
    Ok((
        segment(table[1], 1),
        segment(table[2], 2),
        segment(table[3], 3),
    ))
}

fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((u64::from(base) & 0xff00_0000) << (56 - 24))
        | ((u64::from(flags) & 0x0000_f0ff) << 40)
        | ((u64::from(limit) & 0x000f_0000) << (48 - 16))
        | ((u64::from(base) & 0x00ff_ffff) << 16)
        | (u64::from(limit) & 0x0000_ffff)
}

fn segment(entry: u64, index: u16) -> kvm_segment {
    let base = ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000);
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    let g = ((entry >> 55) & 1) as u8;
    kvm_segment {
        base,
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector: index * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: ((entry >> 47) & 1) as u8,
        dpl: ((entry >> 45) & 3) as u8,
        db: ((entry >> 54) & 1) as u8,
        s: ((entry >> 44) & 1) as u8,
        l: ((entry >> 53) & 1) as u8,
        g,
        avl: ((entry >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// LAPIC LINT0 as ExtINT and LINT1 as NMI, so the PIC's interrupts reach the boot CPU
/// before the kernel programs the APIC (Firecracker's `set_lint`).
pub(crate) fn set_lint(fd: &VcpuFd) -> std::result::Result<(), kvm_ioctls::Error> {
    const LVT_LINT0: usize = 0x350;
    const LVT_LINT1: usize = 0x360;
    let mut lapic = fd.get_lapic()?;
    let mut set = |offset: usize, mode: u32| {
        let bytes: &mut [u8] = {
            // SAFETY: `regs` is a plain `[c_char; 1024]`; viewing it as bytes changes
            // nothing but the element type's signedness.
            unsafe {
                std::slice::from_raw_parts_mut(
                    lapic.regs.as_mut_ptr().cast::<u8>(),
                    lapic.regs.len(),
                )
            }
        };
        if let Some(reg) = bytes.get_mut(offset..offset + 4) {
            let old = u32::from_le_bytes([reg[0], reg[1], reg[2], reg[3]]);
            let new = (old & !0x700) | (mode << 8);
            reg.copy_from_slice(&new.to_le_bytes());
        }
    };
    set(LVT_LINT0, 0x7); // ExtINT
    set(LVT_LINT1, 0x4); // NMI
    fd.set_lapic(&lapic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_entries_decode_to_64_bit_segments() {
        let code = segment(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!((code.l, code.db, code.present, code.type_), (1, 0, 1, 0xb));
        assert_eq!(code.limit, 0xffff_ffff);
        assert_eq!(code.selector, 8);
        let data = segment(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!((data.db, data.s, data.type_), (1, 1, 3));
        assert_eq!(gdt_entry(0xa09b, 0, 0xfffff), 0x00af_9b00_0000_ffff);
    }
}
