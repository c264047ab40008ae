/*
 * disktest.S that never stops: after each PASS it reads, checks, writes and reads
 * back again, printing a dot per checked 64-sector batch and PASS each round (FAIL
 * and isa-debug-exit 0x11 on a mismatch).
 * The guest-side verified I/O of the SCSI hotplug-under-load test.
 */
        .set    LOOP, 1
        .include "disktest.S"
