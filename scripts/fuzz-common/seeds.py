"""Shared by the seed generators (<crate>/fuzz/seeds/gen.py)."""

import os


def write_seeds(out, seeds):
    """Writes each seed of the dict `seeds` (name -> bytes) as a file in `out`."""
    os.makedirs(out, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
    print(f"wrote {len(seeds)} seeds to {out}")
