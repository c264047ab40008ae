#!/usr/bin/env python3
"""A vhost-user-scsi export built from nothing over QMP (the real qemu.qmp client),
serving a stock Debian kernel under QEMU TCG (-device vhost-user-scsi-pci): Linux's
virtio_scsi + sd see the node as sda, write an O_DIRECT pattern and verify it; after
power-off the host image holds the pattern; the export and nodes are then deleted
(BLOCK_EXPORT_DELETED) and the daemon quits.

usage: scsi_export.py QMP_SOCKET IMAGE EXPORT_SOCKET RUN_QEMU
"""
import asyncio
import hashlib
import json
import subprocess
import sys

from qemu.qmp import QMPClient, ExecuteError

SIZE_MB = 16


async def wait_event(qmp, name, timeout=30):
    async with asyncio.timeout(timeout):
        async for ev in qmp.events:
            if ev["event"] == name:
                return ev


def guest(run_qemu, sock, workload, seed):
    args = ["python3", run_qemu, "--workload", workload, "--no-host-check",
            "-p", f"size_mb={SIZE_MB}", "-p", f"pattern_seed={seed}", "--timeout", "400"]
    for a in ["-object", "memory-backend-memfd,id=mem,size=512M,share=on",
              "-numa", "node,memdev=mem",
              "-chardev", f"socket,id=vus,path={sock}",
              "-device", "vhost-user-scsi-pci,chardev=vus,num_queues=2"]:
        args.append(f"--qemu-arg={a}")
    out = subprocess.run(args, stdout=subprocess.PIPE, timeout=500)
    return json.loads(out.stdout)


async def main(sock, image, export_sock, run_qemu):
    qmp = QMPClient("scsi-test")
    await qmp.connect(sock)
    await qmp.execute("blockdev-add", {"driver": "file", "node-name": "f0", "filename": image,
                                       "cache": {"direct": True}, "aio": "io_uring"})
    await qmp.execute("blockdev-add", {"driver": "raw", "node-name": "d0", "file": "f0"})
    await qmp.execute("block-export-add", {
        "type": "vhost-user-scsi", "id": "scsi0", "node-name": "d0", "writable": True,
        "num-queues": 2, "addr": {"type": "unix", "path": export_sock}})
    exports = await qmp.execute("query-block-exports")
    assert exports == [{"node-name": "d0", "shutting-down": False,
                        "type": "vhost-user-scsi", "id": "scsi0"}], exports
    r = guest(run_qemu, export_sock, "sda-verify", 11)
    assert r["status"] == "PASS", (r["status"], r["reason"], r["console_log"])
    m = r["markers"]
    print("SDA_SECTORS", m["SDA_SECTORS"])
    assert m["SDA_SHA256"] == m["PATTERN_SHA256"], m
    with open(image, "rb") as f:
        host = hashlib.sha256(f.read(SIZE_MB << 20)).hexdigest()
    assert host == m["PATTERN_SHA256"], ("host image differs", host, m["PATTERN_SHA256"])
    # The guest is gone; its connection may take a moment to be noticed.
    deleted = asyncio.ensure_future(wait_event(qmp, "BLOCK_EXPORT_DELETED"))
    for _ in range(300):
        try:
            await qmp.execute("block-export-del", {"id": "scsi0"})
            break
        except ExecuteError as e:
            assert e.error.error.desc == "export 'scsi0' still in use", e.error.error.desc
            await asyncio.sleep(0.1)
    assert (await deleted)["data"] == {"id": "scsi0"}
    await qmp.execute("blockdev-del", {"node-name": "d0"})
    await qmp.execute("blockdev-del", {"node-name": "f0"})
    await qmp.execute("quit")
    try:
        await qmp.disconnect()
    except (EOFError, ConnectionError):
        pass
    print("SCSI EXPORT OK", json.dumps(m))


asyncio.run(main(*sys.argv[1:5]))
