"""Probe: minor page faults and time of repeated whole-file reads, in one process.

Explains the two-thread figures of ``bench_compression.py``: run it with
``RAYON_NUM_THREADS=1`` and ``=2`` (and with ``GLIBC_TUNABLES`` from
``bench_compression.REUSE_ENV`` to keep freed memory), on the real
all-MiniLM-L6-v2 weights cast to ``--dtype``:

    RAYON_NUM_THREADS=2 python bench/probe_read_scaling.py --dtype F32 [--compress lz4]

It prints the median time of ``--repeats`` reads of every tensor
(``read_many``, what ``get_tensors`` does minus the torch views) and the
minor page faults each read took (``ru_minflt``): a read whose output
memory comes fresh from the kernel faults once per 4 KiB page.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import tempfile
import time

from bench_compression import fetch_weights, state_dict

import deathtensors as dt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dtype", choices=["BF16", "F16", "F32"], default="F32")
    p.add_argument("--compress", default="zstd", help="zstd (the default mode), lz4 or none")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--cache", default=os.path.join(os.path.dirname(os.path.dirname(__file__)), ".cache", "weights"))
    args = p.parse_args()
    import torch

    dtype = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}[args.dtype]
    compress = {"zstd": True, "none": False}.get(args.compress, args.compress)
    sd = state_dict(fetch_weights(args.cache), dtype)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "probe.deathtensors")
        dt.save(path, sd, compress=compress)
        with dt.open(path) as f:
            names = f.keys()
            for _ in range(2):  # warm the page cache and the allocator
                f._reader.read_many(names)
            times, faults = [], []
            for _ in range(args.repeats):
                before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                t = time.perf_counter()
                f._reader.read_many(names)
                times.append(time.perf_counter() - t)
                faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    raw = sum(t.numel() * t.element_size() for t in sd.values())
    median = statistics.median(times)
    print(
        f"{args.dtype} {args.compress} RAYON_NUM_THREADS={os.environ.get('RAYON_NUM_THREADS', '-')} "
        f"GLIBC_TUNABLES={'set' if os.environ.get('GLIBC_TUNABLES') else '-'}: "
        f"median {median * 1e3:.1f} ms ({raw / median / 1e6:.0f} MB/s), "
        f"faults per read {statistics.median(faults):.0f} (each: {faults})"
    )


if __name__ == "__main__":
    main()
