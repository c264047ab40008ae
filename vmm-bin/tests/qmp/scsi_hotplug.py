#!/usr/bin/env python3
"""LUN hot add/remove on a running vhost-user-scsi export, seen by Linux: while the
guest hammers LUN 0 (sda) with a verifying writer, QMP device_add/device_del plugs and
unplugs a scsi-hd at LUN 1 ROUNDS times. Each add must make Linux's sd attach the LUN
(the guest hears of it on the event queue), each del must end with DEVICE_DELETED;
the busy LUN gets no I/O error (the hammer verifies its pattern), the daemon's fd count
is unchanged, and the daemon keeps serving.

usage: scsi_hotplug.py QMP_SOCKET IMAGE0 IMAGE1 EXPORT_SOCKET RUN_QEMU CONSOLE_LOG PID ROUNDS PATGEN
"""
import asyncio
import json
import os
import subprocess
import sys

from qemu.qmp import QMPClient


async def wait_event(qmp, name, timeout=60):
    async with asyncio.timeout(timeout):
        async for ev in qmp.events:
            if ev["event"] == name:
                return ev


def console_lines(path, *needles):
    """How many console lines hold every one of `needles`."""
    try:
        with open(path, errors="replace") as f:
            return sum(all(n in line for n in needles) for line in f)
    except FileNotFoundError:
        return 0


async def wait_console(path, count, *needles, timeout=120):
    """Waits until `count` console lines hold every one of `needles`."""
    async with asyncio.timeout(timeout):
        while console_lines(path, *needles) < count:
            await asyncio.sleep(0.2)


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])


async def main(sock, image0, image1, export_sock, run_qemu, console, pid, rounds, patgen):
    rounds = int(rounds)
    # The hammer verifies every block it reads: the region starts with the pattern.
    subprocess.run([patgen, "write", "9", image0, "0", str(16 << 20)], check=True)
    qmp = QMPClient("scsi-hotplug")
    await qmp.connect(sock)
    for i, img in enumerate([image0, image1]):
        await qmp.execute("blockdev-add", {"driver": "file", "node-name": f"f{i}", "filename": img})
        await qmp.execute("blockdev-add", {"driver": "raw", "node-name": f"d{i}", "file": f"f{i}"})
    await qmp.execute("block-export-add", {
        "type": "vhost-user-scsi", "id": "scsi0", "node-name": "d0", "writable": True,
        "addr": {"type": "unix", "path": export_sock}})
    # The hammer outlasts the loop; the guest powers off when it ends.
    args = ["python3", run_qemu, "--workload", "sda-hammer", "--no-host-check",
            "-p", "size_mb=16", "-p", "pattern_seed=9", "-p", f"hammer_secs={40 + 2 * rounds}",
            # After `quiet`: the kernel's sd messages reach the console.
            "-p", "loglevel=7",
            "--console-log", console, "--timeout", str(300 + 10 * rounds)]
    for a in ["-object", "memory-backend-memfd,id=mem,size=512M,share=on",
              "-numa", "node,memdev=mem",
              "-chardev", f"socket,id=vus,path={export_sock}",
              "-device", "vhost-user-scsi-pci,chardev=vus,num_queues=1"]:
        args.append(f"--qemu-arg={a}")
    guest = await asyncio.create_subprocess_exec(*args, stdout=subprocess.PIPE)
    await wait_console(console, 1, "HAMMER_RUNNING", timeout=300)
    fds_before, rss_before = fds(pid), rss_kib(pid)
    for n in range(1, rounds + 1):
        await qmp.execute("device_add", {"driver": "scsi-hd", "bus": "scsi0.0", "drive": "d1",
                                         "lun": 1, "id": "hot"})
        # Linux's sd attached it (the RESCAN event), as LUN 1.
        await wait_console(console, n, "sd 0:0:0:1:", "Attached SCSI disk")
        deleted = asyncio.ensure_future(wait_event(qmp, "DEVICE_DELETED"))
        await qmp.execute("device_del", {"id": "hot"})
        ev = await deleted
        assert ev["data"]["device"] == "hot", ev
        # ... and dropped it (the REMOVED event): sd's last words for a LUN.
        await wait_console(console, n, "sd 0:0:0:1:", "Synchronizing SCSI cache")
        print(f"round {n}: added, seen by Linux, removed", flush=True)
    fds_after, rss_after = fds(pid), rss_kib(pid)
    out, _ = await guest.communicate()
    r = json.loads(out)
    assert r["status"] == "PASS", (r["status"], r["reason"], r["console_log"])
    with open(console, errors="replace") as f:
        log = f.read()
    assert "I/O error" not in log, "an I/O error in the guest"
    print(f"fds {fds_before} -> {fds_after}, VmRSS {rss_before} -> {rss_after} KiB")
    assert fds_after == fds_before, (fds_before, fds_after)
    # The daemon still answers, and the export is whole.
    assert len(await qmp.execute("query-block-exports")) == 1
    await qmp.execute("quit")
    try:
        await qmp.disconnect()
    except (EOFError, ConnectionError):
        pass
    print("SCSI HOTPLUG OK")


asyncio.run(main(*sys.argv[1:10]))
