"""Boot the test guest (scripts/guest-assets) in QEMU and collect its verdict.

The guest is Debian's stock kernel with a busybox initramfs whose /init runs one workload
(tests/guest/init) and powers off. The disk is either a plain image QEMU opens itself
(``disk_if`` virtio, ide or scsi) or a vhost-user-blk socket served by a storage daemon:
qemu-storage-daemon (the reference) or ours (``vmm-bin storage-daemon``, same options),
which this module can start and stop around the guest.

Library use::

    from qemu_guest import run_guest
    r = run_guest("vda-verify", image="disk.img", export_cmd=["qemu-storage-daemon"])
    assert r.passed, r.reason

CLI use (what the Rust integration tests do): ``tests/guest/run-qemu --help``; it prints
the result as one JSON object on stdout and exits 0 when the run is ok (see GuestResult.ok).
"""

from __future__ import annotations

import dataclasses
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)
import pattern  # noqa: E402

QEMU = os.environ.get("QEMU", "qemu-system-x86_64")
ANSI = re.compile(r"\x1b(\[[0-9;?]*[A-Za-z]|[()][A-Za-z0-9]|c)")
KV = re.compile(r"^([A-Z][A-Z0-9_]*)=(\S*)$")
WORKLOAD = re.compile(r"^WORKLOAD (\S+) (PASS|FAIL)(?::\s*(.*))?$")


def assets_dir() -> str:
    return os.environ.get("GUEST_ASSETS_DIR", os.path.join(ROOT, "target", "guest-assets"))


def load_assets(directory: Optional[str] = None) -> Dict[str, str]:
    """assets.env of scripts/guest-assets as a dict (KERNEL, INITRD, INITRD_FIO, PATGEN, ...)."""
    d = directory or assets_dir()
    env = {}
    path = os.path.join(d, "assets.env")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} missing: run scripts/guest-assets (or .ci/setup)")
    with open(path) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                env[k] = v
    return env


@dataclasses.dataclass
class GuestResult:
    workload: str
    # PASS / FAIL: the guest printed its verdict. TIMEOUT: none before the deadline.
    # KILLED: the runner killed QEMU as asked (kill_on). NO_RESULT: QEMU exited without a
    # verdict (guest crash, device error). ERROR: the runner could not start something.
    status: str
    reason: str = ""
    markers: Dict[str, str] = dataclasses.field(default_factory=dict)  # KEY=VALUE lines
    events: List[str] = dataclasses.field(default_factory=list)  # GUEST_*, HAMMER*, WORKLOAD lines
    boot_s: Optional[float] = None  # host seconds from QEMU's start to the guest's /init
    guest_uptime_at_init: Optional[float] = None
    elapsed_s: float = 0.0
    qemu_cmd: List[str] = dataclasses.field(default_factory=list)
    qemu_exit: Optional[int] = None
    console_log: Optional[str] = None
    killed: bool = False
    # The storage daemon, when the runner started one.
    daemon_cmd: List[str] = dataclasses.field(default_factory=list)
    daemon_alive_after_guest: Optional[bool] = None
    daemon_exit: Optional[int] = None
    daemon_log: Optional[str] = None
    # Host-side check of the image after a *-verify workload (independent of the guest).
    host_check: Optional[Dict[str, object]] = None

    @property
    def passed(self) -> bool:
        return self.status == "PASS" and (self.host_check is None or bool(self.host_check.get("match")))

    @property
    def ok(self) -> bool:
        """PASS (and the host check agrees), or KILLED as asked with the daemon surviving."""
        if self.status == "KILLED":
            return self.daemon_alive_after_guest is not False
        return self.passed

    def to_dict(self) -> Dict[str, object]:
        d = dataclasses.asdict(self)
        d["passed"] = self.passed
        d["ok"] = self.ok
        return d


def export_args(image: str, sock: str, num_queues: int = 2, direct: bool = False,
                readonly: bool = False, aio: Optional[str] = None) -> List[str]:
    """qemu-storage-daemon's options for a vhost-user-blk export of a raw file (ours takes the same).

    direct: cache.direct=on (O_DIRECT); aio: the file node's aio= (threads, native, io_uring);
    with direct and no aio given, io_uring.
    """
    f = f"driver=file,node-name=file0,filename={image}"
    if direct:
        f += ",cache.direct=on"
        aio = aio or "io_uring"
    if aio:
        f += f",aio={aio}"
    return [
        "--blockdev", f,
        "--blockdev", "driver=raw,node-name=disk0,file=file0",
        "--export", "type=vhost-user-blk,id=exp0,node-name=disk0,addr.type=unix,"
                    f"addr.path={sock},writable={'off' if readonly else 'on'},num-queues={num_queues}",
    ]


def wait_for_socket(path: str, proc: Optional[subprocess.Popen], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"storage daemon exited with {proc.returncode} before listening")
        if os.path.exists(path):
            # Only check that the path is there: a probe connection would be taken by the
            # daemon as its one vhost-user client.
            return
        time.sleep(0.02)
    raise RuntimeError(f"{path} did not appear in {timeout}s")


class StorageDaemon:
    """A vhost-user-blk export (qemu-storage-daemon or ours) of IMAGE at SOCK."""

    def __init__(self, cmd: List[str], image: str, sock: str, num_queues: int = 2,
                 direct: bool = False, log_path: Optional[str] = None, extra: Optional[List[str]] = None,
                 aio: Optional[str] = None):
        self.cmd = list(cmd) + export_args(image, sock, num_queues, direct, aio=aio) + list(extra or [])
        self.sock = sock
        self.log_path = log_path or tempfile.mktemp(prefix="storage-daemon-", suffix=".log")
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "StorageDaemon":
        if os.path.exists(self.sock):
            os.unlink(self.sock)
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        wait_for_socket(self.sock, self.proc)
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> Optional[int]:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def qemu_command(workload: str, *, kernel: str, initrd: str, image: Optional[str] = None,
                 disk_if: str = "virtio", cache: str = "none", vhost_user_sock: Optional[str] = None,
                 num_queues: int = 2, mem_mb: int = 512, accel: str = "tcg", smp: int = 1,
                 params: Optional[Dict[str, object]] = None, kernel_log: bool = False,
                 qmp: Optional[str] = None, extra: Optional[List[str]] = None) -> List[str]:
    append = ["console=ttyS0", "panic=-1", f"workload={workload}"]
    if not kernel_log:
        append.append("quiet")
    for k, v in (params or {}).items():
        append.append(f"{k}={v}")
    # -nodefaults drops the default NIC (its iPXE ROM) and VGA: the same console as
    # -nographic, 1-2 s sooner under TCG.
    cmd = [QEMU, "-nodefaults", "-machine", f"pc,accel={accel}", "-smp", str(smp), "-m", str(mem_mb),
           "-display", "none", "-serial", "stdio", "-no-reboot",
           "-kernel", kernel, "-initrd", initrd, "-append", " ".join(append)]
    if vhost_user_sock:
        cmd += ["-object", f"memory-backend-memfd,id=mem,size={mem_mb}M,share=on",
                "-numa", "node,memdev=mem",
                "-chardev", f"socket,id=c0,path={vhost_user_sock}",
                "-device", f"vhost-user-blk-pci,chardev=c0,num-queues={num_queues}"]
    elif image:
        drive = f"file={image},format=raw,cache={cache}"
        if disk_if == "virtio":
            cmd += ["-drive", drive + ",if=virtio"]
        elif disk_if == "ide":
            cmd += ["-drive", drive + ",if=ide"]
        elif disk_if == "scsi":
            cmd += ["-device", "virtio-scsi-pci,id=scsi0",
                    "-drive", drive + ",if=none,id=d0",
                    "-device", "scsi-hd,drive=d0,bus=scsi0.0"]
        else:
            raise ValueError(f"disk_if must be virtio, ide or scsi, not {disk_if}")
    if qmp:
        cmd += ["-qmp", f"unix:{qmp},server=on,wait=off"]
    return cmd + list(extra or [])


def _host_check(workload: str, image: str, markers: Dict[str, str]) -> Optional[Dict[str, object]]:
    """After vda-verify/sda-verify: hash the image region and the host-computed pattern."""
    if not workload.endswith("-verify") or workload.startswith("fio"):
        return None
    prefix = workload.split("-")[0].upper()
    seed = int(markers.get("PATTERN_SEED", "0"))
    nbytes = int(markers.get("PATTERN_BYTES", "0"))
    guest = markers.get(f"{prefix}_SHA256")
    if not guest or not nbytes:
        return None
    img = pattern.sha256_of_region(image, 0, nbytes)
    pat = pattern.sha256_of_pattern(seed, 0, nbytes)
    return {"image_sha256": img, "pattern_sha256": pat, "guest_sha256": guest,
            "match": img == pat == guest}


def run_guest(workload: str, *, image: Optional[str] = None, disk_if: str = "virtio",
              cache: str = "none", vhost_user_sock: Optional[str] = None,
              export_cmd: Optional[List[str]] = None, export_direct: bool = False,
              export_extra: Optional[List[str]] = None, num_queues: int = 2,
              params: Optional[Dict[str, object]] = None, timeout: float = 120.0,
              accel: str = "tcg", mem_mb: int = 512, smp: int = 1,
              kill_on: Optional[str] = None, kill_delay: float = 0.0,
              keep_daemon: bool = False, host_check: bool = True,
              console_log: Optional[str] = None, verbose: bool = False,
              qmp: Optional[str] = None, extra_qemu_args: Optional[List[str]] = None,
              assets: Optional[str] = None) -> GuestResult:
    """Boot the guest once and return its GuestResult.

    Disk: ``image`` alone -> QEMU opens it (``disk_if``); ``image`` + ``export_cmd`` -> the
    runner starts ``export_cmd + export_args(image, sock)`` (e.g. ["qemu-storage-daemon"] or
    ["target/release/vmm-bin", "storage-daemon"]) and connects QEMU to it by vhost-user-blk;
    ``vhost_user_sock`` alone -> connect to a daemon the caller runs.
    ``kill_on``: SIGKILL QEMU ``kill_delay`` s after a console line starting with this text
    (e.g. "HAMMER ops=" with workload vda-hammer); the daemon is then checked to still run.
    """
    a = load_assets(assets)
    initrd = a["INITRD"]
    if workload.startswith("fio"):
        if not a.get("INITRD_FIO"):
            return GuestResult(workload, "ERROR", "no initramfs-fio (fio was not installed when the assets were built)")
        initrd = a["INITRD_FIO"]
    res = GuestResult(workload, "NO_RESULT")
    tmpdir = tempfile.mkdtemp(prefix="guest-")
    res.console_log = console_log or os.path.join(tmpdir, "console.log")
    daemon = None
    if export_cmd:
        if not image:
            raise ValueError("export_cmd needs image")
        vhost_user_sock = vhost_user_sock or os.path.join(tmpdir, "vhost-user-blk.sock")
        daemon = StorageDaemon(export_cmd, image, vhost_user_sock, num_queues, export_direct,
                               os.path.join(tmpdir, "daemon.log"), export_extra)
        res.daemon_cmd, res.daemon_log = daemon.cmd, daemon.log_path
        try:
            daemon.start()
        except Exception as e:  # noqa: BLE001
            res.status, res.reason = "ERROR", f"storage daemon: {e}"
            return res
    cmd = qemu_command(workload, kernel=a["KERNEL"], initrd=initrd, image=image, disk_if=disk_if,
                       cache=cache, vhost_user_sock=vhost_user_sock, num_queues=num_queues,
                       mem_mb=mem_mb, accel=accel, smp=smp, params=params, qmp=qmp,
                       extra=extra_qemu_args)
    res.qemu_cmd = cmd
    t0 = time.monotonic()
    log = open(res.console_log, "w")
    try:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    except OSError as e:
        res.status, res.reason = "ERROR", f"cannot start {QEMU}: {e}"
        if daemon:
            res.daemon_exit = daemon.stop()
        return res
    lines: "queue.Queue[Optional[str]]" = queue.Queue()

    def reader():
        for raw in proc.stdout:
            lines.put(raw.decode("utf-8", "replace"))
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    deadline = t0 + timeout
    kill_at = None
    eof = False
    while not eof:
        now = time.monotonic()
        if kill_at is not None and now >= kill_at:
            proc.kill()
            res.killed, res.status, res.reason = True, "KILLED", f"killed {kill_delay}s after '{kill_on}'"
            kill_at = None
        if now >= deadline and not res.killed:
            proc.kill()
            res.status, res.reason = "TIMEOUT", f"no verdict in {timeout}s"
            break
        wait = min(deadline, kill_at or deadline) - now
        try:
            raw = lines.get(timeout=max(0.01, min(wait, 0.5)))
        except queue.Empty:
            continue
        if raw is None:
            eof = True
            break
        log.write(raw)
        log.flush()
        line = ANSI.sub("", raw).replace("\r", "").strip()
        if verbose:
            print(line, file=sys.stderr)
        m = KV.match(line)
        if m:
            res.markers[m.group(1)] = m.group(2)
            continue
        if line.startswith(("GUEST_", "HAMMER", "WORKLOAD ")):
            res.events.append(line)
        if line.startswith("GUEST_INIT_START"):
            res.boot_s = round(time.monotonic() - t0, 3)
            um = re.search(r"uptime=([0-9.]+)", line)
            if um:
                res.guest_uptime_at_init = float(um.group(1))
        w = WORKLOAD.match(line)
        if w and not res.killed:
            res.status = w.group(2)
            res.reason = w.group(3) or ""
        if kill_on and kill_at is None and not res.killed and line.startswith(kill_on):
            kill_at = time.monotonic() + kill_delay
    try:
        res.qemu_exit = proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        res.qemu_exit = proc.wait()
    res.elapsed_s = round(time.monotonic() - t0, 3)
    log.close()
    if res.status == "NO_RESULT":
        res.reason = f"QEMU exited with {res.qemu_exit} before the guest printed a verdict"
    if daemon:
        time.sleep(0.3)  # a daemon that crashes on the disconnect does so now
        res.daemon_alive_after_guest = daemon.alive()
        if not keep_daemon:
            res.daemon_exit = daemon.stop()
    if image and host_check and res.status == "PASS":
        res.host_check = _host_check(workload, image, res.markers)
        if res.host_check and not res.host_check["match"]:
            res.reason = "host check: image, pattern and guest sha256 differ"
    return res


def main(argv: Optional[List[str]] = None) -> int:
    import argparse
    import json

    p = argparse.ArgumentParser(
        prog="run-qemu",
        description="Boot the test guest once in QEMU and print the result as JSON. "
                    "Exit 0: ok (PASS and the host check agrees, or KILLED as asked with the "
                    "daemon alive); 1: FAIL/NO_RESULT; 2: TIMEOUT/ERROR.")
    p.add_argument("--workload", "-w", required=True,
                   help="boot, vda-verify, vda-check, sda-verify, sda-check, fio-verify, vda-hammer, sda-hammer")
    p.add_argument("--image", help="raw disk image")
    p.add_argument("--if", dest="disk_if", default="virtio", choices=["virtio", "ide", "scsi"],
                   help="how QEMU attaches --image when no export is used")
    p.add_argument("--cache", default="none", help="QEMU -drive cache= for a plain image (default none)")
    p.add_argument("--vhost-user-blk", dest="sock", help="connect to this vhost-user-blk socket")
    p.add_argument("--export-cmd", help="start this storage daemon on --image, e.g. 'qemu-storage-daemon' "
                   "or 'target/release/vmm-bin storage-daemon' (the --blockdev/--export options are added)")
    p.add_argument("--qsd", action="store_true", help="short for --export-cmd qemu-storage-daemon")
    p.add_argument("--export-direct", action="store_true", help="cache.direct=on,aio=io_uring on the export's file node")
    p.add_argument("--num-queues", type=int, default=2)
    p.add_argument("--param", "-p", action="append", default=[], metavar="KEY=VALUE",
                   help="guest parameter: pattern_seed, size_mb, hammer_secs, fio_engine, ...")
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--accel", default="tcg")
    p.add_argument("--mem-mb", type=int, default=512)
    p.add_argument("--smp", type=int, default=1)
    p.add_argument("--kill-on", help="SIGKILL QEMU after a console line starting with this")
    p.add_argument("--kill-delay", type=float, default=0.0)
    p.add_argument("--no-host-check", action="store_true")
    p.add_argument("--console-log", help="write the console here (default: a temp file)")
    p.add_argument("--qmp", help="also give QEMU -qmp unix:PATH,server=on,wait=off")
    p.add_argument("--qemu-arg", action="append", default=[], help="extra QEMU argument (repeatable)")
    p.add_argument("--verbose", "-v", action="store_true", help="echo the console to stderr")
    args = p.parse_args(argv)
    params = {}
    for kv in args.param:
        k, _, v = kv.partition("=")
        params[k] = v
    export = shlex.split(args.export_cmd) if args.export_cmd else (["qemu-storage-daemon"] if args.qsd else None)
    r = run_guest(args.workload, image=args.image, disk_if=args.disk_if, cache=args.cache,
                  vhost_user_sock=args.sock, export_cmd=export, export_direct=args.export_direct,
                  num_queues=args.num_queues, params=params, timeout=args.timeout, accel=args.accel,
                  mem_mb=args.mem_mb, smp=args.smp, kill_on=args.kill_on, kill_delay=args.kill_delay,
                  host_check=not args.no_host_check, console_log=args.console_log,
                  verbose=args.verbose, qmp=args.qmp, extra_qemu_args=args.qemu_arg)
    print(json.dumps(r.to_dict(), indent=1))
    if r.ok:
        return 0
    return 2 if r.status in ("TIMEOUT", "ERROR") else 1


if __name__ == "__main__":
    sys.exit(main())
