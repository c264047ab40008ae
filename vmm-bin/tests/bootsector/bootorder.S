/*
 * A boot sector that says which disk booted and what the firmware was told about the
 * boot order (GNU as, 16-bit real mode).
 *
 * It prints "BOOTED ?" on COM1 (the test patches the '?' to tell its disks apart),
 * the CMOS boot device registers as "CMOS 3D 38" (two hex bytes: QEMU's -boot
 * order/once), then the fw_cfg file "bootorder" byte for byte as "BOOTORDER[...]" (or
 * "NO BOOTORDER"), found through the file directory (key 0x19) on the traditional
 * ports 0x510/0x511, and exits through isa-debug-exit at 0xf4 with 0x10 (status 33).
 */
        .code16
        .text
        .globl _start
_start:
        cli
        xorw    %ax, %ax
        movw    %ax, %ds
        movw    %ax, %es
        movw    %ax, %ss
        movw    $0x7c00, %sp
        cld
        movw    $msg_booted, %si
        call    puts
        movw    $msg_cmos, %si
        call    puts
        movb    $0x3d, %al
        call    cmos_hex
        movb    $' ', %al
        call    putc
        movb    $0x38, %al
        call    cmos_hex
        movw    $msg_crlf, %si
        call    puts

        movw    $0x19, %ax              /* FW_CFG_FILE_DIR */
        movw    $0x510, %dx
        outw    %ax, %dx
        call    be32                    /* number of files */
        movw    %ax, %cx
entry:
        jcxz    not_found
        call    be32                    /* size */
        movw    %ax, size
        call    be32                    /* select (high half), reserved */
        shrl    $16, %eax
        movw    %ax, select
        movw    $name, %di              /* the 56-byte name */
        movw    $56, %bx
1:      inb     %dx, %al
        stosb
        decw    %bx
        jnz     1b
        pushw   %cx
        movw    $name, %si
        movw    $wanted, %di
        movw    $10, %cx                /* "bootorder" and its NUL */
        repe cmpsb
        popw    %cx
        je      found
        decw    %cx
        jmp     entry

found:
        movw    select, %ax
        movw    $0x510, %dx
        outw    %ax, %dx
        movw    $msg_open, %si
        call    puts
        movw    size, %cx
2:      jcxz    dumped
        movw    $0x511, %dx
        inb     %dx, %al
        call    putc
        decw    %cx
        jmp     2b
dumped:
        movw    $msg_close, %si
        call    puts
exit:
        movb    $0x10, %al
        outb    %al, $0xf4
3:      hlt
        jmp     3b

not_found:
        movw    $msg_none, %si
        call    puts
        jmp     exit

/* The next big-endian dword of the selected fw_cfg item in %eax (%dx = data port). */
be32:
        movw    $0x511, %dx
        movw    $4, %bx
        xorl    %eax, %eax
1:      shll    $8, %eax
        inb     %dx, %al
        decw    %bx
        jnz     1b
        ret

/* Prints CMOS register %al as two hex digits. */
cmos_hex:
        outb    %al, $0x70
        inb     $0x71, %al
        pushw   %ax
        shrb    $4, %al
        call    hex_digit
        popw    %ax
hex_digit:
        andb    $0x0f, %al
        addb    $'0', %al
        cmpb    $'9', %al
        jbe     putc
        addb    $7, %al
        /* fall through */

/* Writes %al to COM1. */
putc:
        pushw   %dx
        movb    %al, %ah
        movw    $0x3fd, %dx
1:      inb     %dx, %al
        testb   $0x20, %al
        jz      1b
        movb    %ah, %al
        movw    $0x3f8, %dx
        outb    %al, %dx
        popw    %dx
        ret

        .include "serial.S"

msg_booted:     .asciz "BOOTED ?\r\n"
msg_cmos:       .asciz "CMOS "
msg_crlf:       .asciz "\r\n"
msg_open:       .asciz "BOOTORDER["
msg_close:      .asciz "]\r\n"
msg_none:       .asciz "NO BOOTORDER\r\n"
wanted:         .asciz "bootorder"
size:           .word 0
select:         .word 0

        .org    510
        .byte   0x55, 0xaa
name:                                   /* 56 bytes past the sector, at 0x7e00 */
