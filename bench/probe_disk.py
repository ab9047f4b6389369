"""How fast this machine's disk takes 1 GiB: the floor under any durable save.

Writes the same 1 GiB of memory to a new file in three ways, interleaved, and
prints the median time of each:

- ``buffered``: ``pwrite`` into the page cache, no sync (what
  ``safetensors.torch.save_file`` does);
- ``buffered+fsync``: the same, then ``fsync`` (a durable save through the page cache);
- ``direct``: ``O_DIRECT`` writes of page-aligned blocks by ``--threads``
  threads into a preallocated file, then ``fsync`` (what ``dt.save`` does for
  large uncompressed files; framework/src/direct.rs).

Usage::

    .venv/bin/python bench/probe_disk.py [--dir /tmp] [--block-mib 4] [--threads 4] [--rounds 3]

Every file is deleted, and ``os.sync()`` called, before each timed write.
"""

from __future__ import annotations

import argparse
import mmap
import os
import statistics
import tempfile
import threading
import time
from typing import Callable, Dict, List

SIZE = 1 << 30


def fresh(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    os.sync()


def buffered(path: str, mem: memoryview, block: int, sync: bool) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for at in range(0, SIZE, block):
            os.pwrite(fd, mem[at : at + block], at)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


def direct(path: str, mem: memoryview, block: int, threads: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o644)
    try:
        os.posix_fallocate(fd, 0, SIZE)
        todo = list(range(0, SIZE, block))
        lock = threading.Lock()

        def work() -> None:
            while True:
                with lock:
                    if not todo:
                        return
                    at = todo.pop()
                os.pwrite(fd, mem[at : at + block], at)

        workers = [threading.Thread(target=work) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        os.fsync(fd)
    finally:
        os.close(fd)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("--dir", default=None, help="where the file goes (default: the temp folder)")
    ap.add_argument("--block-mib", type=int, default=4, help="write size in MiB (default 4)")
    ap.add_argument("--threads", type=int, default=4, help="direct-I/O writer threads (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="timed writes of each kind (default 3)")
    args = ap.parse_args()
    block = args.block_mib << 20
    buf = mmap.mmap(-1, SIZE)  # page-aligned, as O_DIRECT needs
    for at in range(0, SIZE, 4096):
        buf[at] = (at >> 12) & 255
    mem = memoryview(buf)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = os.path.join(tmp, "probe.bin")
        cases: Dict[str, Callable[[], None]] = {
            "buffered (no sync)": lambda: buffered(path, mem, block, False),
            "buffered+fsync": lambda: buffered(path, mem, block, True),
            f"direct, {args.threads} threads, +fsync": lambda: direct(path, mem, block, args.threads),
        }
        times: Dict[str, List[float]] = {k: [] for k in cases}
        for _ in range(args.rounds):
            for name, fn in cases.items():
                fresh(path)
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        fresh(path)
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:28s} median {med:.3f} s ({SIZE / med / 1e9:.2f} GB/s)  all {[round(t, 3) for t in ts]}")


if __name__ == "__main__":
    main()
