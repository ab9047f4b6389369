"""Lazy slices and many-tensor files, against safetensors in the same run.

Slices: one BF16 tensor of ``--rows`` x 2048 (1 GiB by default), saved
compressed (zstd), uncompressed, and as safetensors; each case reads one
slice in a fresh process (file in the page cache, read once before) and
reports its time and its extra peak RSS. safetensors' ``get_slice`` reads
through a memory map, so its peak counts the page-cache pages it touched.

Open: a file of ``--tensors`` small tensors; ``dt.open`` + ``keys()`` against
``safe_open`` + ``keys()``, medians of ``--repeats`` in one process.

    .venv/bin/python bench/bench_slicing.py                 # 1 GiB tensor, 200,000 tensors
    .venv/bin/python bench/bench_slicing.py --rows 65536 --tensors 50000
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

CASES = {
    "rows [1000:1064]": "(slice(1000, 1064),)",
    "step [::65536]": "(slice(None, None, 65536),)",
    "column [:, 0:1]": "(slice(None), slice(0, 1))",
    "row start [7, :8]": "(7, slice(0, 8))",
}


def peak_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))


def worker(kind: str, path: str, key: str) -> None:
    """Subprocess body: one slice, its seconds and extra peak RSS (MiB)."""
    import torch  # noqa: F401  (imported before the clock, as both sides need it)
    from safetensors import safe_open

    import deathtensors as dt

    with open(path, "rb") as f:  # warm the page cache
        while f.read(1 << 24):
            pass
    if os.path.exists("/proc/self/clear_refs"):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    base = peak_kib()
    start = time.perf_counter()
    if kind == "safetensors":
        with safe_open(path, "pt") as g:
            out = g.get_slice("w")[eval(key)].clone()
    else:
        with dt.open(path) as f:
            out = f.get_slice("w")[eval(key)]
    seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "extra_mib": (peak_kib() - base) / 1024, "numel": out.numel()}))


def run_worker(kind: str, path: str, key: str) -> dict:
    cmd = [sys.executable, __file__, "--worker", kind, "--path", path, "--key", key]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def slices(tmp: str, rows: int, repeats: int) -> list:
    import torch
    from safetensors.torch import save_file

    import deathtensors as dt

    t = torch.empty(rows, 2048, dtype=torch.bfloat16)
    for i in range(0, rows, 8192):
        t[i : i + 8192].normal_()
    paths = {
        "zstd": os.path.join(tmp, "z.deathtensors"),
        "plain": os.path.join(tmp, "p.deathtensors"),
        "safetensors": os.path.join(tmp, "s.safetensors"),
    }
    dt.save(paths["zstd"], {"w": t}, compress=True)
    dt.save(paths["plain"], {"w": t})
    save_file({"w": t}, paths["safetensors"])
    del t
    results = []
    for name, key in CASES.items():
        row = {"case": name}
        for kind, path in paths.items():
            runs = [run_worker(kind, path, key) for _ in range(repeats)]
            row[kind] = {
                "ms": statistics.median(r["seconds"] for r in runs) * 1e3,
                "extra_mib": statistics.median(r["extra_mib"] for r in runs),
            }
        results.append(row)
    return results


def opening(tmp: str, n: int, repeats: int) -> dict:
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import save_file

    import deathtensors as dt

    tensors = {f"model.layers.{i}.weight": np.zeros(4, np.float32) for i in range(n)}
    ours, theirs = os.path.join(tmp, "many.deathtensors"), os.path.join(tmp, "many.safetensors")
    dt.save(ours, tensors)
    save_file(tensors, theirs)
    times: dict = {"deathtensors": [], "safetensors": []}
    for _ in range(repeats):  # interleaved
        start = time.perf_counter()
        with dt.open(ours) as f:
            f.keys()
        times["deathtensors"].append(time.perf_counter() - start)
        start = time.perf_counter()
        with safe_open(theirs, "np") as g:
            g.keys()
        times["safetensors"].append(time.perf_counter() - start)
    ours_s, theirs_s = (statistics.median(times[k]) for k in ("deathtensors", "safetensors"))
    return {"tensors": n, "deathtensors_s": ours_s, "safetensors_s": theirs_s, "ratio": ours_s / theirs_s}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rows", type=int, default=262144, help="rows of 2048 BF16 (262144: 1 GiB)")
    p.add_argument("--tensors", type=int, default=200_000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dir", default=None, help="where the files go (default: a temp dir under /tmp)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--path", help=argparse.SUPPRESS)
    p.add_argument("--key", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.path, args.key)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows = slices(tmp, args.rows, args.repeats)
        for name in os.listdir(tmp):
            os.remove(os.path.join(tmp, name))
        opened = opening(tmp, args.tensors, max(args.repeats, 5))
    print("| slice | zstd | uncompressed | safetensors |")
    print("|---|---|---|---|")
    for row in rows:
        cells = [f"{row[k]['ms']:.1f} ms / {row[k]['extra_mib']:.0f} MiB" for k in ("zstd", "plain", "safetensors")]
        print(f"| `{row['case']}` | " + " | ".join(cells) + " |")
    print()
    print(
        f"open + keys of {opened['tensors']} tensors: {opened['deathtensors_s']:.3f} s against "
        f"safetensors' {opened['safetensors_s']:.3f} s (**{opened['ratio']:.2f}x**)"
    )
    print(json.dumps({"slices": rows, "open": opened}))


if __name__ == "__main__":
    main()
