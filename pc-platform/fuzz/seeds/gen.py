#!/usr/bin/env python3
"""Writes the seed corpus of the `fw_cfg` target into seeds/fw_cfg/.

seabios-fw_cfg.trace is what SeaBIOS did to fw_cfg during a QEMU 10 boot, recorded with
QEMU's trace events (see capture.sh): every selector write, and every byte read from
the data port. A select followed by traced reads is replayed as port accesses; a select
with no traced reads was a DMA transfer (QEMU traces the select, not the copy), replayed
as SeaBIOS does it: an FWCfgDmaAccess at 0x7000 with SELECT|READ into 0x8000, its
address written high half first (0x514), then low half (0x518, which starts it).
Hand-written variants add the interface's edge cases. The op format is described in
fuzz_targets/fw_cfg.rs.
"""

import os
import re
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "scripts", "fuzz-common"))
from seeds import write_seeds  # noqa: E402
OUT = os.path.join(HERE, "fw_cfg")
SELECT, READ, SKIP, WRITE = 0x08, 0x02, 0x04, 0x10
DESC, BUF = 0x7000, 0x8000


def select(key):
    return bytes([0x10]) + struct.pack("<I", key)  # op 0, width 2


def port_read(n):
    return bytes([0x01]) * n  # op 1, width 1


def dma_desc(at, control, length, address):
    return bytes([7]) + struct.pack("<IIII", at, control, length, address)


def dma_start(desc):
    # op 4 width 4: high half at offset 0, then low half at offset 4.
    return bytes([0x24, 0]) + struct.pack("<Q", 0) + bytes([0x24, 4]) + struct.pack("<Q", desc)


def dma_read(key, length):
    return dma_desc(DESC, key << 16 | SELECT | READ, length, BUF) + dma_start(DESC)


def replay(trace):
    """The traced accesses as ops."""
    events = []
    for line in open(trace):
        m = re.match(r"fw_cfg_select \S+ key (0x[0-9a-f]+)", line)
        if m:
            events.append([int(m.group(1), 16), 0])
        elif line.startswith("fw_cfg_read") and events:
            events[-1][1] += 1
    out = b""
    for key, reads in events:
        out += select(key) + port_read(reads) if reads else dma_read(key, 452 if key == 0x19 else 64)
    return out


def main():
    seabios = replay(os.path.join(HERE, "seabios-fw_cfg.trace"))
    seeds = {
        "seabios-boot": seabios,
        "dma-signature-and-64bit-start": bytes([0x05, 0]) + bytes([0x35, 0])
        + dma_desc(DESC, SELECT, 0, 0) + bytes([0x34, 0]) + struct.pack(">Q", DESC)[::-1],
        "dma-skip-then-port-read": dma_desc(DESC, 0x19 << 16 | SELECT | SKIP, 4, 0)
        + dma_start(DESC) + port_read(8),
        "dma-write-is-error": dma_desc(DESC, 0x20 << 16 | SELECT | WRITE, 4, BUF) + dma_start(DESC),
        "dma-past-item-and-ram": dma_desc(DESC, 0x21 << 16 | SELECT | READ, 0x20000, 0xF000)
        + dma_start(DESC),
        "dma-desc-in-hole": dma_start(0x18000),
        "dma-into-removed-block": bytes([9, 1]) + dma_desc(DESC, 0x19 << 16 | SELECT | READ, 64, 0x20000)
        + dma_start(DESC),
        "port-widths-and-reset": bytes([0x00]) + struct.pack("<I", 0x4019) + bytes([0x21, 0x31, 0x03, 0x08, 0x01]),
    }
    write_seeds(OUT, seeds)


if __name__ == "__main__":
    main()
