#!/usr/bin/env python3
"""Drive a QMP server with the real `qemu.qmp` client (as libvirt-style tools would).

Usage: qmp_smoke.py SOCKET_PATH [--no-quit]

Starts a paused VM with `cont` first. Checks: negotiation (with the oob capability the greeting
advertises), query-status, query-version, query-commands, an unknown command's
CommandNotFound, stop (STOP event, status paused), cont (RESUME event, running),
system_reset (RESET event), and quit (SHUTDOWN event, then the server closes).
Prints one line per step and "QMP SMOKE OK" at the end; exits non-zero on failure.
Reusable against the real vmm-bin binary: `vmm-bin ... -qmp unix:PATH,server=on,wait=off`.
"""

import asyncio
import sys

from qemu.qmp import EventListener, ExecuteError, QMPClient

TIMEOUT = 10


async def expect_event(listener: EventListener, name: str) -> dict:
    event = await asyncio.wait_for(listener.get(), TIMEOUT)
    assert event["event"] == name, f"expected {name}, got {event}"
    ts = event["timestamp"]
    assert isinstance(ts["seconds"], int) and isinstance(ts["microseconds"], int), ts
    print(f"event {name}: {dict(event)}")
    return event


async def status(qmp: QMPClient) -> dict:
    st = await qmp.execute("query-status")
    print(f"query-status: {st}")
    return st


async def main(path: str, do_quit: bool) -> None:
    qmp = QMPClient("smoke")
    events = EventListener(("STOP", "RESUME", "RESET", "SHUTDOWN"))
    with qmp.listen(events):
        await asyncio.wait_for(qmp.connect(path), TIMEOUT)
        greeting = qmp.greeting
        assert greeting is not None
        print(f"greeting: {greeting!r}")
        assert "oob" in greeting.QMP.capabilities

        initial = await status(qmp)
        if not initial["running"]:  # started with -S, or left paused: start it first
            assert await qmp.execute("cont") == {}
            await expect_event(events, "RESUME")
        assert await status(qmp) == {"status": "running", "running": True}
        version = await qmp.execute("query-version")
        assert {"major", "minor", "micro"} <= set(version["qemu"]), version
        names = {c["name"] for c in await qmp.execute("query-commands")}
        missing = {"query-status", "stop", "cont", "quit", "system_reset"} - names
        assert not missing, f"query-commands lacks {missing}"
        try:
            await qmp.execute("no-such-command")
            raise AssertionError("unknown command succeeded")
        except ExecuteError as err:
            assert err.error_class == "CommandNotFound", err.error_class
            print(f"unknown command: {err.error_class}: {err}")

        assert await qmp.execute("stop") == {}
        await expect_event(events, "STOP")
        assert await status(qmp) == {"status": "paused", "running": False}

        assert await qmp.execute("cont") == {}
        await expect_event(events, "RESUME")
        assert (await status(qmp))["running"] is True

        assert await qmp.execute("system_reset") == {}
        reset = await expect_event(events, "RESET")
        assert reset["data"]["guest"] is False, reset

        if do_quit:
            assert await qmp.execute("quit") == {}
            shutdown = await expect_event(events, "SHUTDOWN")
            assert shutdown["data"] == {"guest": False, "reason": "host-qmp-quit"}, shutdown
        try:
            await qmp.disconnect()
        except EOFError:
            # After quit the server closes the connection as it exits (QEMU too,
            # depending on timing); qemu.qmp reports that EOF on disconnect.
            assert do_quit
    print("QMP SMOKE OK")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    asyncio.run(main(sys.argv[1], "--no-quit" not in sys.argv[2:]))
