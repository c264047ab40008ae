#!/bin/sh
# Records SeaBIOS's IDE register and data-port traffic in QEMU (ide-hd on ide.0 with a
# spinning boot sector, an empty ide-cd on ide.1), into seabios-ide.trace.
cd "$(dirname "$0")"
python3 -c "b=bytearray(1<<20); b[0:2]=b'\xeb\xfe'; b[510:512]=b'\x55\xaa'; open('/tmp/ide.img','wb').write(b)"
timeout 10 qemu-system-x86_64 -machine pc,accel=tcg -m 32 -display none -nodefaults -serial null \
  -drive file=/tmp/ide.img,if=none,id=h,format=raw -device ide-hd,drive=h,bus=ide.0 \
  -drive if=none,id=c,media=cdrom -device ide-cd,drive=c,bus=ide.1 -boot order=d \
  -trace 'ide_ioport_*' -trace 'ide_data_*' -D /tmp/ide.trace
grep '^ide_' /tmp/ide.trace | sed 's/0x[0-9a-f]\{12\}/P/g' > seabios-ide.trace
