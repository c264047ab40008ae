#!/bin/sh
# Records the CDBs SeaBIOS sends a scsi-hd behind virtio-scsi in QEMU, into
# seabios-scsi.trace.
cd "$(dirname "$0")"
python3 -c "b=bytearray(1<<20); b[0:2]=b'\xeb\xfe'; b[510:512]=b'\x55\xaa'; open('/tmp/scsi.img','wb').write(b)"
timeout 10 qemu-system-x86_64 -machine pc,accel=tcg -m 32 -display none -nodefaults -serial null \
  -drive file=/tmp/scsi.img,if=none,id=s,format=raw -device virtio-scsi-pci,id=scsi \
  -device scsi-hd,drive=s,bus=scsi.0 -trace scsi_disk_new_request -D /tmp/scsi.trace
grep scsi_disk_new_request /tmp/scsi.trace > seabios-scsi.trace
