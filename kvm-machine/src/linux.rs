//! Direct Linux boot through linux-loader, with either entry protocol Linux offers:
//!
//! - **64-bit boot protocol** (a bzImage, or an ELF vmlinux without a PVH note): the
//!   kernel, initrd, command line and zero page go into guest RAM; we build identity page
//!   tables and a GDT and start the boot vCPU in 64-bit mode at the kernel's 64-bit entry
//!   with `rsi` = the zero page (as Firecracker and Cloud Hypervisor do).
//! - **PVH** (an ELF vmlinux whose `XEN_ELFNOTE_PHYS32_ENTRY` note names a 32-bit entry):
//!   an `hvm_start_info` with the command line, the e820 map and the initrd as module 0;
//!   the boot vCPU starts in flat 32-bit protected mode, paging off, at that entry with
//!   `ebx` = the start info (xen/include/public/arch-x86/hvm/start_info.h).
//!
//! Both get the same e820 map ([`RamLayout::linux_e820`]).

use std::fs::File;
use std::path::Path;

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use kvm_ioctls::VcpuFd;
use linux_loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::elf::PvhBootCapability;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{BzImage, Cmdline, Elf, KernelLoader, load_cmdline};
use ram_block::RamList;
use vm_memory::{Bytes, GuestAddress};

use super::layout::{E820Entry, E820Type, RamLayout};
use super::vcpu::BootEntry;
use super::{Error, Result};

const HIMEM_START: u64 = 0x10_0000;
const ZERO_PAGE: u64 = 0x7000;
/// PVH: the start info, then the module list right after it.
const PVH_START_INFO: u64 = 0x6000;
const PVH_MODLIST: u64 = 0x6100;
/// PVH: the memory map (where the zero page would be: one or the other is used).
const PVH_MEMMAP: u64 = ZERO_PAGE;
/// `hvm_start_info.magic`.
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
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
/// The highest initrd address a kernel accepts when its header does not say
/// (`initrd_addr_max`'s historical default).
const INITRD_ADDR_MAX: u64 = 0x37ff_ffff;

fn boot_err(what: &str, e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
    Error::Boot {
        what: what.to_string(),
        source: e.into(),
    }
}

/// Which entry protocol the loaded kernel uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// The 64-bit boot protocol at this entry (zero page in `rsi`).
    Linux64(u64),
    /// The PVH 32-bit entry (start info in `ebx`).
    Pvh(u64),
}

/// Loads `kernel` (and `initrd`, `cmdline`) into `ram` and returns the boot vCPU's
/// entry state. `cpus` vCPUs are described to the kernel (MP table).
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
    cpus: u32,
) -> Result<BootEntry> {
    let mem = ram.memory();
    let mut file = File::open(kernel).map_err(|e| boot_err(&kernel.display().to_string(), e))?;
    let himem = Some(GuestAddress(HIMEM_START));
    let (result, protocol) = match BzImage::load(&*mem, None, &mut file, himem) {
        Ok(r) => {
            // The 64-bit entry point is 0x200 past the protected-mode kernel.
            let entry = r.kernel_load.0 + 0x200;
            (r, Protocol::Linux64(entry))
        }
        Err(bz) => {
            let r = Elf::load(&*mem, None, &mut file, himem).map_err(|elf| {
                boot_err(
                    &kernel.display().to_string(),
                    format!("neither a bzImage ({bz}) nor an ELF kernel ({elf})"),
                )
            })?;
            let protocol = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(entry) => Protocol::Pvh(entry.0),
                _ => Protocol::Linux64(r.kernel_load.0),
            };
            (r, protocol)
        }
    };

    let mut line = Cmdline::new(CMDLINE_MAX).map_err(|e| boot_err("command line", e))?;
    line.insert_str(cmdline)
        .map_err(|e| boot_err("command line", e))?;
    load_cmdline(&*mem, GuestAddress(CMDLINE_START), &line)
        .map_err(|e| boot_err("command line", e))?;

    let initrd_max = match result.setup_header.map(|h| h.initrd_addr_max) {
        Some(m) if m != 0 => u64::from(m),
        _ => INITRD_ADDR_MAX,
    };
    let initrd = match initrd {
        Some(path) => Some(load_initrd(
            &mem,
            path,
            layout.below_4g.min(initrd_max + 1),
            result.kernel_end,
        )?),
        None => None,
    };
    let e820 = layout.linux_e820();
    super::mptable::write(&mem, cpus).map_err(|e| boot_err("MP table", e))?;

    let entry = match protocol {
        Protocol::Linux64(entry) => {
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
            params.hdr.cmd_line_ptr = CMDLINE_START as u32;
            params.hdr.cmdline_size = cmdline.len() as u32 + 1;
            if let Some((start, size)) = initrd {
                params.hdr.ramdisk_image = start as u32;
                params.hdr.ramdisk_size = size as u32;
            }
            for (slot, e) in params.e820_table.iter_mut().zip(&e820) {
                *slot = boot_e820_entry {
                    addr: e.addr,
                    size: e.size,
                    r#type: e820_type(e),
                };
            }
            params.e820_entries = e820.len().min(params.e820_table.len()) as u8;
            LinuxBootConfigurator::write_bootparams(
                &BootParams::new(&params, GuestAddress(ZERO_PAGE)),
                &*mem,
            )
            .map_err(|e| boot_err("zero page", e))?;
            write_page_tables(&mem)?;
            long_mode_entry(&mem, entry)?
        }
        Protocol::Pvh(entry) => {
            write_start_info(&mem, &e820, initrd)?;
            pvh_entry(&mem, entry)?
        }
    };
    Ok(entry)
}

fn e820_type(e: &E820Entry) -> u32 {
    match e.kind {
        E820Type::Ram => 1,
        E820Type::Reserved => 2,
    }
}

/// Reads `path` into RAM, page aligned, as high as possible below `top` and above the
/// kernel; returns `(start, size)`.
fn load_initrd(
    mem: &ram_block::RamMemory,
    path: &Path,
    top: u64,
    kernel_end: u64,
) -> Result<(u64, u64)> {
    let data = std::fs::read(path).map_err(|e| boot_err(&path.display().to_string(), e))?;
    let size = data.len() as u64;
    let start = top
        .checked_sub(size)
        .map(|s| s & !0xfff)
        .filter(|&s| s >= kernel_end)
        .ok_or_else(|| boot_err("initrd", format!("{size} bytes do not fit below {top:#x}")))?;
    mem.write_slice(&data, GuestAddress(start))
        .map_err(|e| boot_err("initrd", e))?;
    Ok((start, size))
}

/// Writes the PVH start info, its memory map and (with an initrd) the module list.
fn write_start_info(
    mem: &ram_block::RamMemory,
    e820: &[E820Entry],
    initrd: Option<(u64, u64)>,
) -> Result<()> {
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP,
        memmap_entries: e820.len() as u32,
        ..Default::default()
    };
    let memmap: Vec<hvm_memmap_table_entry> = e820
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e820_type(e),
            reserved: 0,
        })
        .collect();
    let mut params = BootParams::new(&info, GuestAddress(PVH_START_INFO));
    if let Some((paddr, size)) = initrd {
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST;
        params = BootParams::new(&info, GuestAddress(PVH_START_INFO));
        params.set_modules(
            &[hvm_modlist_entry {
                paddr,
                size,
                ..Default::default()
            }],
            GuestAddress(PVH_MODLIST),
        );
    }
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP));
    PvhBootConfigurator::write_bootparams(&params, &**mem)
        .map_err(|e| boot_err("PVH start info", e))
}

/// The boot vCPU in 64-bit mode at `entry`, `rsi` = the zero page.
fn long_mode_entry(mem: &ram_block::RamMemory, entry: u64) -> Result<BootEntry> {
    let (code, data, tss) = write_gdt(mem, 0xa09b)?;
    let mut sregs = flat_sregs(code, data, tss);
    sregs.cr3 = PML4_START;
    sregs.cr4 = 1 << 5; // PAE
    sregs.cr0 = 0x8000_0011; // PG | ET | PE
    sregs.efer = (1 << 8) | (1 << 10); // LME | LMA
    let regs = kvm_regs {
        rflags: 2,
        rip: entry,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: ZERO_PAGE,
        ..Default::default()
    };
    Ok(boot_entry(regs, sregs))
}

/// The boot vCPU in flat 32-bit protected mode, paging off, at `entry`, `ebx` = the
/// start info (the PVH entry state).
fn pvh_entry(mem: &ram_block::RamMemory, entry: u64) -> Result<BootEntry> {
    let (code, data, tss) = write_gdt(mem, 0xc09b)?;
    let mut sregs = flat_sregs(code, data, tss);
    sregs.cr0 = 0x11; // ET | PE
    sregs.cr4 = 0;
    sregs.efer = 0;
    let regs = kvm_regs {
        rflags: 2,
        rip: entry,
        rbx: PVH_START_INFO,
        ..Default::default()
    };
    Ok(boot_entry(regs, sregs))
}

fn flat_sregs(code: kvm_segment, data: kvm_segment, tss: kvm_segment) -> kvm_sregs {
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
    sregs.apic_base = 0xfee0_0000 | (1 << 11) | (1 << 8); // enabled, BSP
    sregs.ldt = kvm_segment {
        selector: 0,
        type_: 2,
        present: 1,
        limit: 0xffff,
        ..Default::default()
    };
    sregs
}

fn boot_entry(regs: kvm_regs, sregs: kvm_sregs) -> BootEntry {
    BootEntry {
        regs,
        sregs,
        fpu: kvm_fpu {
            fcw: 0x37f,
            mxcsr: 0x1f80,
            ..Default::default()
        },
        // MTRRs on, write-back by default.
        msrs: vec![(0x2ff, (1 << 11) | 6)],
        lint: true,
    }
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

/// A GDT of null, code (`code_flags`: 0xa09b 64-bit, 0xc09b 32-bit), data and TSS
/// descriptors; returns the segments.
fn write_gdt(
    mem: &ram_block::RamMemory,
    code_flags: u16,
) -> Result<(kvm_segment, kvm_segment, kvm_segment)> {
    let table: [u64; 4] = [
        0,
        gdt_entry(code_flags, 0, 0xfffff), // code: present, execute/read
        gdt_entry(0xc093, 0, 0xfffff),     // data: present, read/write
        gdt_entry(0x008b, 0, 0x67),        // TSS: present, busy, 104 bytes
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
