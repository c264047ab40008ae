/*
 * Shared pieces of the PVH test programs: 32-bit flat protected mode, no paging.
 * A PVH ELF note naming `pvh_start`, a stack, COM1 output and isa-debug-exit.
 *
 * Register use: print routines preserve everything but flags.
 */
        .code32

        .include "pvh_common.S"

        .text

/* pvh_entry: the program's entry point, `pvh_start`: interrupts off, the stack (the
   program's `stack_top`) set up. */
.macro pvh_entry
        .text
        .globl pvh_start
pvh_start:
        cli
        mov $stack_top, %esp
.endm

/* putc: %al to COM1 (polls the transmitter-empty bit). */
putc:
        push %edx
        push %eax
1:      mov $0x3fd, %dx
        in %dx, %al
        test $0x20, %al
        jz 1b
        pop %eax
        mov $0x3f8, %dx
        out %al, %dx
        pop %edx
        ret

/* puts: the NUL-terminated string at %esi. */
puts:
        push %esi
        push %eax
1:      lodsb
        test %al, %al
        jz 2f
        call putc
        jmp 1b
2:      pop %eax
        pop %esi
        ret

/* hex32: %eax as 8 hex digits. */
hex32:
        push %ecx
        push %eax
        push %ebx
        mov %eax, %ebx
        mov $8, %ecx
1:      rol $4, %ebx
        mov %ebx, %eax
        call hexdigit
        loop 1b
        pop %ebx
        pop %eax
        pop %ecx
        ret

/* hex8: %al as 2 hex digits. */
hex8:
        push %eax
        shr $4, %al
        call hexdigit
        pop %eax
/* hexdigit: the low 4 bits of %al as a hex digit. */
hexdigit:
        push %eax
        nibble_to_ascii
        call putc
        pop %eax
        ret

/* hex64: the quadword at (%esi) as 16 hex digits. */
hex64:
        push %eax
        mov 4(%esi), %eax
        call hex32
        mov (%esi), %eax
        call hex32
        pop %eax
        ret

/* space / newline */
space:
        push %eax
        mov $' ', %al
        call putc
        pop %eax
        ret
newline:
        push %eax
        mov $'\n', %al
        call putc
        pop %eax
        ret

