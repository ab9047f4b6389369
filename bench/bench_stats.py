"""Stats benchmark (issue #4): f.stats throughput on F32, one core and two.

    python bench/bench_stats.py [--mib 512] [--repeats 5]

Peer in the same run: torch computing the same figures (min, max, mean,
population std, nnz, NaN and Inf counts) in float64 from a tensor already in
memory; ours reads the file (warm page cache) and never builds a tensor.
Thread counts are set with RAYON_NUM_THREADS in fresh subprocesses.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

from _timing import median_time


def worker(path: str, repeats: int) -> None:
    import deathtensors as dt

    with dt.open(path) as f:
        f.get_bytes("w")  # warm the page cache
        t = median_time(lambda: f.stats("w"), repeats)
    print(json.dumps({"seconds": t}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mib", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.repeats)
        return

    import torch

    import deathtensors as dt

    n = args.mib * (1 << 20) // 4
    t = torch.randn(n, generator=torch.Generator().manual_seed(0)) * 0.02 + 1e3
    nbytes = n * 4
    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "w.deathtensors")
        dt.save(p, {"w": t})

        def torch_stats():
            x = t.to(torch.float64)
            finite = x[torch.isfinite(x)]
            return (
                finite.min(),
                finite.max(),
                finite.mean(),
                finite.std(unbiased=False),
                (x != 0).sum(),
                torch.isnan(x).sum(),
                torch.isinf(x).sum(),
            )

        torch.set_num_threads(1)
        peer1 = median_time(torch_stats, args.repeats)
        rows = {}
        for threads in (1, 2):
            env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
            out = subprocess.run(
                [sys.executable, __file__, "--worker", p, "--repeats", str(args.repeats)],
                env=env,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            rows[threads] = json.loads(out.strip().splitlines()[-1])["seconds"]
        with dt.open(p) as f:
            s = f.stats("w")
        ref = t.to(torch.float64)
        rel_mean = abs(s["mean"] - float(ref.mean())) / abs(float(ref.mean()))
        rel_std = abs(s["stddev"] - float(ref.std(unbiased=False))) / float(ref.std(unbiased=False))
    gbps = {k: nbytes / v / 1e9 for k, v in rows.items()}
    print(f"F32 tensor of {args.mib} MiB ({n:,} elements), median of {args.repeats}")
    print("| | time | throughput | vs torch float64, 1 thread |")
    print("|---|---|---|---|")
    print(f"| torch float64 stats, 1 thread | {peer1 * 1e3:.0f} ms | {nbytes / peer1 / 1e9:.2f} GB/s | 1.00× |")
    for k in (1, 2):
        print(
            f"| f.stats, {k} thread{'s' if k > 1 else ''} | {rows[k] * 1e3:.0f} ms | **{gbps[k]:.2f} GB/s** | "
            f"{peer1 / rows[k]:.2f}× |"
        )
    print(f"relative error vs torch float64: mean {rel_mean:.1e}, stddev {rel_std:.1e}")


if __name__ == "__main__":
    main()
