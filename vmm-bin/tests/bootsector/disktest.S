/*
 * A boot sector that tests the BIOS disk path (GNU as, 16-bit real mode).
 *
 * SeaBIOS loads it at 0x7c00 with DL = the boot drive. It reads 2048 sectors (1 MiB)
 * after itself with INT 13h AH=42h (extended read, 64 sectors = 32 KiB per call into
 * 0x1000:0), checks that every dword of sector N (N counted from 1) equals
 * N * 0x10000 + dword index, writes one sector (LBA 4096, a copy of 0x1000:0 = sector 1985) with AH=43h, reads it back
 * and compares, then prints PASS (or FAIL) on COM1 and exits through isa-debug-exit at
 * 0xf4: 0x10 for PASS (status 33), 0x11 for FAIL (status 35).
 */
        .code16
        .text
        .globl _start
_start:
        cli
        xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %ss
        movw    $0x7c00, %sp
        sti
        movb    %dl, drive

        movl    $1, %ebx                /* next LBA */
read_loop:
        movl    %ebx, dap_lba
        movw    $64, dap_count
        movw    $0x0000, dap_off
        movw    $0x1000, dap_seg
        movw    $dap, %si
        movb    drive, %dl
        movb    $0x42, %ah
        int     $0x13
        jc      fail
        /* check the 64 sectors at 0x1000:0 */
        pushw   %ds
        movw    $0x1000, %ax
        movw    %ax, %ds
        xorw    %si, %si
        movl    %ebx, %edx              /* sector number */
        movw    $64, %cx
chk_sector:
        xorl    %edi, %edi              /* dword index within the sector */
chk_dword:
        movl    %edx, %eax
        shll    $16, %eax
        orl     %edi, %eax
        cmpl    (%si), %eax
        jne     fail_pop
        addw    $4, %si
        incl    %edi
        cmpl    $128, %edi
        jne     chk_dword
        incl    %edx
        loop    chk_sector
        popw    %ds
.ifdef LOOP
        movw    $msg_dot, %si           /* disk_loop.S: a dot per checked batch */
        call    puts
.endif
        addl    $64, %ebx
        cmpl    $2049, %ebx
        jb      read_loop

        /* write LBA 4096 from 0x1000:0 (the last sector read), read it back to 0x2000:0 */
        movl    $4096, dap_lba
        movw    $1, dap_count
        movw    $0x1000, dap_seg
        movw    $dap, %si
        movb    drive, %dl
        movw    $0x4300, %ax
        int     $0x13
        jc      fail
        movw    $1, dap_count
        movw    $0x2000, dap_seg
        movw    $dap, %si
        movb    drive, %dl
        movb    $0x42, %ah
        int     $0x13
        jc      fail
        pushw   %ds
        pushw   %es
        movw    $0x1000, %ax
        movw    %ax, %ds
        movw    $0x2000, %ax
        movw    %ax, %es
        xorw    %si, %si
        xorw    %di, %di
        movw    $256, %cx
        cld
        repe    cmpsw
        popw    %es
        popw    %ds
        jne     fail

        movw    $msg_pass, %si
        call    puts
.ifdef LOOP
        movl    $1, %ebx                /* disk_loop.S: again, forever */
        jmp     read_loop
.endif
        movb    $0x10, %al
        outb    %al, $0xf4
        jmp     halt
fail_pop:
        popw    %ds
fail:
        movw    $msg_fail, %si
        call    puts
        movb    $0x11, %al
        outb    %al, $0xf4
halt:
        hlt
        jmp     halt

        .include "serial.S"

msg_pass: .asciz "PASS\r\n"
msg_fail: .asciz "FAIL\r\n"
.ifdef LOOP
msg_dot: .asciz "."
.endif
drive:  .byte 0
        .balign 4
dap:    .byte 16, 0
dap_count: .word 0
dap_off: .word 0
dap_seg: .word 0
dap_lba: .long 0, 0

        .org 510
        .byte 0x55, 0xaa
