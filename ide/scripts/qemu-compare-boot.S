# Boot sector comparing our IDE with QEMU's (see ../DESIGN.md, "Compared with QEMU 10").
# Build: as --32 -o boot.o qemu-compare-boot.S && ld -m elf_i386 -Ttext 0x7c00 --oformat binary -o boot.bin boot.o
.code16
.globl _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov $0x7000, %sp
    # nIEN
    mov $0x3f6, %dx
    mov $0x02, %al
    out %al, %dx
    # 1: IDENTIFY
    mov $0xec, %al
    call cmd
    mov $256, %cx
1:  mov $0x1f0, %dx
    in %dx, %ax
    call emitw
    loop 1b
    call st
    # 2: IDENTIFY PACKET on a disk
    mov $0xa1, %al
    call cmd
    # 3: SET MULTIPLE 3
    mov $0x1f2, %dx
    mov $3, %al
    out %al, %dx
    mov $0xc6, %al
    call cmd
    # 4: READ SECTORS LBA 2047 count 2 (past the end)
    mov $0x1f6, %dx
    mov $0xe0, %al
    out %al, %dx
    mov $0x1f2, %dx
    mov $1, %al
    out %al, %dx
    mov $0x1f3, %dx
    mov $0x00, %al
    out %al, %dx
    mov $0x1f4, %dx
    mov $0x08, %al
    out %al, %dx
    mov $0x1f5, %dx
    xor %al, %al
    out %al, %dx
    mov $0x20, %al
    call cmd
    # 5: CHECK POWER MODE -> nsector
    mov $0xe5, %al
    call cmd
    # BM base from 00:01.1 BAR4; enable I/O + bus master
    mov $0xcf8, %dx
    mov $0x80000920, %eax
    out %eax, %dx
    mov $0xcfc, %dx
    in %dx, %eax
    and $0xfffc, %ax
    mov %ax, %bp
    mov $0xcf8, %dx
    mov $0x80000904, %eax
    out %eax, %dx
    mov $0xcfc, %dx
    mov $0x05, %ax
    out %ax, %dx
    # PRD at 0x8000 -> (0x9000, 512, EOT): short for 2 sectors
    movl $0x9000, 0x8000
    movl $0x80000200, 0x8004
    mov $2, %bl
    call dma
    # long: (0x9000, 4096, EOT) for 1 sector
    movl $0x80001000, 0x8004
    mov $1, %bl
    call dma
    # outside RAM: (0xd0000000, 512, EOT)
    movl $0xd0000000, 0x8000
    movl $0x80000200, 0x8004
    mov $1, %bl
    call dma
    mov $0xf4, %dx
    mov $0x00, %al
    out %al, %dx
    hlt

# READ DMA of %bl sectors at LBA 0, table at 0x8000; emits bm status, status, error.
dma:
    mov %bp, %dx
    xor %al, %al
    out %al, %dx            # stop
    add $2, %dx
    mov $0x66, %al          # clear int/err, keep DMA capable bits
    out %al, %dx
    add $2, %dx
    mov $0x8000, %eax
    out %eax, %dx
    mov $0x1f6, %dx
    mov $0xe0, %al
    out %al, %dx
    mov $0x1f2, %dx
    mov %bl, %al
    out %al, %dx
    mov $0x1f3, %dx
    xor %al, %al
    out %al, %dx
    inc %dx
    out %al, %dx
    mov $0x1f7, %dx
    mov $0xc8, %al
    out %al, %dx
    mov %bp, %dx
    mov $0x09, %al
    out %al, %dx
    mov $0x4000, %cx
2:  loop 2b
    mov %bp, %dx
    add $2, %dx
    in %dx, %al
    call emit
    jmp st

# issue command %al, wait not busy, emit status/error/nsector
cmd:
    mov $0x1f7, %dx
    out %al, %dx
3:  mov $0x3f6, %dx
    in %dx, %al
    test $0x80, %al
    jnz 3b
st:
    mov $0x3f6, %dx
    in %dx, %al
    call emit
    mov $0x1f1, %dx
    in %dx, %al
    call emit
    mov $0x1f2, %dx
    in %dx, %al
    call emit
    mov $0x1f7, %dx
    in %dx, %al
    ret

emitw:
    call emit
    mov %ah, %al
emit:
    push %dx
    mov $0xe9, %dx
    out %al, %dx
    pop %dx
    ret

. = _start + 510
.byte 0x55, 0xaa
