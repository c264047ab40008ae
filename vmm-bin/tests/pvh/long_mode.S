/*
 * Shared pieces of the 64-bit PVH test programs (lib.S is the 32-bit counterpart; a
 * program includes one or the other). The PVH entry arrives in 32-bit flat protected
 * mode; `pvh_start` here identity-maps the low 4 GiB with 2 MiB pages (the top GiB,
 * where the LAPIC and IOAPIC live, uncached), turns on PAE, EFER.LME and paging, loads
 * a 64-bit GDT and jumps to the program's `long_mode_entry` in 64-bit code with the
 * stack at the program's `stack_top`, data segments loaded, interrupts off.
 *
 * Selectors: CODE64 (0x08) and DATA64 (0x10), for IDT gates and iretq frames.
 *
 * Helpers for 64-bit code (all preserve every register but flags): putc (%al), puts
 * (the NUL-terminated string at %rsi), hex8 (%al), hex32 (%eax), hex64 (%rax), space,
 * newline, idt_gate64, and debug_exit (%al to isa-debug-exit, does not return).
 * pushall / popall save and restore the seven general registers the programs use.
 */
        .set CODE64, 0x08
        .set DATA64, 0x10

.macro pushall
        push %rax
        push %rbx
        push %rcx
        push %rdx
        push %rsi
        push %rdi
        push %rbp
.endm
.macro popall
        pop %rbp
        pop %rdi
        pop %rsi
        pop %rdx
        pop %rcx
        pop %rbx
        pop %rax
.endm

        .include "pvh_common.S"

        .text
        .code32
        .globl pvh_start
pvh_start:
        cli
        mov $stack_top, %esp
        /* PML4[0] -> PDPT; PDPT[0..3] -> the four page directories. */
        mov $lm_pml4, %edi
        mov $((4096 * 2) / 4), %ecx     /* PML4 and PDPT: every other entry empty */
        xor %eax, %eax
        rep stosl
        movl $(lm_pdpt + 3), lm_pml4    /* present, writable */
        xor %ecx, %ecx
1:      mov %ecx, %eax
        shl $12, %eax
        add $(lm_pd + 3), %eax
        mov %eax, lm_pdpt(,%ecx,8)
        inc %ecx
        cmp $4, %ecx
        jb 1b
        /* 2048 2 MiB pages: present, writable, large; PCD|PWT from 3 GiB up. */
        xor %ecx, %ecx
2:      mov %ecx, %eax
        shl $21, %eax
        or $0x83, %eax
        cmp $(3 * 512), %ecx
        jb 3f
        or $0x18, %eax
3:      mov %eax, lm_pd(,%ecx,8)
        movl $0, lm_pd + 4(,%ecx,8)
        inc %ecx
        cmp $2048, %ecx
        jb 2b

        mov %cr4, %eax
        or $0x20, %eax                  /* PAE */
        mov %eax, %cr4
        mov $lm_pml4, %eax
        mov %eax, %cr3
        mov $0xc0000080, %ecx           /* EFER.LME */
        rdmsr
        or $0x100, %eax
        wrmsr
        mov %cr0, %eax
        or $0x80000001, %eax            /* PG (and PE, already set) */
        mov %eax, %cr0
        lgdt lm_gdt_descriptor
        ljmp $CODE64, $lm_start64

        .code64
lm_start64:
        mov $DATA64, %eax
        mov %eax, %ds
        mov %eax, %es
        mov %eax, %ss
        xor %eax, %eax
        mov %eax, %fs
        mov %eax, %gs
        mov $stack_top, %esp            /* zero-extends into %rsp */
        and $-16, %rsp
        jmp long_mode_entry

/* putc: %al to COM1 (polls the transmitter-empty bit). */
putc:
        push %rdx
        push %rax
1:      mov $0x3fd, %dx
        in %dx, %al
        test $0x20, %al
        jz 1b
        pop %rax
        mov $0x3f8, %dx
        out %al, %dx
        pop %rdx
        ret

/* puts: the NUL-terminated string at %rsi. */
puts:
        push %rsi
        push %rax
1:      lodsb
        test %al, %al
        jz 2f
        call putc
        jmp 1b
2:      pop %rax
        pop %rsi
        ret

/* hex64: %rax as 16 hex digits; hex32: %eax as 8; hexn: the top %ecx nibbles of %rbx. */
hex64:
        push %rcx
        push %rbx
        mov %rax, %rbx
        mov $16, %ecx
        jmp hexn
hex32:
        push %rcx
        push %rbx
        mov %rax, %rbx
        shl $32, %rbx
        mov $8, %ecx
hexn:
        push %rax
1:      rol $4, %rbx
        mov %ebx, %eax
        call hexdigit
        loop 1b
        pop %rax
        pop %rbx
        pop %rcx
        ret

/* hex8: %al as 2 hex digits. */
hex8:
        push %rax
        shr $4, %al
        call hexdigit
        pop %rax
/* hexdigit: the low 4 bits of %al as a hex digit. */
hexdigit:
        push %rax
        nibble_to_ascii
        call putc
        pop %rax
        ret

/* space / newline */
space:
        push %rax
        mov $' ', %al
        call putc
        pop %rax
        ret
newline:
        push %rax
        mov $'\n', %al
        call putc
        pop %rax
        ret

/* idt_gate64: the 16-byte entry %ecx of the IDT at %rdi = a 64-bit interrupt gate
   (CODE64, DPL 0, no IST) to %rax. */
idt_gate64:
        push %rdx
        push %rcx
        shl $4, %ecx
        add %rdi, %rcx
        mov %eax, %edx
        and $0xffff, %edx
        or $(CODE64 << 16), %edx
        mov %edx, (%rcx)                /* offset 15:0, selector */
        mov %eax, %edx
        and $0xffff0000, %edx
        or $0x8e00, %edx                /* present, interrupt gate */
        mov %edx, 4(%rcx)               /* offset 31:16, type */
        mov %rax, %rdx
        shr $32, %rdx
        mov %edx, 8(%rcx)               /* offset 63:32 */
        movl $0, 12(%rcx)
        pop %rcx
        pop %rdx
        ret


        .data
        .balign 8
lm_gdt:
        .quad 0
        .quad 0x00209a0000000000        /* CODE64: present, code, L */
        .quad 0x00cf92000000ffff        /* DATA64: present, writable, flat */
lm_gdt_descriptor:
        .word lm_gdt_descriptor - lm_gdt - 1
        .long lm_gdt

        .bss
        .balign 4096
lm_pml4:        .skip 4096
lm_pdpt:        .skip 4096
lm_pd:          .skip 4096 * 4

        .text
