/*
 * A boot sector that prints "tick NNNN" lines on COM1 forever (GNU as, 16-bit real
 * mode), with a busy delay between lines: while the vCPUs run the serial output grows,
 * while they are paused it does not. Used by the QMP stop/cont test.
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
        xorw    %bx, %bx                /* line counter */
line:
        movw    $msg, %si
print:
        lodsb
        testb   %al, %al
        jz      number
        call    putc
        jmp     print
number:
        movw    %bx, %ax
        movw    $4, %cx
digit:
        rolw    $4, %ax
        pushw   %ax
        andb    $0x0f, %al
        addb    $'0', %al
        cmpb    $'9', %al
        jbe     1f
        addb    $7, %al
1:      call    putc
        popw    %ax
        loop    digit
        movb    $'\r', %al
        call    putc
        movb    $'\n', %al
        call    putc
        incw    %bx
        movl    $0x80000, %ecx
delay:
        addr32 loop delay
        jmp     line

/* Writes %al to COM1 once the transmitter is empty. */
putc:
        pushw   %dx
        pushw   %ax
        movw    $0x3fd, %dx
2:      inb     %dx, %al
        testb   $0x20, %al
        jz      2b
        popw    %ax
        movw    $0x3f8, %dx
        outb    %al, %dx
        popw    %dx
        ret

msg:    .asciz  "tick "

        .org    510
        .byte   0x55, 0xaa
