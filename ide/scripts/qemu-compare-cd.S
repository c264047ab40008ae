# Boot sector comparing our ide-cd with QEMU's (see ../DESIGN.md, "Compared with QEMU 10").
# Build: as --32 -o cd.o qemu-compare-cd.S && ld -m elf_i386 -Ttext 0x7c00 --oformat binary -o cd.bin cd.o
.code16
.globl _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x7000, %sp
    mov $0x376, %dx
    mov $0x02, %al
    out %al, %dx
    mov $cdbs, %si
next:
    cmpb $0xee, (%si)
    je done
    call atapi
    add $12, %si
    jmp next
done:
    mov $0xf4, %dx
    xor %al, %al
    out %al, %dx
    hlt

atapi:
    push %si
    mov $0x176, %dx
    mov $0xa0, %al
    out %al, %dx
    mov $0x171, %dx
    xor %al, %al
    out %al, %dx
    mov $0x174, %dx
    mov $0xfe, %al
    out %al, %dx
    inc %dx
    mov $0xff, %al
    out %al, %dx
    mov $0x177, %dx
    mov $0xa0, %al
    out %al, %dx
    call wait
    mov $6, %cx
    mov $0x170, %dx
    rep outsw
phase:
    call wait
    test $0x08, %al
    jz status
    mov $0x174, %dx
    in %dx, %al
    mov %al, %cl
    inc %dx
    in %dx, %al
    mov %al, %ch
    mov %cl, %al
    call emit
    mov %ch, %al
    call emit
    shr $1, %cx
1:  mov $0x170, %dx
    in %dx, %ax
    call emit
    mov %ah, %al
    call emit
    loop 1b
    jmp phase
status:
    call emit
    mov $0x171, %dx
    in %dx, %al
    call emit
    mov $0x172, %dx
    in %dx, %al
    call emit
    mov $0x177, %dx
    in %dx, %al
    pop %si
    ret

wait:
    mov $0x376, %dx
    in %dx, %al
    test $0x80, %al
    jnz wait
    ret

emit:
    push %dx
    mov $0xe9, %dx
    out %al, %dx
    pop %dx
    ret

cdbs:
    .byte 0x00,0,0,0,0,0,0,0,0,0,0,0
    .byte 0x03,0,0,0,18,0,0,0,0,0,0,0
    .byte 0x00,0,0,0,0,0,0,0,0,0,0,0
    .byte 0x03,0,0,0,18,0,0,0,0,0,0,0
    .byte 0x12,0,0,0,36,0,0,0,0,0,0,0
    .byte 0x25,0,0,0,0,0,0,0,0,0,0,0
    .byte 0x5a,0,0x2a,0,0,0,0,0,64,0,0,0
    .byte 0x46,0,0,0,0,0,0,0,64,0,0,0
    .byte 0x43,0,0,0,0,0,0,0,64,0,0,0
    .byte 0x4a,1,0,0,0x10,0,0,0,8,0,0,0
    .byte 0x51,0,0,0,0,0,0,0,34,0,0,0
    .byte 0x1e,0,0,0,1,0,0,0,0,0,0,0
    .byte 0x1b,0,0,0,2,0,0,0,0,0,0,0
    .byte 0x03,0,0,0,18,0,0,0,0,0,0,0
    .byte 0x28,0,0,0,0,1,0,0,1,0,0,0
    .byte 0xee
. = _start + 510
.byte 0x55, 0xaa
