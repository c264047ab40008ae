#!/bin/sh
# Records what SeaBIOS asks of a virtio-blk disk when QEMU boots from it (a 1 MiB image
# whose boot sector spins), into seabios-virtio-blk.trace (host pointers replaced by P).
cd "$(dirname "$0")"
python3 -c "b=bytearray(1<<20); b[0:2]=b'\xeb\xfe'; b[510:512]=b'\x55\xaa'; open('/tmp/boot.img','wb').write(b)"
timeout 10 qemu-system-x86_64 -machine pc,accel=tcg -m 32 -display none -nodefaults \
  -serial null -drive file=/tmp/boot.img,if=none,id=d,format=raw -device virtio-blk-pci,drive=d \
  -trace 'virtio_blk_handle_*' -trace virtqueue_pop -trace virtio_blk_req_complete \
  -trace virtio_queue_notify -D /tmp/virtio-blk.trace
sed 's/0x[0-9a-f]\{12\}/P/g' /tmp/virtio-blk.trace > seabios-virtio-blk.trace
