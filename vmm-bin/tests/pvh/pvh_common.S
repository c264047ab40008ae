/*
 * What lib.S (32-bit programs) and long_mode.S (64-bit programs) share: the PVH ELF
 * note naming `pvh_start`, the nibble-to-ASCII step of the hex printers, and
 * debug_exit. Everything here assembles to the same bytes in either mode.
 */
        .section .note.Xen, "a", @note
        .balign 4
        .long 4                 /* namesz: "Xen\0" */
        .long 4                 /* descsz */
        .long 18                /* XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz "Xen"
        .balign 4
        .long pvh_start

/* nibble_to_ascii: the low 4 bits of %al as a lowercase hex digit, in %al. */
.macro nibble_to_ascii
        and $0xf, %al
        cmp $10, %al
        jb 1f
        add $('a' - '0' - 10), %al
1:      add $'0', %al
.endm

        .text
/* debug_exit: writes %al to isa-debug-exit at 0xf4 (QEMU's status: (al << 1) | 1);
   does not return. */
debug_exit:
        out %al, $0xf4
1:      hlt
        jmp 1b
