/*
 * A boot sector that tests the i440FX PAM registers (GNU as, 16-bit real mode).
 *
 * SeaBIOS has copied itself into RAM at 0xE0000-0xFFFFF and write-protected the
 * F segment (PAM0 = 0x10) before it loads us at 0x7c00. With interrupts off (the
 * BIOS's handlers live in the segment we remap) and no BIOS calls until the end, the
 * program checks, on the dword at F000:FFF0 (the reset vector's far jump):
 *   1. a write does not stick (read-only RAM);
 *   2. PAM0's high nibble reads 1 (mode 1, what SeaBIOS left);
 *   3. PAM0 = 0x30 (RAM read/write): a write sticks;
 *   4. PAM0 = 0x00 (PCI: the isa-bios ROM alias): the ROM's dword reads back (not the
 *      one just written to RAM), and a write to the ROM does not stick;
 *   5. PAM0 = 0x10: RAM is back, still holding step 3's write (restored afterwards);
 *   6. PAM5's high nibble = 0 (0xDC000-0xDFFFF to PCI, where nothing decodes): reads
 *      are all ones and writes are dropped; the old setting brings the RAM back.
 * Then it plants "mov $0x12, %al; out %al, $0xf4; hlt" over the POST entry point in
 * the shadow RAM (F000:E05B), leaves the segment read-only again, prints PASS and
 * READY on COM1 and halts. A system_reset must give the CPU the ROM again (PAM
 * registers 0), so that the firmware boots this sector a second time; if it ran the
 * shadow RAM instead, the planted code exits through isa-debug-exit with status 37.
 *
 * Failure prints "FAIL n" (n = step) and exits through isa-debug-exit at 0xf4 with
 * 0x11 (status 35).
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
        movw    $0xf000, %ax
        movw    %ax, %es
        movl    %es:0xfff0, %eax
        movl    %eax, orig

        /* 1. F segment read-only after boot */
        movb    $'1', step
        notl    %eax
        movl    %eax, %es:0xfff0
        movl    %es:0xfff0, %ebx
        cmpl    orig, %ebx
        jne     fail

        /* 2. PAM0 says mode 1 */
        movb    $'2', step
        movb    $0x59, %bl
        call    cfg_read
        andb    $0xf0, %al
        cmpb    $0x10, %al
        jne     fail

        /* 3. mode 3: RAM read/write */
        movb    $'3', step
        movb    $0x30, %cl
        call    set_pam0
        movl    orig, %eax
        notl    %eax
        movl    %eax, %es:0xfff0
        cmpl    %es:0xfff0, %eax
        jne     fail

        /* 4. mode 0: the ROM again, read-only */
        movb    $'4', step
        movb    $0x00, %cl
        call    set_pam0
        movl    %es:0xfff0, %eax
        cmpl    orig, %eax
        jne     fail
        notl    %eax
        movl    %eax, %es:0xfff0
        movl    %es:0xfff0, %ebx
        cmpl    orig, %ebx
        jne     fail

        /* 5. mode 1: the RAM kept step 3's write */
        movb    $'5', step
        movb    $0x10, %cl
        call    set_pam0
        movl    orig, %eax
        notl    %eax
        cmpl    %es:0xfff0, %eax
        jne     fail
        movb    $0x30, %cl
        call    set_pam0
        movl    orig, %eax
        movl    %eax, %es:0xfff0

        /* 6. 0xDC000 (PAM5 high nibble) in the PCI mode: nothing there */
        movb    $'6', step
        movw    $0xdc00, %ax
        movw    %ax, %fs
        movl    %fs:0, %eax
        movl    %eax, saved
        movb    $0x5d, %bl
        call    cfg_read
        movb    %al, pam5
        movb    %al, %cl
        andb    $0x0f, %cl
        call    cfg_write
        movl    %fs:0, %eax
        cmpl    $0xffffffff, %eax
        jne     fail
        movl    $0x12345678, %fs:0
        movl    %fs:0, %eax
        cmpl    $0xffffffff, %eax
        jne     fail
        movb    pam5, %cl
        call    cfg_write
        movl    %fs:0, %eax
        cmpl    saved, %eax
        jne     fail

        /* plant the reset trap over F000:E05B, still in mode 3, then mode 1 */
        movb    $'7', step
        movl    trap, %eax
        movl    %eax, %es:0xe05b
        movb    trap + 4, %al
        movb    %al, %es:0xe05f
        movb    $0x10, %cl
        call    set_pam0
        movl    trap, %eax
        cmpl    %es:0xe05b, %eax
        jne     fail

        movw    $msg_pass, %si
        call    puts
halt:
        cli
        hlt
        jmp     halt

fail:
        movw    $msg_fail, %si
        call    puts
        movb    $0x11, %al
        outb    %al, $0xf4
        jmp     halt

/* PAM0 (config 0x59 of 00:00.0) = %cl */
set_pam0:
        movb    $0x59, %bl
        /* fall through */
/* config byte %bl of 00:00.0 = %cl */
cfg_write:
        call    cfg_select
        movb    %cl, %al
        outb    %al, %dx
        ret
/* %al = config byte %bl of 00:00.0 */
cfg_read:
        call    cfg_select
        inb     %dx, %al
        ret
/* address register for byte %bl; %dx = its data port (0xcfc + %bl & 3) */
cfg_select:
        movzbl  %bl, %eax
        andb    $0xfc, %al
        orl     $0x80000000, %eax
        movw    $0xcf8, %dx
        outl    %eax, %dx
        movb    %bl, %dl
        andb    $3, %dl
        orb     $0xfc, %dl
        ret

        .include "serial.S"

/* mov $0x12, %al; out %al, $0xf4; hlt */
trap:   .byte 0xb0, 0x12, 0xe6, 0xf4, 0xf4
msg_pass: .ascii "PASS\r\nREADY\r\n"
        .byte 0
msg_fail: .ascii "FAIL "
step:   .ascii "0\r\n"
        .byte 0
pam5:   .byte 0
        .balign 4
orig:   .long 0
saved:  .long 0

        .org 510
        .byte 0x55, 0xaa
