/* Shared by the boot-sector programs (16-bit, included where the code goes). */

/* print the NUL-terminated string at DS:SI on COM1 */
puts:
        lodsb
        testb   %al, %al
        jz      1f
        movb    %al, %ah
        movw    $0x3fd, %dx
2:      inb     %dx, %al
        testb   $0x20, %al
        jz      2b
        movb    %ah, %al
        movw    $0x3f8, %dx
        outb    %al, %dx
        jmp     puts
1:      ret
