#!/bin/sh
# Records SeaBIOS's fw_cfg accesses during a QEMU boot (no disk: POST, then "no
# bootable device"), into seabios-fw_cfg.trace (host pointers replaced by S).
cd "$(dirname "$0")"
timeout 8 qemu-system-x86_64 -machine pc,accel=tcg -m 32 -display none -nodefaults \
  -serial null -trace fw_cfg_select -trace fw_cfg_read -D /tmp/fw_cfg.trace
sed 's/0x[0-9a-f]\{12\} /S /' /tmp/fw_cfg.trace > seabios-fw_cfg.trace
