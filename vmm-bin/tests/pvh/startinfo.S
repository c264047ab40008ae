/*
 * PVH boot check: entered at `pvh_start` in 32-bit flat protected mode with %ebx =
 * the hvm_start_info. Prints what it was given on COM1, one `key=value` per line, for
 * the host to compare with what it passed:
 *
 *   cr0=<hex>                  (PE set, PG clear)
 *   cpuid1=<ecx hex>           CPUID leaf 1's ECX (feature flags)
 *   magic=<hex> version=<hex>
 *   cmdline=<string>
 *   memmap=<count>             then per entry: e820 <addr> <size> <type>
 *   modules=<count>            then per module: module <paddr> <size> <first 4 bytes>
 *   mp=<hex>                   the MP floating pointer's address (0: none found)
 *   mpcpus=<count> mpsum=<checksums ok: 1>
 *   END
 * and exits through isa-debug-exit with 0x10 (status 33).
 */
        .include "lib.S"

        .text
        .globl pvh_start
pvh_start:
        cli
        mov $stack_top, %esp
        mov %ebx, %ebp                  /* start info */

        mov $s_cr0, %esi
        call puts
        mov %cr0, %eax
        call hex32
        call newline

        mov $s_cpuid1, %esi
        call puts
        mov $1, %eax
        xor %ecx, %ecx
        cpuid
        mov %ecx, %eax
        call hex32
        call newline

        mov $s_magic, %esi
        call puts
        mov 0(%ebp), %eax
        call hex32
        mov $s_version, %esi
        call puts
        mov 4(%ebp), %eax
        call hex32
        call newline

        mov $s_cmdline, %esi
        call puts
        mov 24(%ebp), %esi              /* cmdline_paddr (low half) */
        call puts
        call newline

        /* The memory map. */
        mov $s_memmap, %esi
        call puts
        mov 48(%ebp), %ecx              /* memmap_entries */
        mov %ecx, %eax
        call hex32
        call newline
        mov 40(%ebp), %edi              /* memmap_paddr */
        test %ecx, %ecx
        jz 2f
1:      mov $s_e820, %esi
        call puts
        mov %edi, %esi
        call hex64                      /* addr */
        call space
        lea 8(%edi), %esi
        call hex64                      /* size */
        call space
        mov 16(%edi), %eax
        call hex32                      /* type */
        call newline
        add $24, %edi
        loop 1b
2:
        /* The modules. */
        mov $s_modules, %esi
        call puts
        mov 12(%ebp), %ecx              /* nr_modules */
        mov %ecx, %eax
        call hex32
        call newline
        mov 16(%ebp), %edi              /* modlist_paddr */
        test %ecx, %ecx
        jz 4f
3:      mov $s_module, %esi
        call puts
        mov %edi, %esi
        call hex64                      /* paddr */
        call space
        lea 8(%edi), %esi
        call hex64                      /* size */
        call space
        mov (%edi), %eax
        mov (%eax), %eax                /* the module's first dword */
        call hex32
        call newline
        add $32, %edi
        loop 3b
4:
        /* The MP floating pointer: "_MP_" on a 16-byte boundary in 0xF0000-0xFFFFF. */
        xor %edx, %edx                  /* found address */
        mov $0xf0000, %edi
5:      cmpl $0x5f504d5f, (%edi)        /* "_MP_" */
        jne 6f
        mov %edi, %edx
        jmp 7f
6:      add $16, %edi
        cmp $0x100000, %edi
        jb 5b
7:      mov $s_mp, %esi
        call puts
        mov %edx, %eax
        call hex32
        call newline
        test %edx, %edx
        jz 9f

        /* Checksums: the floating pointer (16 bytes) and the table (its length). */
        mov $1, %ebx                    /* all sums zero */
        mov %edx, %esi
        mov $16, %ecx
        call sum8
        jz 1f
        xor %ebx, %ebx
1:      mov 4(%edx), %esi               /* the configuration table */
        cmpl $0x504d4350, (%esi)        /* "PCMP" */
        je 2f
        xor %ebx, %ebx
2:      movzwl 4(%esi), %ecx            /* base table length */
        push %esi
        call sum8
        pop %esi
        jz 3f
        xor %ebx, %ebx
3:      /* Count processor entries (type 0, 20 bytes; others 8 bytes). */
        movzwl 34(%esi), %ecx           /* entry count */
        lea 44(%esi), %edi
        xor %eax, %eax
4:      test %ecx, %ecx
        jz 8f
        cmpb $0, (%edi)
        jne 5f
        testb $1, 3(%edi)               /* enabled */
        jz 6f
        inc %eax
6:      add $20, %edi
        dec %ecx
        jmp 4b
5:      add $8, %edi
        dec %ecx
        jmp 4b
8:      mov $s_mpcpus, %esi
        call puts
        call hex32
        mov $s_mpsum, %esi
        call puts
        mov %ebx, %eax
        call hex32
        call newline
9:
        mov $s_end, %esi
        call puts
        call newline
        mov $0x10, %al
        jmp debug_exit

/* sum8: the byte sum of %ecx bytes at %esi; ZF set when it is zero. */
sum8:
        xor %al, %al
1:      add (%esi), %al
        inc %esi
        loop 1b
        test %al, %al
        ret

        .data
s_cr0:      .asciz "cr0="
s_cpuid1:   .asciz "cpuid1="
s_magic:    .asciz "magic="
s_version:  .asciz " version="
s_cmdline:  .asciz "cmdline="
s_memmap:   .asciz "memmap="
s_e820:     .asciz "e820 "
s_modules:  .asciz "modules="
s_module:   .asciz "module "
s_mp:       .asciz "mp="
s_mpcpus:   .asciz "mpcpus="
s_mpsum:    .asciz " mpsum="
s_end:      .asciz "END"
        .balign 16
        .space 4096
stack_top:
