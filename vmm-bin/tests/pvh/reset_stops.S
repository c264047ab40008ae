/*
 * Asks for a machine reset through the i8042 (command 0xFE on port 0x64), then keeps
 * printing "LEAK" on COM1. The vCPU that asked must run no further guest code: under
 * -no-reboot the VMM exits with status 0, and "LEAK" never appears.
 */
        .include "lib.S"

        .text
        .globl pvh_start
pvh_start:
        cli
        mov $stack_top, %esp
        mov $s_reset, %esi
        call puts
        mov $0xfe, %al
        out %al, $0x64                  /* pulse the reset line */
        /* Straight to the transmitter, no status polling: the first byte leaves within
           one exit of the reset request. */
        mov $0x3f8, %dx
1:      mov $'L', %al
        out %al, %dx
        mov $'E', %al
        out %al, %dx
        mov $'A', %al
        out %al, %dx
        mov $'K', %al
        out %al, %dx
        jmp 1b

        .data
s_reset:    .asciz "RESET\n"
        .balign 16
        .space 1024
stack_top:
