#!/usr/bin/env python3
"""Records the vhost-user messages QEMU sends when it connects to our export.

Starts `vmm-bin storage-daemon` exporting a bootable 1 MiB image over vhost-user-blk,
a recording proxy in front of its socket, and QEMU (TCG, SeaBIOS, a 32 MiB memfd guest)
with a vhost-user-blk-pci device on the proxy. QEMU negotiates, sets the memory table
and the rings, and SeaBIOS reads the boot sector through the export. After a few
seconds QEMU is stopped. Each frontend message is written as one JSON line
{"hex": header and payload, "fds": ["memfd" | "eventfd" | "other", ...]} to
qemu-startup.jsonl beside this script; gen.py turns it into fuzz seeds.

usage: capture-qemu.py PATH-TO-VMM-BIN   (e.g. target/release/vmm-bin)
"""

import array
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def recv_exact(sock, n):
    """n bytes and the fds that came with them (None at end of file)."""
    data, fds = b"", []
    while len(data) < n:
        msg, anc, _flags, _addr = sock.recvmsg(n - len(data), socket.CMSG_SPACE(64 * 4))
        for level, kind, cdata in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                a = array.array("i")
                a.frombytes(cdata[: len(cdata) - len(cdata) % 4])
                fds += list(a)
        if not msg:
            return None, fds
        data += msg
    return data, fds


def fd_kind(fd):
    target = os.readlink(f"/proc/self/fd/{fd}")
    if target == "anon_inode:[eventfd]":
        return "eventfd"
    if target.startswith("/memfd:"):
        return "memfd"
    return "other"


def frontend_to_backend(front, back, log):
    while True:
        hdr, fds = recv_exact(front, 12)
        if hdr is None:
            break
        size = struct.unpack_from("<I", hdr, 8)[0]
        body, more = recv_exact(front, size) if size else (b"", [])
        fds += more
        if body is None:
            break
        log.write(json.dumps({"hex": (hdr + body).hex(), "fds": [fd_kind(f) for f in fds]}) + "\n")
        log.flush()
        anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        back.sendmsg([hdr + body], anc)
        for f in fds:
            os.close(f)
    back.shutdown(socket.SHUT_WR)


def backend_to_frontend(back, front):
    while True:
        data = back.recv(65536)
        if not data:
            break
        front.sendall(data)
    front.shutdown(socket.SHUT_WR)


def main():
    vmm = sys.argv[1]
    tmp = tempfile.mkdtemp()
    image = os.path.join(tmp, "boot.img")
    disk = bytearray(1 << 20)
    disk[0:2] = b"\xeb\xfe"  # jmp $
    disk[510:512] = b"\x55\xaa"
    open(image, "wb").write(disk)
    export = os.path.join(tmp, "export.sock")
    proxy = os.path.join(tmp, "proxy.sock")
    daemon = subprocess.Popen([
        vmm, "storage-daemon",
        "--blockdev", f"driver=file,node-name=disk0,filename={image}",
        "--export", f"type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,addr.path={export},writable=on",
    ])
    for _ in range(100):
        if os.path.exists(export):
            break
        time.sleep(0.1)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(proxy)
    listener.listen(1)
    qemu = subprocess.Popen([
        "qemu-system-x86_64", "-machine", "pc,accel=tcg,memory-backend=mem",
        "-object", "memory-backend-memfd,id=mem,size=32M,share=on", "-m", "32M",
        "-chardev", f"socket,id=c0,path={proxy}",
        "-device", "vhost-user-blk-pci,chardev=c0",
        "-display", "none", "-nodefaults", "-serial", "null",
    ])
    front, _ = listener.accept()
    back = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    back.connect(export)
    with open(os.path.join(HERE, "qemu-startup.jsonl"), "w") as log:
        t1 = threading.Thread(target=frontend_to_backend, args=(front, back, log))
        t2 = threading.Thread(target=backend_to_frontend, args=(back, front), daemon=True)
        t1.start()
        t2.start()
        time.sleep(8)
        qemu.terminate()
        qemu.wait()
        t1.join(timeout=10)
    daemon.terminate()
    daemon.wait()


if __name__ == "__main__":
    main()
