/*
 * Prints "PANIC-NEXT", then writes to port 0x4f0, where a debug build of the VMM maps
 * its panic test hook (VMM_TEST_PANIC_PORT=0x4f0): the write panics the vCPU thread.
 * "SURVIVED" must never appear: the vCPU is gone and the VMM ends with status 1.
 */
        .include "lib.S"

        pvh_entry
        mov $s_next, %esi
        call puts
        mov $0x4f0, %dx
        mov $0x42, %al
        out %al, %dx
        mov $s_survived, %esi
        call puts
1:      hlt
        jmp 1b

        .data
s_next:     .asciz "PANIC-NEXT\n"
s_survived: .asciz "SURVIVED\n"
        .balign 16
        .space 1024
stack_top:
