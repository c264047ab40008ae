// patgen: the deterministic test pattern shared by the guest workloads and the host.
//
// The pattern is a function of (seed, byte offset) only, so any region can be produced,
// written or checked on its own, and a block written at the wrong offset is caught:
//
//   base    = mix64(seed + G)
//   word(i) = mix64(base + i * G)        for the 8-byte word at byte offset 8*i (little endian)
//
// with G = 0x9E3779B97F4A7C15 and mix64 the splitmix64 finalizer. tests/guest/pattern.py is an
// independent implementation of the same function for the host.
//
// Usage (offsets and lengths in bytes; device I/O uses O_DIRECT and needs 4096 alignment):
//   patgen gen    SEED OFFSET LEN                  write the pattern to stdout
//   patgen write  SEED DEV OFFSET LEN              O_DIRECT write + fsync
//   patgen verify SEED DEV OFFSET LEN              O_DIRECT read and compare (exit 1 on mismatch)
//   patgen hammer SEED DEV OFFSET LEN [SECONDS]    random 4 KiB O_DIRECT pattern writes and
//                                                  verified reads until SECONDS pass (0: forever)
// Built static (gcc -O2 -static) so the same binary runs in the guest and on the host.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define G 0x9E3779B97F4A7C15ULL
#define CHUNK (1u << 20)

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static void fill(uint64_t seed, uint64_t off, uint8_t *buf, size_t len) {
    uint64_t base = mix64(seed + G);
    uint64_t i = off / 8;
    for (size_t k = 0; k < len; k += 8, i++) {
        uint64_t w = mix64(base + i * G);
        for (int b = 0; b < 8; b++) buf[k + b] = (uint8_t)(w >> (8 * b));
    }
}

static uint64_t num(const char *s) {
    char *end;
    errno = 0;
    uint64_t v = strtoull(s, &end, 0);
    if (errno || *end) { fprintf(stderr, "patgen: bad number '%s'\n", s); exit(2); }
    return v;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int open_dev(const char *dev, int flags) {
    int fd = open(dev, flags | O_DIRECT);
    if (fd < 0) { fprintf(stderr, "patgen: open %s: %s\n", dev, strerror(errno)); exit(1); }
    return fd;
}

static void *abuf(size_t len) {
    void *p;
    if (posix_memalign(&p, 4096, len)) { fprintf(stderr, "patgen: out of memory\n"); exit(1); }
    return p;
}

static void full_pwrite(int fd, const uint8_t *buf, size_t len, uint64_t off) {
    while (len) {
        ssize_t n = pwrite(fd, buf, len, (off_t)off);
        if (n <= 0) {
            fprintf(stderr, "patgen: pwrite at %" PRIu64 ": %s\n", off, n ? strerror(errno) : "short");
            exit(1);
        }
        buf += n; len -= (size_t)n; off += (uint64_t)n;
    }
}

static void full_pread(int fd, uint8_t *buf, size_t len, uint64_t off) {
    while (len) {
        ssize_t n = pread(fd, buf, len, (off_t)off);
        if (n <= 0) {
            fprintf(stderr, "patgen: pread at %" PRIu64 ": %s\n", off, n ? strerror(errno) : "end of device");
            exit(1);
        }
        buf += n; len -= (size_t)n; off += (uint64_t)n;
    }
}

static int compare(const uint8_t *got, const uint8_t *want, size_t len, uint64_t off) {
    if (memcmp(got, want, len) == 0) return 0;
    size_t k = 0;
    while (got[k] == want[k]) k++;
    fprintf(stderr, "patgen: MISMATCH at byte %" PRIu64 " (sector %" PRIu64 "): got %02x want %02x\n",
            off + k, (off + k) / 512, got[k], want[k]);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2) goto usage;
    const char *cmd = argv[1];
    if (!strcmp(cmd, "gen") && argc == 5) {
        uint64_t seed = num(argv[2]), off = num(argv[3]), len = num(argv[4]);
        if (off % 8 || len % 8) { fprintf(stderr, "patgen: offset and length must be multiples of 8\n"); return 2; }
        uint8_t *buf = abuf(CHUNK);
        while (len) {
            size_t n = len < CHUNK ? (size_t)len : CHUNK;
            fill(seed, off, buf, n);
            if (fwrite(buf, 1, n, stdout) != n) { perror("patgen: stdout"); return 1; }
            off += n; len -= n;
        }
        return fflush(stdout) ? 1 : 0;
    }
    if ((!strcmp(cmd, "write") || !strcmp(cmd, "verify")) && argc == 6) {
        uint64_t seed = num(argv[2]), off = num(argv[4]), len = num(argv[5]);
        if (off % 4096 || len % 4096) { fprintf(stderr, "patgen: offset and length must be multiples of 4096\n"); return 2; }
        int w = !strcmp(cmd, "write");
        int fd = open_dev(argv[3], w ? O_WRONLY : O_RDONLY);
        uint8_t *want = abuf(CHUNK), *got = abuf(CHUNK);
        while (len) {
            size_t n = len < CHUNK ? (size_t)len : CHUNK;
            fill(seed, off, want, n);
            if (w) {
                full_pwrite(fd, want, n, off);
            } else {
                full_pread(fd, got, n, off);
                if (compare(got, want, n, off)) return 1;
            }
            off += n; len -= n;
        }
        if (w && fsync(fd)) { perror("patgen: fsync"); return 1; }
        close(fd);
        return 0;
    }
    if (!strcmp(cmd, "hammer") && (argc == 6 || argc == 7)) {
        uint64_t seed = num(argv[2]), off = num(argv[4]), len = num(argv[5]);
        double secs = argc == 7 ? (double)num(argv[6]) : 0;
        if (off % 4096 || len % 4096 || len == 0) { fprintf(stderr, "patgen: bad region\n"); return 2; }
        int fd = open_dev(argv[3], O_RDWR);
        uint8_t *want = abuf(4096), *got = abuf(4096);
        uint64_t blocks = len / 4096, rng = mix64(seed ^ (uint64_t)getpid() ^ (uint64_t)(now() * 1e6));
        uint64_t ops = 0, reads = 0, writes = 0;
        double start = now(), last = start;
        printf("HAMMER_RUNNING\n");
        fflush(stdout);
        for (;;) {
            rng = mix64(rng + G);
            uint64_t o = off + (rng % blocks) * 4096;
            fill(seed, o, want, 4096);
            if (rng >> 63) {
                full_pwrite(fd, want, 4096, o);
                writes++;
            } else {
                full_pread(fd, got, 4096, o);
                if (compare(got, want, 4096, o)) return 1;
                reads++;
            }
            ops++;
            if ((ops & 255) == 0) {
                double t = now();
                if (t - last >= 1.0) {
                    printf("HAMMER ops=%" PRIu64 " reads=%" PRIu64 " writes=%" PRIu64 "\n", ops, reads, writes);
                    fflush(stdout);
                    last = t;
                }
                if (secs > 0 && t - start >= secs) break;
            }
        }
        if (fsync(fd)) { perror("patgen: fsync"); return 1; }
        printf("HAMMER_DONE ops=%" PRIu64 "\n", ops);
        return 0;
    }
usage:
    fprintf(stderr,
            "usage: patgen gen SEED OFFSET LEN | write SEED DEV OFFSET LEN | verify SEED DEV OFFSET LEN |\n"
            "              hammer SEED DEV OFFSET LEN [SECONDS]\n");
    return 2;
}
