#!/usr/bin/env python3
"""Drives a running vmm-bin through the real qemu.qmp client and checks that stop/cont
really pause the vCPUs: the guest (tests/bootsector/ticker.S) prints lines forever, so
its serial log grows while running and stays still while paused.

usage: vm_pause.py QMP_SOCKET SERIAL_LOG
"""
import asyncio
import os
import sys
import time

from qemu.qmp import QMPClient


def size(path):
    return os.path.getsize(path)


async def wait_event(qmp, name, timeout=10):
    async with asyncio.timeout(timeout):
        async for ev in qmp.events:
            print(f"event {ev['event']}: {ev.get('data', {})}")
            if ev["event"] == name:
                return ev


async def grows(path, seconds=8.0):
    """Whether the file grows within `seconds` (polled, so a busy host only slows it)."""
    a = size(path)
    deadline = time.time() + seconds
    while time.time() < deadline:
        await asyncio.sleep(0.1)
        if size(path) > a:
            return True
    return False


async def main(sock, log):
    qmp = QMPClient("vm-pause")
    await qmp.connect(sock)
    st = await qmp.execute("query-status")
    print("query-status", st)
    assert st["status"] == "running", st
    # Wait until the guest prints.
    deadline = time.time() + 60
    while b"tick" not in open(log, "rb").read():
        assert time.time() < deadline, "the guest never printed"
        await asyncio.sleep(0.2)
    assert await grows(log), "serial output grows while running"

    await qmp.execute("stop")
    await wait_event(qmp, "STOP")
    st = await qmp.execute("query-status")
    assert st["status"] == "paused" and st["running"] is False, st
    await asyncio.sleep(0.3)  # a line being printed at the stop finishes
    assert not await grows(log, 2.5), "serial output must pause while stopped"
    print("paused: serial output stayed at", size(log), "bytes")

    await qmp.execute("cont")
    await wait_event(qmp, "RESUME")
    assert await grows(log), "serial output grows again after cont"

    blocks = await qmp.execute("query-block")
    print("query-block", blocks)
    assert blocks and blocks[0]["io-status"] == "ok", blocks
    threads = await qmp.execute("query-iothreads")
    print("query-iothreads", threads)
    # The properties the iothread runs with (qmp_vm.rs gives poll-max-ns=12345).
    assert [t["id"] for t in threads] == ["io0"], threads
    assert threads[0]["poll-max-ns"] == 12345, threads
    assert threads[0]["thread-id"] > 0, threads

    before = size(log)
    await qmp.execute("system_reset")
    await wait_event(qmp, "RESET")
    deadline = time.time() + 60
    while b"SeaBIOS" not in open(log, "rb").read()[before:]:
        assert time.time() < deadline, "the firmware did not start again after system_reset"
        await asyncio.sleep(0.2)
    print("system_reset: SeaBIOS printed its banner again")

    await qmp.execute("quit")
    await wait_event(qmp, "SHUTDOWN")
    # The VMM closes the connection on quit (as QEMU does): the client's reader may see
    # EOF before disconnect() runs.
    try:
        await qmp.disconnect()
    except (EOFError, ConnectionError):
        pass
    print("VM PAUSE OK")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
