"""Repack benchmark: ``dt.repack`` against the ways to do it without it.

Weights: the real all-MiniLM-L6-v2 ``model.safetensors`` (see
``bench_compression.py``, which fetches it into the cache folder), as F32 and
cast to BF16. For each change of storage, in a fresh subprocess each:

- ``repack``: ``dt.repack(src, dst, ...)``;
- ``python``: what a user writes without it: ``dt.open`` + ``get_tensors`` +
  ``dt.save`` with the new settings (the state dict held in memory);
- ``zstd-3`` (for the compression of an uncompressed file only): python
  ``zstandard`` level 3 over the whole file, read and written back.

    python bench/bench_repack.py [--cache DIR] [--rounds 3] [--out FILE]

Each subprocess times one operation (warm page cache, torch imported, no
fsync on either side: ``durable=False``) and reports its seconds and its
extra peak resident memory (``VmHWM``, reset just before, minus the resident
set then). The cases run in
``--rounds`` interleaved rounds; each reported ratio is the median of the
rounds' own ratios, as in ``bench_compression.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Tuple

from bench_compression import ROOT, fetch_weights, state_dict

#: (label, source settings, new settings): dt.save / dt.repack keyword arguments.
CHANGES: List[Tuple[str, Dict[str, Any], Dict[str, Any]]] = [
    ("none -> zstd", {"checksum": True}, {"compress": True}),
    ("zstd -> lz4", {"compress": True, "checksum": True}, {"compress": "lz4"}),
    ("zstd -> none", {"compress": True, "checksum": True}, {"compress": False}),
    ("sha256 -> blake3", {"compress": True, "checksum": True}, {"checksum": "blake3"}),
]


def _status_bytes(field: str) -> int:
    """A ``kB`` field of ``/proc/self/status`` (``VmRSS``, ``VmHWM``), in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _reset_peak() -> None:
    """Start the peak resident set (``VmHWM``) afresh from the current one."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def worker(method: str, src: str, dst: str, settings: Dict[str, Any], source: Dict[str, Any]) -> None:
    """Subprocess body: run one operation, print its seconds and extra peak RSS."""
    import torch  # noqa: F401 - imported before timing, as a user's process has it already

    import deathtensors as dt

    with open(src, "rb") as fh:  # warm the page cache
        while fh.read(1 << 24):
            pass
    if method == "zstd-3":
        import zstandard

        compressor = zstandard.ZstdCompressor(level=3)
    _reset_peak()
    base = _status_bytes("VmRSS")
    t0 = time.perf_counter()
    if method == "repack":
        dt.repack(src, dst, durable=False, **settings)
    elif method == "python":
        with dt.open(src) as f:
            tensors = f.get_tensors()
            kept = {k: source.get(k, False) for k in ("compress", "checksum")}
            dt.save(dst, tensors, global_metadata=f.metadata(), durable=False, **{**kept, **settings})
    elif method == "zstd-3":
        with open(src, "rb") as fh, open(dst, "wb") as out:
            out.write(compressor.compress(fh.read()))
    seconds = time.perf_counter() - t0
    peak = _status_bytes("VmHWM")
    print(json.dumps({"seconds": seconds, "extra_rss": max(0, peak - base), "bytes": os.path.getsize(dst)}))


def run(method: str, src: str, dst: str, settings: Dict[str, Any], source: Dict[str, Any]) -> Dict[str, Any]:
    cmd = [sys.executable, __file__, "--worker", method, "--src", src, "--dst", dst]
    cmd += ["--settings", json.dumps(settings), "--source", json.dumps(source)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    result: Dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    os.remove(dst)
    return result


def measure(weights: str, tmp: str, rounds: int) -> Dict[str, Any]:
    import torch

    import deathtensors as dt

    results: Dict[str, Any] = {}
    for dtype_name, dtype in (("BF16", torch.bfloat16), ("F32", torch.float32)):
        sd = state_dict(weights, dtype)
        raw = sum(t.numel() * t.element_size() for t in sd.values())
        for label, source, settings in CHANGES:
            src = os.path.join(tmp, f"src-{dtype_name}.deathtensors")
            dt.save(src, sd, **source)
            methods = ["repack", "python"] + (["zstd-3"] if label == "none -> zstd" else [])
            runs: Dict[str, List[Dict[str, Any]]] = {m: [] for m in methods}
            for _ in range(rounds):
                for m in methods:
                    runs[m].append(run(m, src, os.path.join(tmp, "dst"), settings, source))
            row: Dict[str, Any] = {"raw_bytes": raw, "src_bytes": os.path.getsize(src)}
            for m in methods:
                row[m] = {
                    "seconds": statistics.median(r["seconds"] for r in runs[m]),
                    "extra_rss": statistics.median(r["extra_rss"] for r in runs[m]),
                    "bytes": runs[m][0]["bytes"],
                }
            for m in methods[1:]:
                row[f"time_vs_{m}"] = statistics.median(
                    a["seconds"] / b["seconds"] for a, b in zip(runs["repack"], runs[m])
                )
            results[f"{dtype_name} {label}"] = row
            print(report_row(f"{dtype_name} {label}", row), flush=True)
    return results


def report_row(name: str, row: Dict[str, Any]) -> str:
    mib = 1 << 20
    cells = [f"{name:<22}"]
    for m in ("repack", "python", "zstd-3"):
        if m in row:
            r = row[m]
            seconds, extra, size = r["seconds"] * 1000, r["extra_rss"] / mib, r["bytes"] / mib
            cells.append(f"{m} {seconds:7.1f} ms, +{extra:6.1f} MiB, {size:5.1f} MiB")
    ratios = [f"repack/{m[8:]} {row[m]:.2f}" for m in row if m.startswith("time_vs_")]
    return " | ".join(cells + ratios)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", default=os.environ.get("DT_BENCH_CACHE", os.path.join(ROOT, ".cache", "bench")))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    ap.add_argument("--dst", help=argparse.SUPPRESS)
    ap.add_argument("--settings", help=argparse.SUPPRESS)
    ap.add_argument("--source", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.src, args.dst, json.loads(args.settings), json.loads(args.source))
        return
    weights = fetch_weights(args.cache)
    with tempfile.TemporaryDirectory(dir=os.path.join(ROOT, ".cache")) as tmp:
        results = measure(weights, tmp, args.rounds)
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
