/*
 * An El Torito no-emulation boot image that tests the BIOS CD path (GNU as, 16-bit).
 *
 * SeaBIOS loads it at 0x7c00 with DL = the CD's drive number. It reads the ISO 9660
 * primary volume descriptor (2048-byte sector 16) with INT 13h AH=42h into 0x1000:0,
 * checks its identifier "CD001" at offset 1, prints "CD PASS" (or "CD FAIL") on COM1
 * and exits through isa-debug-exit at 0xf4: 0x10 for PASS (status 33), 0x11 for FAIL.
 */
        .code16
        .text
        .globl _start
        .include "entry.S"
        /* DL = the CD drive, as SeaBIOS left it */
        movw    $dap, %si
        movb    $0x42, %ah
        int     $0x13
        jc      fail
        movw    $0x1000, %ax
        movw    %ax, %es
        movw    $1, %di
        movw    $ident, %si
        movw    $5, %cx
        cld
        repe    cmpsb
        jne     fail
        movb    $0x10, %bl              /* PASS */
        movw    $msg_pass, %si
        jmp     report
fail:
        movb    $0x11, %bl              /* FAIL */
        movw    $msg_fail, %si
report:
        call    puts
        movb    %bl, %al
        outb    %al, $0xf4
1:      hlt
        jmp     1b

        .include "serial.S"

msg_pass: .asciz "CD PASS\r\n"
msg_fail: .asciz "CD FAIL\r\n"
ident:  .ascii "CD001"
        .balign 4
dap:    .byte 16, 0
        .word 1                 /* one 2048-byte sector */
        .word 0, 0x1000         /* to 0x1000:0 */
        .long 16, 0             /* LBA 16: the primary volume descriptor */

        .org 510
        .byte 0x55, 0xaa
