/*
 * A boot sector that locks the tray of the CD drive on the secondary channel's master
 * (GNU as, 16-bit real mode): it sends the ATAPI packet PREVENT ALLOW MEDIUM REMOVAL
 * (prevent = 1) by PIO with nIEN set, retrying while the drive reports the power-on
 * medium change, then prints "LOCKED" (or "NOLOCK") on COM1 and halts, leaving the
 * monitor to try its eject against the locked tray.
 */
        .code16
        .text
        .globl _start
        .include "entry.S"
        movw    $0x376, %dx             /* device control: nIEN */
        movb    $0x02, %al
        outb    %al, %dx
        movw    $8, %bp                 /* tries */
try:
        movw    $0x176, %dx             /* select the master */
        movb    $0xa0, %al
        outb    %al, %dx
        call    not_busy
        movw    $0x171, %dx             /* features: PIO */
        xorb    %al, %al
        outb    %al, %dx
        movw    $0x174, %dx             /* byte count limit 0x800 */
        outb    %al, %dx
        incw    %dx
        movb    $0x08, %al
        outb    %al, %dx
        movw    $0x177, %dx             /* PACKET */
        movb    $0xa0, %al
        outb    %al, %dx
        call    not_busy
        testb   $0x08, %al              /* DRQ: the drive takes the packet */
        jz      again
        movw    $packet, %si
        movw    $6, %cx
        movw    $0x170, %dx
        cld
        rep     outsw
        call    not_busy
        testb   $0x01, %al              /* ERR: not ready or unit attention */
        jz      locked
again:
        decw    %bp
        jnz     try
        movw    $msg_nolock, %si
        jmp     say
locked:
        movw    $msg_locked, %si
say:
        call    puts
1:      hlt
        jmp     1b

/* wait until BSY clears; AL = the status */
not_busy:
        movw    $0x177, %dx
1:      inb     %dx, %al
        testb   $0x80, %al
        jnz     1b
        ret

        .include "serial.S"

msg_locked: .asciz "LOCKED\r\n"
msg_nolock: .asciz "NOLOCK\r\n"
        .balign 2
packet: .byte 0x1e, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0

        .org 510
        .byte 0x55, 0xaa
