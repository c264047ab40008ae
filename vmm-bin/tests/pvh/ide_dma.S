/*
 * A bus-master DMA driver for the PIIX3 IDE function (8086:7010 at 00:01.1), a 64-bit
 * program: long_mode.S takes the PVH entry (32-bit flat protected mode) into long mode
 * with the low 4 GiB identity-mapped, and everything below runs in 64-bit code. No
 * firmware runs: the program enables I/O decoding and bus mastering itself, and places
 * BAR4 when nobody did. It drives the primary channel's disk (ide-hd, unit 0) with
 * READ DMA EXT / WRITE DMA EXT through the PRD tables in `.data` and waits for IRQ 14
 * through the IOAPIC (pin 14, edge, vector 0x4e; both 8259s masked) and a 64-bit IDT.
 * The handler samples the bus-master status, then the ATA status (the read lowers the
 * line), counts, sends the EOI and returns with iretq. PRD addresses are guest-physical
 * (the device does not see paging); with the identity map they equal the program's own.
 *
 * The disk holds pattern K1: the dword at byte offset 4i of the image is (i+1) * K1.
 * Writes store pattern K2 for their own offsets; the host checks the image afterwards.
 *
 * On COM1: "long-mode efer=<EFER>" (LMA, bit 10, says the CPU is in long mode), the
 * "ide bar4=<BAR4> cmd=<command register>" line, then one line per case:
 *   <case> irq=<count> bm=<BM status in the handler> ata=<status> err=<error>
 *          after=<BM status once stopped> clr=<BM status once INT/ERR are cleared>
 *          data=<ok | bad@offset | - (not checked) | untouched | written (the short
 *          table's region)>
 * then PASS (exit 0x10: status 33), or FAIL <what> (exit 0x11: status 35).
 */
        .include "long_mode.S"

        .set BUF,      0x400000         /* the PRD regions live in BUF..BUF+0x40000 */
        .set BUF_END,  0x440000
        .set SCRATCH,  0x500000         /* gathered / to-be-scattered bytes */
        .set LAPIC,    0xfee00000
        .set IOAPIC,   0xfec00000
        .set NO_RAM,   0xd0000000       /* 128 MiB guest: no RAM, no device here */
        .set K1,       0x9e3779b1
        .set K2,       0x85ebca6b
        .set VECTOR,   0x4e
        .set EOT,      0x80000000
        .set PCI_1_1,  0x80000900       /* bus 0, device 1, function 1 */
        .set BAR4_DEFAULT, 0xc000
        .set READ_DMA_EXT,  0x25
        .set WRITE_DMA_EXT, 0x35
        .set WAIT_LONG,  400000         /* polls (each a VM exit) for an interrupt */
        .set WAIT_SHORT, 20000

        .text
        .code64
long_mode_entry:
        mov $s_long_mode, %esi
        call puts
        mov $0xc0000080, %ecx
        rdmsr
        call hex32
        call newline

        /* Both 8259s masked: IRQ 14 must come through the IOAPIC. */
        mov $0xff, %al
        out %al, $0x21
        out %al, $0xa1

        /* IDT: every vector to `unexpected`, VECTOR to `irq_handler`. */
        mov $idt, %edi
        xor %ecx, %ecx
1:      mov $unexpected, %eax
        cmp $VECTOR, %ecx
        jne 2f
        mov $irq_handler, %eax
2:      call idt_gate64
        inc %ecx
        cmp $256, %ecx
        jb 1b
        lidt idt_descriptor
        mov $LAPIC, %edi
        movl $0x1ff, 0xf0(%rdi)         /* LAPIC on, spurious vector 0xff */
        movl $0, 0x80(%rdi)             /* accept every priority */
        mov $IOAPIC, %edi
        movl $(0x10 + 2 * 14), (%rdi)   /* pin 14: VECTOR, fixed, edge, high, unmasked */
        movl $VECTOR, 0x10(%rdi)
        movl $(0x11 + 2 * 14), (%rdi)
        movl $0, 0x10(%rdi)             /* to APIC 0 */

        /* The IDE function: identity, BAR4, I/O decoding and bus mastering. */
        xor %ecx, %ecx
        call pci_read
        mov $f_nodev, %esi
        cmp $0x70108086, %eax
        jne fail
        mov $0x20, %ecx
        call pci_read
        and $0xfffc, %eax
        jnz 1f
        mov $(BAR4_DEFAULT | 1), %eax
        call pci_write
        call pci_read
        and $0xfffc, %eax
1:      mov %eax, bmbase
        mov $0x04, %ecx
        call pci_read
        or $0x5, %eax                   /* I/O space, bus master */
        call pci_write
        call pci_read
        mov $s_ide, %esi
        call puts
        push %rax
        mov bmbase, %eax
        call hex32
        mov $s_cmd, %esi
        call puts
        pop %rax
        call hex8
        call newline
        mov $f_bar, %esi
        cmpl $0, bmbase
        je fail

        xor %al, %al
        mov $0x3f6, %dx                 /* device control: nIEN clear */
        out %al, %dx

        /* 1. Four regions of odd sizes (10, 502, 562, 462 bytes) for 3 sectors. */
        mov $s_read_multi, %esi
        mov $5, %eax
        mov $3, %ecx
        mov $t_multi, %ebx
        call read_case

        /* 2. The same table for 2 sectors: it goes on past the transfer, so Active
              stays set with the interrupt. */
        mov $s_read_long, %esi
        mov $17, %eax
        mov $2, %ecx
        mov $t_multi, %ebx
        call read_case

        /* 3. A zero byte count (64 KiB) then 1 KiB: 130 sectors. */
        mov $s_read_zero, %esi
        mov $1000, %eax
        mov $130, %ecx
        mov $t_zero, %ebx
        call read_case

        /* 4. A table whose entries straddle a page boundary. */
        mov $s_read_cross, %esi
        mov $77, %eax
        mov $3, %ecx
        mov $t_cross, %ebx
        call read_case

        /* 5. A table of 1 KiB for 4 sectors: the transfer cannot start; Active clears,
              no interrupt, the region keeps its poison. */
        mov $s_read_short, %esi
        mov $40, %eax
        mov $4, %ecx
        mov $t_short, %ebx
        mov $READ_DMA_EXT, %dl
        call dma_case
        mov $BUF + 0x6000, %edi         /* still the poison read-cross left there? */
        mov $(0x400 / 4), %ecx
        mov $0xcccccccc, %eax
        repe scasl
        mov $s_data_untouched, %esi
        je 1f
        mov $s_data_written, %esi
1:      call puts
        call newline

        /* 6. A region outside RAM; 7. a table outside RAM: Error and the interrupt. */
        mov $s_bad_region, %esi
        mov $50, %eax
        mov $1, %ecx
        mov $t_bad, %ebx
        mov $READ_DMA_EXT, %dl
        call dma_case
        call newline
        mov $s_bad_table, %esi
        mov $50, %eax
        mov $1, %ecx
        mov $NO_RAM, %ebx
        mov $READ_DMA_EXT, %dl
        call dma_case
        call newline

        /* 8, 9. Writes of pattern K2 through the multi-region and the 64 KiB tables. */
        mov $s_write_multi, %esi
        mov $6000, %eax
        mov $3, %ecx
        mov $t_multi, %ebx
        call write_case
        mov $s_write_zero, %esi
        mov $7000, %eax
        mov $130, %ecx
        mov $t_zero, %ebx
        call write_case

        /* 10. Read the 64 KiB write back (the device still works after the faults). */
        mov $s_read_back, %esi
        mov $7000, %eax
        mov $130, %ecx
        mov $t_zero, %ebx
        mov $K2, %ebp
        call read_case_k

        mov $s_pass, %esi
        call puts
        call newline
        mov $0x10, %al
        jmp debug_exit

/* read_case: READ DMA EXT of %ecx sectors at LBA %eax through table %rbx into poisoned
   regions; prints the line (name %rsi) and checks the gathered bytes against K1. */
read_case:
        mov $K1, %ebp
/* read_case_k: the same against pattern %ebp. */
read_case_k:
        push %rdi
        push %rax
        push %rcx
        mov $BUF, %edi
        mov $((BUF_END - BUF) / 4), %ecx
        mov $0xcccccccc, %eax
        rep stosl
        pop %rcx
        pop %rax
        mov $READ_DMA_EXT, %dl
        call dma_case
        push %rcx
        push %rbp
        shl $9, %ecx                    /* bytes */
        xor %ebp, %ebp
        call sg_copy                    /* gather into SCRATCH */
        pop %rbp
        call pattern_check
        pop %rcx
        pop %rdi
        ret

/* write_case: WRITE DMA EXT of %ecx sectors at LBA %eax of pattern K2, scattered over
   the regions of table %rbx; prints the line (name %rsi). */
write_case:
        push %rcx
        mov $K2, %ebp
        shl $9, %ecx
        call pattern_fill
        mov $1, %ebp
        call sg_copy                    /* scatter SCRATCH into the regions */
        pop %rcx
        mov $WRITE_DMA_EXT, %dl
        call dma_case
        push %rsi
        mov $s_data_none, %esi
        call puts
        call newline
        pop %rsi
        ret

/* dma_case: issues DMA command %dl for %ecx sectors at LBA %eax with the PRD table at
   %rbx, waits for the interrupt, stops the bus master and clears its INT/ERR bits;
   prints "<%rsi> irq= bm= ata= err= after= clr=" (no newline). Preserves all but
   flags. */
dma_case:
        pushall
        mov %eax, lba
        mov %ecx, count
        mov %dl, command
        call puts
        movl $0, irq_count
        movb $0, irq_bm
        movb $0, irq_ata
        call wait_not_busy
        /* Bus master: stopped, the table, INT and ERR cleared, the direction. */
        xor %al, %al
        mov bmbase, %edx
        out %al, %dx
        mov %ebx, %eax
        add $4, %edx
        out %eax, %dx
        sub $2, %edx
        mov $0x06, %al
        out %al, %dx
        /* Task file (LBA48: the high bytes first), then the command. */
        mov $0x1f6, %edx
        mov $0x40, %al                  /* LBA, device 0 */
        out %al, %dx
        mov $0x1f2, %edx
        mov count + 1, %al
        out %al, %dx
        mov count, %al
        out %al, %dx
        mov $0x1f3, %edx
        mov lba + 3, %al
        out %al, %dx
        mov lba, %al
        out %al, %dx
        inc %edx
        xor %al, %al
        out %al, %dx
        mov lba + 1, %al
        out %al, %dx
        inc %edx
        xor %al, %al
        out %al, %dx
        mov lba + 2, %al
        out %al, %dx
        mov command, %al
        mov $0x1f7, %edx
        out %al, %dx
        mov $0x09, %cl                  /* start, to memory */
        cmp $WRITE_DMA_EXT, %al
        jne 1f
        mov $0x01, %cl                  /* start, from memory */
1:      mov %cl, %al
        mov bmbase, %edx
        out %al, %dx

        mov $WAIT_LONG, %ecx
        cmp $t_short, %rbx
        jne 1f
        mov $WAIT_SHORT, %ecx           /* no interrupt expected: a shorter window */
1:      call wait_irq
        cmpl $0, irq_count
        jne 2f
        /* No interrupt: what the registers say now. */
        mov bmbase, %edx
        add $2, %edx
        in %dx, %al
        mov %al, irq_bm
        mov $0x1f7, %edx
        in %dx, %al
        mov %al, irq_ata
2:      mov $s_irq, %esi
        call puts
        mov irq_count, %eax
        call hex32
        mov $s_bm, %esi
        call puts
        mov irq_bm, %al
        call hex8
        mov $s_ata, %esi
        call puts
        mov irq_ata, %al
        call hex8
        mov $s_err, %esi
        call puts
        mov $0x1f1, %edx
        in %dx, %al
        call hex8
        /* Stop, then clear INT and ERR (write 1 to clear). */
        mov bmbase, %edx
        xor %al, %al
        out %al, %dx
        add $2, %edx
        mov $s_after, %esi
        call puts
        in %dx, %al
        call hex8
        mov $0x06, %al
        out %al, %dx
        mov $s_clr, %esi
        call puts
        in %dx, %al
        call hex8
        popall
        ret

/* wait_not_busy: until BSY clears (bounded). */
wait_not_busy:
        push %rcx
        push %rdx
        push %rax
        mov $WAIT_SHORT, %ecx
        mov $0x3f6, %edx                /* alternate status: no side effects */
1:      in %dx, %al
        test $0x80, %al
        jz 2f
        loop 1b
2:      pop %rax
        pop %rdx
        pop %rcx
        ret

/* wait_irq: polls irq_count %ecx times at most, each poll an exit with interrupts on
   (KVM injects what is pending there; the handler returns with iretq). Returns with
   interrupts off. */
wait_irq:
        push %rcx
1:      cli
        cmpl $0, irq_count
        jne 2f
        dec %ecx
        js 2f
        sti
        in $0x80, %al                   /* an exit: the interrupt window */
        jmp 1b
2:      pop %rcx
        ret

irq_handler:
        push %rax
        push %rdx
        mov bmbase, %edx
        add $2, %edx
        in %dx, %al
        mov %al, irq_bm
        mov $0x1f7, %edx                /* status: acknowledges, lowers IRQ 14 */
        in %dx, %al
        mov %al, irq_ata
        incl irq_count
        mov $LAPIC, %eax
        movl $0, 0xb0(%rax)             /* EOI */
        pop %rdx
        pop %rax
        iretq

/* sg_copy: copies %ecx bytes between SCRATCH and the regions of the PRD table at %rbx
   (a zero count is 64 KiB, bit 0 ignored, the table ends at EOT): into SCRATCH when
   %ebp is 0, out of it otherwise. */
sg_copy:
        pushall
        mov $SCRATCH, %edx              /* SCRATCH cursor */
        mov %ecx, %eax                  /* bytes left */
1:      test %eax, %eax
        jz 9f
        movzwl 4(%rbx), %ecx
        and $0xfffe, %ecx
        jnz 2f
        mov $0x10000, %ecx
2:      cmp %eax, %ecx
        jbe 3f
        mov %eax, %ecx
3:      sub %ecx, %eax
        mov (%rbx), %esi
        mov %edx, %edi
        add %ecx, %edx
        test %ebp, %ebp
        jz 4f
        xchg %rsi, %rdi
4:      rep movsb
        testb $0x80, 7(%rbx)
        jnz 9f
        add $8, %rbx
        jmp 1b
9:      popall
        ret

/* pattern_fill: SCRATCH = %ecx bytes of pattern %ebp for the disk from LBA %eax. */
pattern_fill:
        pushall
        call pattern_start
1:      mov %eax, (%rdi)
        add %ebp, %eax
        add $4, %edi
        loop 1b
        popall
        ret

/* pattern_check: compares SCRATCH (%ecx bytes) with pattern %ebp from LBA %eax; prints
   " data=ok" or " data=bad@<offset>" and a newline. */
pattern_check:
        pushall
        call pattern_start
1:      cmp %eax, (%rdi)
        jne 2f
        add %ebp, %eax
        add $4, %edi
        loop 1b
        mov $s_data_ok, %esi
        call puts
        jmp 3f
2:      mov $s_data_bad, %esi
        call puts
        lea -SCRATCH(%rdi), %eax
        call hex32
3:      call newline
        popall
        ret

/* pattern_start: %edi = SCRATCH, %ecx = dwords in %ecx bytes, %eax = the pattern's
   first dword for LBA %eax: (128 LBA + 1) * %ebp. */
pattern_start:
        mov $SCRATCH, %edi
        shr $2, %ecx
        shl $7, %eax
        inc %eax
        imul %ebp, %eax
        ret

/* pci_read / pci_write: 00:01.1 config dword at %ecx; data %eax. */
pci_select:
        push %rax
        mov %ecx, %eax
        or $PCI_1_1, %eax
        mov $0xcf8, %dx
        out %eax, %dx
        pop %rax
        mov $0xcfc, %dx
        ret
pci_read:
        push %rdx
        call pci_select
        in %dx, %eax
        pop %rdx
        ret
pci_write:
        push %rdx
        call pci_select
        out %eax, %dx
        pop %rdx
        ret

/* fail: prints the line at %rsi, exits with 0x11. */
fail:
        call puts
        call newline
        mov $0x11, %al
        jmp debug_exit

/* unexpected: an exception or an interrupt nobody asked for. */
unexpected:
        mov $f_unexpected, %esi
        jmp fail

        .data
        .balign 8
/* PRD tables: region address, then byte count (0: 64 KiB) | EOT. */
t_multi:
        .long BUF + 0x10,   10
        .long BUF + 0x1002, 502
        .long BUF + 0x2ff0, 562
        .long BUF + 0x4006, 462 | EOT
t_zero:
        .long BUF + 0x10000, 0
        .long BUF + 0x30006, 0x400 | EOT
t_short:
        .long BUF + 0x6000, 0x400 | EOT
t_bad:
        .long NO_RAM, 0x200 | EOT
        .balign 4096
        .space 4096 - 16
t_cross:                                /* two entries in each page */
        .long BUF + 0x5000, 0x100
        .long BUF + 0x5200, 0xfe
        .long BUF + 0x5400, 0x102
        .long BUF + 0x5800, 0x300 | EOT

idt_descriptor:
        .word 256 * 16 - 1
        .quad idt
        .balign 4
bmbase:         .long 0
lba:            .long 0
count:          .long 0
command:        .byte 0
irq_count:      .long 0
irq_bm:         .byte 0
irq_ata:        .byte 0
s_long_mode:    .asciz "long-mode efer="
s_ide:          .asciz "ide bar4="
s_cmd:          .asciz " cmd="
s_read_multi:   .asciz "read-multi"
s_read_long:    .asciz "read-long"
s_read_zero:    .asciz "read-zero64k"
s_read_cross:   .asciz "read-cross"
s_read_short:   .asciz "read-short"
s_bad_region:   .asciz "bad-region"
s_bad_table:    .asciz "bad-table"
s_write_multi:  .asciz "write-multi"
s_write_zero:   .asciz "write-zero64k"
s_read_back:    .asciz "read-back"
s_irq:          .asciz " irq="
s_bm:           .asciz " bm="
s_ata:          .asciz " ata="
s_err:          .asciz " err="
s_after:        .asciz " after="
s_clr:          .asciz " clr="
s_data_ok:      .asciz " data=ok"
s_data_bad:     .asciz " data=bad@"
s_data_none:    .asciz " data=-"
s_data_untouched: .asciz " data=untouched"
s_data_written: .asciz " data=written"
s_pass:         .asciz "PASS"
f_nodev:        .asciz "FAIL no PIIX3 IDE function at 00:01.1"
f_bar:          .asciz "FAIL BAR4 not placed"
f_unexpected:   .asciz "FAIL unexpected interrupt or exception"
        .balign 16
        .space 4096
stack_top:

        .bss
        .balign 4096
idt:    .skip 256 * 16
