#!/usr/bin/env python3
"""Writes the seed corpus of the `messages` target into seeds/messages/.

From qemu-startup.jsonl (QEMU 10's start-up sequence against our export, recorded by
capture-qemu.py): the sequence as captured; the same followed by the request SeaBIOS
makes (a 3-descriptor read of sector 0) in the shared memory at the rings QEMU set,
a kick and GET_VRING_BASE; the same with SET_MEM_TABLE instead of ADD_MEM_REG (older
frontends). Then hostile variants: truncated and oversized messages, config reads and
writes of odd sizes, too many fds, a pipe as kick fd, memory truncated under a
running ring. The record format is described in fuzz_targets/messages.rs.
"""

import json
import os
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "..", "scripts", "fuzz-common"))
from seeds import write_seeds  # noqa: E402
OUT = os.path.join(HERE, "messages")

# Request codes (vhost-user spec).
GET_FEATURES, SET_MEM_TABLE, SET_VRING_NUM, SET_VRING_ADDR = 1, 5, 8, 9
GET_VRING_BASE, SET_VRING_KICK, SET_VRING_CALL = 11, 12, 13
GET_CONFIG, SET_CONFIG, SET_VRING_ENABLE, ADD_MEM_REG = 24, 25, 18, 37
FD_KIND = {"memfd": 0, "eventfd": 1, "other": 2}


def message(raw, fds=(), many=False):
    kinds = {FD_KIND[f] for f in fds}
    kind = kinds.pop() if len(kinds) == 1 else 3
    spec = 0x80 if many else (len(fds) | kind << 3)
    return bytes([0, spec]) + struct.pack("<H", len(raw)) + raw


def msg(req, payload=b"", flags=1, fds=()):
    return message(struct.pack("<III", req, flags, len(payload)) + payload, fds)


def poke(offset, data):
    out = b""
    for i in range(0, len(data), 255):
        chunk = data[i : i + 255]
        out += bytes([1]) + struct.pack("<IB", offset + i, len(chunk)) + chunk
    return out


def kick(index):
    return bytes([2, index])


def truncate(pages):
    return bytes([3, pages])


def captured():
    with open(os.path.join(HERE, "qemu-startup.jsonl")) as f:
        return [json.loads(line) for line in f]


def seabios_read(records):
    """The memory writes of SeaBIOS's boot-sector read at the rings QEMU set up."""
    region = None
    ring = None
    for r in records:
        raw = bytes.fromhex(r["hex"])
        req = struct.unpack_from("<I", raw)[0]
        if req == ADD_MEM_REG:
            gpa, size, uaddr, off = struct.unpack_from("<QQQQ", raw, 12 + 8)
            region = (gpa, size, uaddr, off)
        if req == SET_VRING_ADDR:
            ring = struct.unpack_from("<QQQ", raw, 12 + 8)  # desc, used, avail
    gpa, _size, uaddr, off = region
    desc, _used, avail = (a - uaddr + off for a in ring)
    to_file = lambda g: g - gpa + off  # noqa: E731
    header, data, status = 0x10000, 0x10200, 0x10400
    table = struct.pack("<QIHH", header, 16, 1, 1)  # out, NEXT
    table += struct.pack("<QIHH", data, 512, 3, 2)  # in, NEXT
    table += struct.pack("<QIHH", status, 1, 2, 0)  # in
    out = poke(desc, table)
    out += poke(to_file(header), struct.pack("<IIQ", 0, 0, 0))  # VIRTIO_BLK_T_IN, sector 0
    out += poke(avail, struct.pack("<HHH", 0, 1, 0))  # flags, idx 1, ring[0] = head 0
    return out


def main():
    records = captured()
    startup = b"".join(message(bytes.fromhex(r["hex"]), r["fds"]) for r in records)
    seeds = {"qemu-startup": startup}
    # Up to (and with) the enables, then SeaBIOS's read, the kick (the kick eventfd is
    # the third eventfd QEMU sent: two call fds come first), and GET_VRING_BASE.
    upto = max(i for i, r in enumerate(records) if bytes.fromhex(r["hex"])[0] == SET_VRING_ENABLE)
    head = b"".join(message(bytes.fromhex(r["hex"]), r["fds"]) for r in records[: upto + 1])
    eventfds = sum(r["fds"].count("eventfd") for r in records[: upto + 1])
    read = seabios_read(records)
    tail = msg(GET_VRING_BASE, struct.pack("<II", 0, 0))
    seeds["qemu-seabios-read"] = head + read + kick(eventfds - 1) + tail
    # SET_MEM_TABLE: {u32 count, u32 padding, regions}, one fd per region.
    table = b""
    for r in records:
        raw = bytes.fromhex(r["hex"])
        if raw[0] == ADD_MEM_REG:
            table = msg(SET_MEM_TABLE, struct.pack("<II", 1, 0) + raw[20:52], fds=["memfd"])
    seeds["qemu-set-mem-table"] = b"".join(
        table if bytes.fromhex(r["hex"])[0] == ADD_MEM_REG else message(bytes.fromhex(r["hex"]), r["fds"])
        for r in records[: upto + 1]
    ) + read + kick(eventfds - 1) + tail
    # Hostile variants.
    seeds["truncated-header"] = message(b"\x01\x00\x00\x00\x01\x00")
    seeds["huge-size"] = message(struct.pack("<III", GET_FEATURES, 1, 0xFFFFFFF0))
    seeds["get-config-sizes"] = b"".join(
        msg(GET_CONFIG, struct.pack("<III", off, size, 0) + bytes(min(size, 256)))
        for off, size in ((0, 0), (0, 60), (250, 16), (0, 300), (0xFFFFFFF0, 32))
    )
    seeds["set-config"] = msg(SET_CONFIG, struct.pack("<III", 0, 8, 0) + bytes(8))
    seeds["too-many-fds"] = message(struct.pack("<III", SET_VRING_CALL, 1, 8) + bytes(8), many=True)
    seeds["pipe-kick"] = msg(SET_VRING_KICK, struct.pack("<Q", 0), fds=["other"])
    seeds["vring-index-out-of-range"] = msg(SET_VRING_NUM, struct.pack("<II", 999, 256)) + msg(
        SET_VRING_ADDR, struct.pack("<IIQQQQ", 7, 0, 1, 2, 3, 0)
    )
    seeds["shrink-under-ring"] = seeds["qemu-seabios-read"] + truncate(1) + kick(eventfds - 1) + tail
    write_seeds(OUT, seeds)


if __name__ == "__main__":
    main()
