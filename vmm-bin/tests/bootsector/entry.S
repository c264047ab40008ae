/*
 * The entry of the boot images that include it (16-bit): CS:IP made 0000:7c00 (El
 * Torito may enter a no-emulation image at 07c0:0000), the stack below the image,
 * DS = 0. DL (the boot drive) is kept.
 */
_start:
        ljmpw   $0, $entry
entry:
        cli
        xorw    %ax, %ax
        movw    %ax, %ss
        movw    $0x7c00, %sp
        movw    %ax, %ds
        sti
