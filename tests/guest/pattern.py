"""The guest test pattern, computed on the host independently of the guest's patgen.

Same function as tests/guest/patgen.c: the 8-byte little-endian word at byte offset 8*i is
mix64(base + i*G) with base = mix64(seed + G), G = 0x9E3779B97F4A7C15, and mix64 the
splitmix64 finalizer. Pure Python (about 1 s per 16 MiB), so a test usually checks the
sha256 the guest printed against `sha256_of_region()` of the image file, and spot-checks
a few blocks with `generate()`.

CLI: python3 tests/guest/pattern.py SEED OFFSET LEN [--sha256]
"""

import hashlib
import struct
import sys

G = 0x9E3779B97F4A7C15
M = (1 << 64) - 1


def mix64(z: int) -> int:
    z &= M
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M
    return z ^ (z >> 31)


def generate(seed: int, offset: int, length: int) -> bytes:
    """The pattern bytes for [offset, offset+length); both multiples of 8."""
    if offset % 8 or length % 8:
        raise ValueError("offset and length must be multiples of 8")
    base = mix64(seed + G)
    first = offset // 8
    words = [mix64(base + i * G) for i in range(first, first + length // 8)]
    return struct.pack("<%dQ" % len(words), *words)


def sha256_of_pattern(seed: int, offset: int, length: int, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    pos = offset
    while pos < offset + length:
        n = min(chunk, offset + length - pos)
        h.update(generate(seed, pos, n))
        pos += n
    return h.hexdigest()


def sha256_of_region(path: str, offset: int, length: int) -> str:
    """sha256 of [offset, offset+length) of a file (an image the guest wrote to)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            b = f.read(min(left, 1 << 20))
            if not b:
                raise ValueError(f"{path} ends before {offset + length}")
            h.update(b)
            left -= len(b)
    return h.hexdigest()


def verify_file(path: str, seed: int, offset: int, length: int, step: int = 4096):
    """Returns None if the file holds the pattern over the region, else the first bad offset."""
    with open(path, "rb") as f:
        f.seek(offset)
        pos = offset
        while pos < offset + length:
            n = min(1 << 20, offset + length - pos)
            got = f.read(n)
            want = generate(seed, pos, n)
            if got != want:
                for k in range(0, n, step):
                    if got[k:k + step] != want[k:k + step]:
                        return pos + k
            pos += n
    return None


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if len(args) != 3:
        sys.exit(__doc__)
    s, o, n = (int(a, 0) for a in args)
    if "--sha256" in sys.argv:
        print(sha256_of_pattern(s, o, n))
    else:
        sys.stdout.buffer.write(generate(s, o, n))
