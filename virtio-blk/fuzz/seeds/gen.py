#!/usr/bin/env python3
"""Writes the seed corpus of the `chains` target into seeds/chains/.

seabios-virtio-blk.trace is what SeaBIOS sent a virtio-blk device during a QEMU 10
boot from a 1 MiB image (see capture.sh): QEMU's virtqueue_pop (descriptor counts) and
virtio_blk_handle_read (sector, count) trace events. Each traced request is laid out
as SeaBIOS lays it out (vring of 128 entries at 0x9000: descriptors, then the avail
ring, the used ring on the next page; a 3-descriptor chain: 16-byte header out, data
in, status byte in), published and popped. Hand-written variants add what Linux does
(indirect tables, EVENT_IDX, multi-segment writes, flush, GET_ID, discard) and the
hostile cases (loops, addresses outside RAM, an avail index moved too far, a block
removed under a published chain). The op format is described in fuzz_targets/chains.rs.
"""

import os
import re
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "scripts", "fuzz-common"))
from seeds import write_seeds  # noqa: E402
OUT = os.path.join(HERE, "chains")
NEXT, WRITE, INDIRECT = 1, 2, 4
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
DESC, AVAIL, USED = 0x9000, 0x9800, 0xA000  # SeaBIOS's vring_init for 128 entries


def header(size_log2=7, flags=0, desc=DESC, avail=AVAIL, used=USED, next_avail=0):
    return struct.pack("<BBIIIH", size_log2 - 1, flags, desc, avail, used, next_avail)


def desc(index, addr, length, flags, nxt=0):
    return bytes([1]) + struct.pack("<HQIHH", index, addr, length, flags, nxt)


def blk_header(at, kind, sector):
    return bytes([6]) + struct.pack("<IIQ", at, kind, sector)


def poke(at, data):
    return bytes([0]) + struct.pack("<IB", at, len(data)) + data


def publish(head):
    return bytes([9]) + struct.pack("<H", head)


POP = bytes([4])


def seabios(trace):
    out = header()
    for line in open(trace):
        m = re.search(r"virtio_blk_handle_read .* sector (\d+) nsectors (\d+)", line)
        if m:
            sector, count = int(m.group(1)), int(m.group(2))
            out += blk_header(0x1000, T_IN, sector)
            out += desc(0, 0x1000, 16, NEXT, 1) + desc(1, 0x2000, 512 * count, WRITE | NEXT, 2)
            out += desc(2, 0x3000, 1, WRITE) + publish(0) + POP
    return out


def main():
    linux_indirect = (
        header(size_log2=8, flags=1)
        + blk_header(0x1000, T_OUT, 8)
        # Indirect table at 0x4000: header, two data segments, status.
        + poke(0x4000, struct.pack("<QIHH", 0x1000, 16, NEXT, 1) + struct.pack("<QIHH", 0x5000, 512, NEXT, 2))
        + poke(0x4020, struct.pack("<QIHH", 0x2_1000, 1024, NEXT, 3) + struct.pack("<QIHH", 0x3000, 1, WRITE, 0))
        + desc(5, 0x4000, 64, INDIRECT)
        + publish(5)
        + bytes([7]) + struct.pack("<HH", 0, 1)  # avail flags, used_event
        + POP
        + blk_header(0x1100, T_FLUSH, 0) + desc(6, 0x1100, 16, NEXT, 7) + desc(7, 0x3001, 1, WRITE) + publish(6)
        + blk_header(0x1200, T_GET_ID, 0) + desc(8, 0x1200, 16, NEXT, 9) + desc(9, 0x6000, 20, WRITE | NEXT, 10)
        + desc(10, 0x3002, 1, WRITE) + publish(8)
        + POP
    )
    discard = (
        header()
        + blk_header(0x1000, T_DISCARD, 0) + poke(0x1010, struct.pack("<QII", 16, 8, 0))
        + desc(0, 0x1000, 32, NEXT, 1) + desc(1, 0x3000, 1, WRITE) + publish(0)
        + blk_header(0x1100, T_WRITE_ZEROES, 0) + poke(0x1110, struct.pack("<QII", 2040, 8, 1))
        + desc(2, 0x1100, 32, NEXT, 3) + desc(3, 0x3001, 1, WRITE) + publish(2)
        + POP
    )
    seeds = {
        "seabios-boot": seabios(os.path.join(HERE, "seabios-virtio-blk.trace")),
        "linux-indirect-event-idx": linux_indirect,
        "discard-write-zeroes": discard,
        "loop": header() + blk_header(0x1000, T_IN, 0) + desc(0, 0x1000, 16, NEXT, 1)
        + desc(1, 0x2000, 512, WRITE | NEXT, 0) + publish(0) + POP,
        "outside-ram": header() + blk_header(0x1000, T_IN, 0) + desc(0, 0x1000, 16, NEXT, 1)
        + desc(1, 0x1_8000, 512, WRITE | NEXT, 2) + desc(2, 0xFFFF_FFFF_FFFF_FFF0, 0x20, WRITE) + publish(0) + POP,
        "avail-index-too-far": header() + bytes([3]) + struct.pack("<H", 300) + POP,
        "block-removed": header() + blk_header(0x2_0000, T_IN, 0) + desc(0, 0x2_0000, 16, NEXT, 1)
        + desc(1, 0x2_1000, 512, WRITE | NEXT, 2) + desc(2, 0x3000, 1, WRITE) + publish(0)
        + bytes([5, 1]) + POP + bytes([5, 1]) + publish(0) + POP,
        "rings-in-second-block": header(desc=0x2_0000, avail=0x2_1000, used=0x2_2000)
        + bytes([5, 1]) + POP,
        "read-only-write": header(flags=2) + blk_header(0x1000, T_OUT, 0) + desc(0, 0x1000, 528, NEXT, 1)
        + desc(1, 0x3000, 1, WRITE) + publish(0) + POP,
    }
    write_seeds(OUT, seeds)


if __name__ == "__main__":
    main()
