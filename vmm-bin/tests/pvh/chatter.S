/*
 * Prints 64-byte lines on COM1 forever, and one '.' on the debugcon port (0x402) after
 * each line: the debugcon file (VMM_DEBUGCON) grows as long as the vCPU runs, whether
 * or not anyone reads the serial output.
 */
        .include "lib.S"

        pvh_entry
1:      mov $s_line, %esi
        call puts
        mov $0x402, %dx
        mov $'.', %al
        out %al, %dx
        jmp 1b

        .data
s_line:     .ascii "chatter: 0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQR\n"
            .byte 0
        .balign 16
        .space 1024
stack_top:
