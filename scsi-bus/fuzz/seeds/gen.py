#!/usr/bin/env python3
"""Writes the seed corpus of the `cdb` target into seeds/cdb/ (and, as virtio-scsi
command headers around the same CDBs, virtio-scsi/fuzz/seeds/layouts/).

seabios-scsi.trace holds the CDBs SeaBIOS sent a scsi-hd behind virtio-scsi in QEMU 10
(QEMU's scsi_disk_new_request trace event; see capture.sh). Linux's usual start-up
commands (REPORT LUNS, READ CAPACITY(16), MODE SENSE(6), VPD INQUIRYs, READ(10/16),
WRITE(10), SYNCHRONIZE CACHE, UNMAP, WRITE SAME) are added by hand.
"""

import os
import re
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "cdb")
LAYOUTS = os.path.join(HERE, "..", "..", "..", "virtio-scsi", "fuzz", "seeds", "layouts")

LINUX = {
    "report-luns": "a0 00 00 00 00 00 00 00 10 00 00 00",
    "read-capacity-16": "9e 10 00 00 00 00 00 00 00 00 00 00 00 20 00 00",
    "mode-sense-6": "1a 00 3f 00 04 00",
    "inquiry-vpd-b0": "12 01 b0 00 40 00",
    "inquiry-vpd-83": "12 01 83 00 ff 00",
    "read-10": "28 00 00 00 00 08 00 00 08 00",
    "read-16": "88 00 00 00 00 00 00 00 00 10 00 00 00 08 00 00",
    "write-10": "2a 00 00 00 00 10 00 00 01 00",
    "sync-cache-10": "35 00 00 00 00 00 00 00 00 00",
    "unmap": "42 00 00 00 00 00 00 00 18 00",
    "write-same-16": "93 08 00 00 00 00 00 00 00 00 00 00 00 08 00 00",
}


def main():
    os.makedirs(OUT, exist_ok=True)
    os.makedirs(LAYOUTS, exist_ok=True)
    cdbs = {}
    for i, line in enumerate(open(os.path.join(HERE, "seabios-scsi.trace"))):
        m = re.search(r"data=([0-9a-f ]+)", line)
        if m:
            cdbs[f"seabios-{i:02}"] = bytes.fromhex(m.group(1))
    cdbs.update({k: bytes.fromhex(v) for k, v in LINUX.items()})
    for name, cdb in cdbs.items():
        open(os.path.join(OUT, name), "wb").write(cdb)
        # virtio_scsi_cmd_req: lun[8] (target 0, LUN 0), tag, task_attr, prio, crn, cdb[32].
        req = bytes([1, 0, 0x40, 0, 0, 0, 0, 0]) + struct.pack("<QBBB", 1, 0, 0, 0)
        open(os.path.join(LAYOUTS, name), "wb").write(req + cdb.ljust(32, b"\0"))
    print(f"wrote {len(cdbs)} seeds to {OUT} and {LAYOUTS}")


if __name__ == "__main__":
    main()
