#!/usr/bin/env python3
"""Writes the seed corpus of the `registers` target into seeds/registers/.

seabios-ide.trace is SeaBIOS probing and booting from an IDE controller in QEMU 10
(ide-hd on the first channel, an empty ide-cd on the second; see capture.sh), from
QEMU's ide_ioport_* and ide_data_* trace events. It is replayed in the op format of
fuzz_targets/ops.rs: register writes and reads, data-port word writes (ATAPI packets),
runs of data-port reads. The trace is cut into seeds at each IDENTIFY/PACKET command so
that each seed stays under libFuzzer's default -max_len.
"""

import os
import re
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "registers")


def ops(trace):
    out, reads = [], 0
    for line in open(trace):
        m = re.search(r"(rd|wr) @ 0x([0-9a-f]+) .*val 0x([0-9a-f]+)", line)
        if not m:
            continue
        port, val = int(m.group(2), 16), int(m.group(3), 16)
        ch = 0 if port & 0x1f0 == 0x1f0 else 1
        reg = port & 7
        if line.startswith("ide_data_readw"):
            reads += 1
            continue
        if reads:
            out.append(bytes([3 | ch << 7, reads // 4]))
            reads = 0
        if line.startswith("ide_data_writew"):
            out.append(bytes([2 | ch << 7]) + struct.pack("<H", val))
        elif line.startswith("ide_ioport_write"):
            out.append(bytes([0 | ch << 7, reg - 1, val]))
        elif line.startswith("ide_ioport_read"):
            out.append(bytes([1 | ch << 7, reg]))
    if reads:
        out.append(bytes([3, reads // 4]))
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    seeds, cur = [], b""
    for op in ops(os.path.join(HERE, "seabios-ide.trace")):
        # A command register write (reg 7) of IDENTIFY (0xec/0xa1) or PACKET (0xa0).
        if op[0] & 0x7f == 0 and op[1] == 6 and op[2] in (0xEC, 0xA1, 0xA0) and len(cur) > 256:
            seeds.append(cur)
            cur = b""
        cur += op
    seeds.append(cur)
    for i, data in enumerate(seeds):
        with open(os.path.join(OUT, f"seabios-{i:02}"), "wb") as f:
            f.write(data)
    print(f"wrote {len(seeds)} seeds to {OUT}")


if __name__ == "__main__":
    main()
