#!/usr/bin/env python3
"""Builds a storage daemon from nothing through the real qemu.qmp client: blockdev-add
(file + raw), block-export-add (vhost-user-blk), query-block-exports,
query-named-block-nodes, the errors qemu-storage-daemon 10 gives for absent nodes and
exports and for a node in use, block-export-del (refused in safe mode while a frontend
is connected, then mode=hard, with BLOCK_EXPORT_DELETED), blockdev-del, quit.

usage: storage_daemon.py QMP_SOCKET IMAGE EXPORT_SOCKET
"""
import asyncio
import os
import socket
import struct
import sys

from qemu.qmp import QMPClient, ExecuteError


async def error_of(qmp, cmd, args=None):
    try:
        await qmp.execute(cmd, args)
    except ExecuteError as e:
        return e.error.error.desc
    raise AssertionError(f"{cmd} {args} succeeded")


async def wait_event(qmp, name, timeout=20):
    async with asyncio.timeout(timeout):
        async for ev in qmp.events:
            if ev["event"] == name:
                return ev


async def main(sock, image, export_sock):
    qmp = QMPClient("sd-test")
    await qmp.connect(sock)
    blk = {"type": "vhost-user-blk", "id": "e0", "node-name": "d0", "writable": True,
           "addr": {"type": "unix", "path": export_sock}}
    # Absent node: qemu-storage-daemon's words.
    assert await error_of(qmp, "block-export-add", blk) == \
        "Cannot find device='' nor node-name='d0'"
    await qmp.execute("blockdev-add", {"driver": "file", "node-name": "f0", "filename": image})
    await qmp.execute("blockdev-add", {"driver": "raw", "node-name": "d0", "file": "f0"})
    names = [n["node-name"] for n in await qmp.execute("query-named-block-nodes")]
    assert "d0" in names and "f0" in names, names
    assert await error_of(qmp, "block-export-add", dict(blk, bogus=1)) == \
        "Parameter 'bogus' is unexpected"
    assert await error_of(qmp, "block-export-add", {k: v for k, v in blk.items() if k != "addr"}) == \
        "Parameter 'addr' is missing"
    assert await error_of(qmp, "block-export-add", dict(blk, **{"num-queues": 0})) == \
        "num-queues must be greater than 0"
    assert await error_of(qmp, "block-export-add", dict(blk, addr={"type": "inet", "host": "x", "port": "1"})) == \
        "Only socket address types 'unix' and 'fd' are supported"
    # No fds over QMP (qemu-storage-daemon 10's words): a number there could name the
    # monitor's own socket.
    assert await error_of(qmp, "block-export-add", dict(blk, addr={"type": "fd", "str": "3"})) == \
        "only QEMU supports file descriptor passing"
    await qmp.execute("block-export-add", blk)
    assert os.path.exists(export_sock)
    assert await error_of(qmp, "block-export-add", dict(blk, addr={"type": "unix", "path": export_sock + "2"})) == \
        "Block export id 'e0' is already in use"
    exports = await qmp.execute("query-block-exports")
    assert exports == [{"node-name": "d0", "shutting-down": False, "type": "vhost-user-blk", "id": "e0"}], exports
    assert await error_of(qmp, "blockdev-del", {"node-name": "d0"}) == "Node d0 is in use"
    assert await error_of(qmp, "block-export-del", {"id": "nope"}) == "Export 'nope' is not found"
    assert await error_of(qmp, "block-export-del", {"id": "e0", "mode": "bogus"}) == \
        "Parameter 'mode' does not accept value 'bogus'"
    # A connected frontend keeps a safe delete from happening.
    frontend = socket.socket(socket.AF_UNIX)
    frontend.connect(export_sock)
    # VHOST_USER_GET_FEATURES, answered: the daemon serves this frontend now.
    frontend.sendall(struct.pack("<III", 1, 1, 0))
    reply = b""
    while len(reply) < 20:
        reply += frontend.recv(20 - len(reply))
    assert await error_of(qmp, "block-export-del", {"id": "e0"}) == "export 'e0' still in use"
    deleted = asyncio.ensure_future(wait_event(qmp, "BLOCK_EXPORT_DELETED"))
    await qmp.execute("block-export-del", {"id": "e0", "mode": "hard"})
    ev = await deleted
    assert ev["data"] == {"id": "e0"}, ev
    frontend.close()
    assert await qmp.execute("query-block-exports") == []
    assert await error_of(qmp, "block-export-del", {"id": "e0"}) == "Export 'e0' is not found"
    # LUN commands naming what is not there.
    assert await error_of(qmp, "device_add", {"driver": "scsi-hd", "bus": "nope.0", "drive": "d0"}) == \
        "Bus 'nope.0' not found"
    desc = await error_of(qmp, "device_add", {"driver": "virtio-blk-pci"})
    assert desc.startswith("Parameter 'driver' expects a pluggable device type"), desc
    assert await error_of(qmp, "device_del", {"id": "nope"}) == "Device 'nope' not found"
    await qmp.execute("block-export-add", dict(blk, type="vhost-user-scsi", id="s0"))
    assert await error_of(qmp, "device_add", {"driver": "scsi-hd", "bus": "s0.0", "drive": "nope", "lun": 1}) == \
        "Property 'scsi-hd.drive' can't find value 'nope'"
    assert await error_of(qmp, "device_add", {"driver": "scsi-hd", "bus": "s0.0", "drive": "d0", "lun": 1,
                                              "colour": "red"}) == "Parameter 'colour' is unexpected"
    # LUN 0 is the export's own.
    desc = await error_of(qmp, "device_add", {"driver": "scsi-hd", "bus": "s0.0", "drive": "d0", "lun": 0})
    assert "0" in desc, desc
    deleted = asyncio.ensure_future(wait_event(qmp, "BLOCK_EXPORT_DELETED"))
    await qmp.execute("block-export-del", {"id": "s0"})
    assert (await deleted)["data"] == {"id": "s0"}
    await qmp.execute("blockdev-del", {"node-name": "d0"})
    await qmp.execute("blockdev-del", {"node-name": "f0"})
    assert await error_of(qmp, "blockdev-del", {"node-name": "d0"}) == \
        "Failed to find node with node-name='d0'"
    await qmp.execute("quit")
    # The daemon closes the connection on quit (as QEMU does).
    try:
        await qmp.disconnect()
    except (EOFError, ConnectionError):
        pass
    print("STORAGE DAEMON QMP OK")


asyncio.run(main(*sys.argv[1:4]))
