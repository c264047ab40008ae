/*
 * A minimal virtio-blk driver proving the interrupt paths end to end: entered through
 * PVH in 32-bit flat protected mode, it finds the virtio-blk function (1af4:1042) on
 * PCI bus 0, places its BARs, walks its capabilities, brings the device up with one
 * queue, and reads two sectors:
 *
 *   1. with MSI-X on: queue 0 on table entry 1 = vector 0x41 to APIC 0 (the VMM
 *      delivers it through an irqfd); the handler counts it;
 *   2. with MSI-X off: the INTx fallback, through the PIIX PIRQ swizzle to IOAPIC pin
 *      16 + PIRQ (or, where firmware routed the PIRQ to an ISA IRQ, that IRQ's pin),
 *      programmed here as vector 0x42, level triggered; the handler reads the ISR
 *      (which lowers the line) and counts.
 *
 * Each phase waits with `sti; hlt` until its handler ran, then checks the used ring,
 * the status byte and the data (sector 3 starts "MSIXSEC3", sector 4 "INTXSEC4").
 * Output on COM1:
 *   dev=<slot> common=<addr> notify=<addr> isr=<addr> msix=<table addr>
 *   msix irq=<count> used=<idx> status=<byte> data=<first dword>
 *   intx gsi=<gsi> irq=<count> isr=<value> used=<idx> status=<byte> data=<first dword>
 *   intx extra=<interrupts taken in a later window with interrupts on>
 *   PASS                (exit 0x10: status 33)   or   FAIL <what>  (exit 0x11: 35)
 */
        .include "lib.S"

        .set BAR1_BASE, 0xfebf0000      /* MSI-X table + PBA */
        .set BAR4_BASE, 0xfe000000      /* virtio regions (64-bit BAR) */
        .set DESC,   0x200000
        .set AVAIL,  0x201000
        .set USED,   0x202000
        .set HDR,    0x203000
        .set DATA,   0x204000
        .set STATUS, 0x205000
        .set IDT,    0x206000
        .set LAPIC,  0xfee00000
        .set IOAPIC, 0xfec00000
        .set QSIZE,  8

        .text
        .globl pvh_start
pvh_start:
        cli
        mov $stack_top, %esp
        /* Zero the rings and buffers. */
        mov $DESC, %edi
        mov $((IDT + 0x800 - DESC) / 4), %ecx
        xor %eax, %eax
        rep stosl
        /* Mask both 8259s: only the LAPIC path (MSI, IOAPIC) may interrupt us. */
        mov $0xff, %al
        out %al, $0x21
        out %al, $0xa1

        /* IDT: every vector to its `unexpected` stub, 0x41 to `msi_handler`, 0x42 to
           `intx_handler`. */
        mov $IDT, %edi
        xor %ecx, %ecx
1:      lea (%ecx,%ecx,4), %eax
        lea unexpected_stubs(,%eax,2), %eax    /* stub n at unexpected_stubs + 10 n */
        cmp $0x41, %ecx
        jne 2f
        mov $msi_handler, %eax
2:      cmp $0x42, %ecx
        jne 3f
        mov $intx_handler, %eax
3:      mov %eax, %edx
        and $0xffff, %eax
        mov %cs, %bx
        shl $16, %ebx
        or %ebx, %eax                   /* selector:offset_lo */
        mov %eax, (%edi,%ecx,8)
        and $0xffff0000, %edx
        or $0x8e00, %edx                /* present, 32-bit interrupt gate */
        mov %edx, 4(%edi,%ecx,8)
        inc %ecx
        cmp $256, %ecx
        jb 1b
        lidt idt_descriptor

        /* LAPIC: software enable (spurious vector 0xff), accept every priority. */
        movl $0x1ff, LAPIC + 0xf0
        movl $0, LAPIC + 0x80

        /* Find 1af4:1042 on bus 0. */
        xor %ebx, %ebx
1:      xor %ecx, %ecx
        call pci_read32
        cmp $0x10421af4, %eax
        je 2f
        inc %ebx
        cmp $32, %ebx
        jb 1b
        mov $f_nodev, %esi
        jmp fail
2:      mov %ebx, dev

        /* BARs, then memory decoding and bus mastering. */
        mov $0x14, %ecx
        mov $BAR1_BASE, %eax
        call pci_write32
        mov $0x20, %ecx
        mov $BAR4_BASE, %eax
        call pci_write32
        mov $0x24, %ecx
        xor %eax, %eax
        call pci_write32
        mov $0x04, %ecx
        call pci_read32
        or $0x6, %eax
        call pci_write32

        /* Capabilities. */
        mov $0x34, %ecx
        call pci_read32
        and $0xfc, %eax
        mov %eax, %ebp                  /* current capability */
cap_loop:
        test %ebp, %ebp
        jz caps_done
        mov %ebp, %ecx
        call pci_read32
        mov %eax, %edx                  /* id, next, len, cfg_type */
        cmp $0x11, %dl
        jne 1f
        mov %ebp, msix_cap
        lea 4(%ebp), %ecx
        call pci_read32                 /* table offset | BIR */
        mov %eax, %esi
        and $7, %eax
        call bar_base
        and $~7, %esi
        add %esi, %eax
        mov %eax, msix_table
        jmp next_cap
1:      cmp $0x09, %dl
        jne next_cap
        lea 4(%ebp), %ecx
        call pci_read32
        and $0xff, %eax
        call bar_base
        mov %eax, %esi                  /* the BAR's address */
        lea 8(%ebp), %ecx
        call pci_read32
        add %eax, %esi                  /* the region's address */
        mov %edx, %eax
        shr $24, %eax                   /* cfg_type */
        cmp $1, %al
        jne 2f
        mov %esi, common
        jmp next_cap
2:      cmp $2, %al
        jne 3f
        mov %esi, notify
        lea 16(%ebp), %ecx
        call pci_read32
        mov %eax, notify_mult
        jmp next_cap
3:      cmp $3, %al
        jne next_cap
        mov %esi, isr
next_cap:
        mov %edx, %ebp
        shr $8, %ebp
        and $0xfc, %ebp
        jmp cap_loop
caps_done:
        mov $s_dev, %esi
        call puts
        mov dev, %eax
        call hex32
        mov $s_common, %esi
        call puts
        mov common, %eax
        call hex32
        mov $s_notify, %esi
        call puts
        mov notify, %eax
        call hex32
        mov $s_isr, %esi
        call puts
        mov isr, %eax
        call hex32
        mov $s_msix, %esi
        call puts
        mov msix_table, %eax
        call hex32
        call newline
        mov $f_caps, %esi
        cmpl $0, common
        je fail
        cmpl $0, notify
        je fail
        cmpl $0, isr
        je fail
        cmpl $0, msix_table
        je fail

        /* MSI-X: entry 1 = vector 0x41 to APIC 0, unmasked; then enable MSI-X. */
        mov msix_table, %edi
        movl $0xfee00000, 16(%edi)
        movl $0, 20(%edi)
        movl $0x41, 24(%edi)
        movl $0, 28(%edi)
        mov msix_cap, %ecx
        call pci_read32
        or $0x80000000, %eax            /* message control bit 15: MSI-X enable */
        and $~0x40000000, %eax          /* function mask off */
        call pci_write32

        /* Device bring-up (virtio 1.x, section 3.1). */
        mov common, %edi
        movb $0, 0x14(%edi)             /* reset */
1:      cmpb $0, 0x14(%edi)
        jne 1b
        movb $1, 0x14(%edi)             /* ACKNOWLEDGE */
        movb $3, 0x14(%edi)             /* DRIVER */
        movl $1, 0x08(%edi)             /* driver_feature_select = 1 */
        movl $1, 0x0c(%edi)             /* VIRTIO_F_VERSION_1 (bit 32) */
        movl $0, 0x08(%edi)
        movl $0, 0x0c(%edi)
        movb $11, 0x14(%edi)            /* FEATURES_OK */
        mov $f_features, %esi
        testb $8, 0x14(%edi)
        jz fail
        movw $0xffff, 0x10(%edi)        /* msix_config: NO_VECTOR */
        movw $0, 0x16(%edi)             /* queue_select = 0 */
        movw $QSIZE, 0x18(%edi)
        movw $1, 0x1a(%edi)             /* queue_msix_vector = 1 */
        mov $f_vector, %esi
        cmpw $1, 0x1a(%edi)
        jne fail
        movl $DESC, 0x20(%edi)
        movl $0, 0x24(%edi)
        movl $AVAIL, 0x28(%edi)
        movl $0, 0x2c(%edi)
        movl $USED, 0x30(%edi)
        movl $0, 0x34(%edi)
        movw $1, 0x1c(%edi)             /* queue_enable */
        movzwl 0x1e(%edi), %eax         /* queue_notify_off */
        imul notify_mult, %eax
        add %eax, notify
        movb $15, 0x14(%edi)            /* DRIVER_OK */

        /* Phase 1: MSI-X. */
        mov $3, %eax
        call submit_read
        mov $msi_count, %ebx
        call wait_irq
        mov $s_msix_phase, %esi
        call puts
        mov msi_count, %eax
        call hex32
        mov $1, %ecx
        mov $0x5849534d, %edx           /* "MSIX" */
        call check_result

        /* Phase 2: INTx. MSI-X off; route our PIRQ's IOAPIC pin to vector 0x42. */
        mov msix_cap, %ecx
        mov dev, %ebx
        call pci_read32
        and $~0x80000000, %eax
        call pci_write32
        mov $0x3c, %ecx
        call pci_read32
        shr $8, %eax
        and $0xff, %eax                 /* interrupt pin: 1 = INTA */
        mov $f_pin, %esi
        test %eax, %eax
        jz fail
        dec %eax
        add dev, %eax
        dec %eax
        and $3, %eax                    /* PIRQ (the PIIX swizzle) */
        /* Routed to an ISA IRQ by firmware (PIIX3 00:01.0 register 0x60 + PIRQ, bit 7
           clear)? Then that IRQ's IOAPIC pin; else IOAPIC pin 16 + PIRQ. */
        push %ebx
        push %eax
        mov $1, %ebx
        mov $0x60, %ecx
        call pci_read32
        pop %ecx
        pop %ebx
        shl $3, %ecx
        shr %cl, %eax
        shr $3, %ecx
        test $0x80, %al
        jnz 1f
        and $0x0f, %eax
        jmp 2f
1:      lea 16(%ecx), %eax              /* GSI = 16 + PIRQ */
2:
        mov %eax, gsi
        shl $1, %eax
        add $0x10, %eax                 /* redirection entry, low dword */
        mov %eax, IOAPIC
        movl $(0x42 | (1 << 15)), IOAPIC + 0x10     /* level triggered, fixed, unmasked */
        inc %eax
        mov %eax, IOAPIC
        movl $0, IOAPIC + 0x10          /* destination APIC 0 */

        mov $4, %eax
        call submit_read
        mov $intx_count, %ebx
        call wait_irq
        mov $s_intx_phase, %esi
        call puts
        mov gsi, %eax
        call hex32
        mov $s_irq, %esi
        call puts
        mov intx_count, %eax
        call hex32
        mov $s_isrval, %esi
        call puts
        mov isr_value, %eax
        call hex32
        mov $f_isr, %esi
        testb $1, isr_value
        jz fail_nl
        mov $2, %ecx
        mov $0x58544e49, %edx           /* "INTX" */
        call check_result

        /* Interrupts on for a while: a line the ISR read failed to lower would fire
           again (level triggered). Reported, not judged here: this machine's software
           KVM re-delivers a level interrupt once after its EOI even with the line low
           (QEMU/KVM shows the same); the host test judges it where KVM is hardware. */
        mov intx_count, %eax
        mov %eax, intx_at_wake
        mov %esp, resume_esp
        movl $2f, resume_eip
        sti
        mov $1000, %ecx
1:      in $0x80, %al                   /* an exit each: KVM injects what is pending */
        dec %ecx
        jnz 1b
2:      cli
        mov $s_extra, %esi
        call puts
        mov intx_count, %eax
        sub intx_at_wake, %eax
        call hex32
        call newline

        mov $s_pass, %esi
        call puts
        call newline
        mov $0x10, %al
        jmp debug_exit

/* submit_read: reads sector %eax into DATA through a 3-descriptor chain. */
submit_read:
        movl $0, HDR                    /* VIRTIO_BLK_T_IN */
        movl $0, HDR + 4
        mov %eax, HDR + 8
        movl $0, HDR + 12
        movb $0xff, STATUS
        movl $0, DATA
        /* desc 0: header, NEXT -> 1 */
        movl $HDR, DESC + 0
        movl $0, DESC + 4
        movl $16, DESC + 8
        movw $1, DESC + 12
        movw $1, DESC + 14
        /* desc 1: data, NEXT | WRITE -> 2 */
        movl $DATA, DESC + 16
        movl $0, DESC + 20
        movl $512, DESC + 24
        movw $3, DESC + 28
        movw $2, DESC + 30
        /* desc 2: status, WRITE */
        movl $STATUS, DESC + 32
        movl $0, DESC + 36
        movl $1, DESC + 40
        movw $2, DESC + 44
        movw $0, DESC + 46
        /* avail ring: the head, then the index. */
        movzwl AVAIL + 2, %eax
        mov %eax, %ecx
        and $(QSIZE - 1), %ecx
        movw $0, AVAIL + 4(,%ecx,2)
        inc %eax
        mfence
        movw %ax, AVAIL + 2
        mfence
        mov notify, %edi
        movw $0, (%edi)                 /* queue 0 */
        ret

/*
 * wait_irq: until the counter at %ebx is non-zero, sleeping in hlt with interrupts on.
 * The handlers do not return with iret (this machine's KVM cannot emulate a
 * protected-mode iret outside paging): they continue at resume_eip on the stack
 * resume_esp, with interrupts off — here, at wait_check.
 */
wait_irq:
        mov %esp, resume_esp
        movl $wait_check, resume_eip
wait_check:
        cli
        cmpl $0, (%ebx)
        jne 1f
        sti
        hlt
        jmp wait_check
1:      ret

/* check_result: used idx must be %ecx, status 0, DATA's first dword %edx; prints them. */
check_result:
        push %edx
        mov $s_used, %esi
        call puts
        movzwl USED + 2, %eax
        call hex32
        mov $s_status, %esi
        call puts
        movzbl STATUS, %eax
        call hex32
        mov $s_data, %esi
        call puts
        mov DATA, %eax
        call hex32
        call newline
        pop %edx
        mov $f_used, %esi
        cmpw %cx, USED + 2
        jne fail
        mov $f_status, %esi
        cmpb $0, STATUS
        jne fail
        mov $f_data, %esi
        cmp %edx, DATA
        jne fail
        ret

/* bar_base: the address we gave BAR %eax (1 or 4); 0 for others. */
bar_base:
        cmp $1, %eax
        jne 1f
        mov $BAR1_BASE, %eax
        ret
1:      cmp $4, %eax
        jne 2f
        mov $BAR4_BASE, %eax
        ret
2:      xor %eax, %eax
        ret

/* pci_read32 / pci_write32: bus 0, device %ebx, function 0, offset %ecx; data %eax. */
pci_address:
        push %eax
        mov %ebx, %eax
        shl $11, %eax
        or $0x80000000, %eax
        mov %ecx, %edx
        and $0xfc, %edx
        or %edx, %eax
        mov $0xcf8, %dx
        out %eax, %dx
        pop %eax
        mov $0xcfc, %dx
        ret
pci_read32:
        push %edx
        call pci_address
        in %dx, %eax
        pop %edx
        ret
pci_write32:
        push %edx
        call pci_address
        out %eax, %dx
        pop %edx
        ret

fail_nl:
        call newline
/* fail: prints FAIL and the string at %esi, exits with 0x11. */
fail:
        push %esi
        mov $s_fail, %esi
        call puts
        pop %esi
        call puts
        call newline
        mov $0x11, %al
        jmp debug_exit

msi_handler:
        incl msi_count
        movl $0, LAPIC + 0xb0           /* EOI */
        mov resume_esp, %esp
        jmp *resume_eip

intx_handler:
        mov isr, %edi
        movzbl (%edi), %eax             /* read clears the ISR and lowers INTx */
        or %eax, isr_value
        incl intx_count
        movl $0, LAPIC + 0xb0           /* EOI (also ends the level-triggered IOAPIC cycle) */
        mov resume_esp, %esp
        jmp *resume_eip

/* One 10-byte stub per vector: push the vector number, jump to `unexpected`. */
unexpected_stubs:
        .set vector, 0
        .rept 256
        .byte 0x68                      /* push imm32 */
        .long vector
        .byte 0xe9                      /* jmp rel32 */
        .long unexpected - . - 4
        .set vector, vector + 1
        .endr

/* unexpected: an exception or interrupt nobody asked for; prints its vector. */
unexpected:
        mov $s_fail, %esi
        call puts
        mov $f_unexpected, %esi
        call puts
        pop %eax
        call hex32
        call newline
        mov $0x11, %al
        jmp debug_exit

        .data
        .balign 4
idt_descriptor:
        .word 256 * 8 - 1
        .long IDT
dev:            .long 0
common:         .long 0
notify:         .long 0
notify_mult:    .long 0
isr:            .long 0
msix_cap:       .long 0
msix_table:     .long 0
gsi:            .long 0
msi_count:      .long 0
intx_count:     .long 0
isr_value:      .long 0
intx_at_wake:   .long 0
resume_esp:     .long 0
resume_eip:     .long 0
s_dev:          .asciz "dev="
s_common:       .asciz " common="
s_notify:       .asciz " notify="
s_isr:          .asciz " isr="
s_msix:         .asciz " msix="
s_msix_phase:   .asciz "msix irq="
s_intx_phase:   .asciz "intx gsi="
s_irq:          .asciz " irq="
s_isrval:       .asciz " isr="
s_used:         .asciz " used="
s_status:       .asciz " status="
s_data:         .asciz " data="
s_pass:         .asciz "PASS"
s_fail:         .asciz "FAIL "
f_nodev:        .asciz "no virtio-blk function"
f_caps:         .asciz "capabilities incomplete"
f_features:     .asciz "FEATURES_OK not accepted"
f_vector:       .asciz "queue MSI-X vector not accepted"
f_pin:          .asciz "no interrupt pin"
f_isr:          .asciz "ISR queue bit not set"
f_used:         .asciz "used index"
f_status:       .asciz "request status"
f_data:         .asciz "sector data"
s_extra:        .asciz "intx extra="
f_unexpected:   .asciz "unexpected interrupt or exception, vector "
        .balign 16
        .space 4096
stack_top:
