"""Core speed and memory benchmark of deathtensors (issue #2, "Speed and memory").

On a state dict of 128 BF16 tensors totalling ``--size-mib`` MiB (default 1 GiB,
2048x2048 each), measured in one run on one machine, each figure is reported
as a ratio against its peer, with both absolute figures:

1. ``dt.save`` (uncompressed) time / ``safetensors.torch.save_file`` time   (target <= 0.6)
2. ``dt.open`` + ``get_tensor`` of every tensor / ``torch.load(weights_only=True)``
   of the same tensors saved with ``torch.save``, each load in a fresh
   process (import time excluded)                                          (target <= 0.5)
3. extra peak RSS of ``dt.save`` / state dict size, uncompressed and
   compressed, each in a fresh process                                      (target <= 10%)
4. ``DtFile.verify()`` throughput / ``sha256sum`` throughput on one file    (target >= 0.9)

plus figures for information (compressed and checksummed saves, saves with
an fsync added to the peer, loads repeated inside one process,
``safetensors.torch.load_file``, safetensors' own extra peak memory, hashlib).

Usage::

    .venv/bin/python bench/bench_core.py [--size-mib 1024] [--repeats 3] [--out bench/results/core.json]

Method. The page cache is warm: every file is read once before its reads are
timed (dropping the page cache needs root and is not reliable on a shared
machine). Before each timed save the previous file is deleted and
``os.sync()`` is called, untimed, so no save pays for the writeback of the one
before. The repeats of the competing cases are interleaved (A B A B ...), so
that background load on a shared machine hits both sides alike; the median is
reported. Every temporary file is deleted at the end.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

N_TENSORS = 128
ROWS = 2048
MIB = 1 << 20
#: Distinct random patterns; the other tensors are copies of them (zstd
#: compresses each ~1 MiB chunk independently, so the repeats change nothing
#: it sees, and making the dict is 8x faster).
DISTINCT = 16
LOADERS = ("dt", "torch", "safetensors_pread", "dt_get_tensors", "dt_zstd")
MEM_CASES = ("dt", "dt_zstd", "dt_sha256", "dt_zstd_sha256", "safetensors")


# --------------------------------------------------------------------------- helpers
def shape_for(size_mib: int) -> Tuple[int, ...]:
    """Shape of each of the 128 BF16 tensors so that they total ``size_mib`` MiB."""
    elems = size_mib * MIB // N_TENSORS // 2
    if elems % ROWS == 0 and elems >= ROWS:
        return (ROWS, elems // ROWS)
    return (elems,)


def make_state_dict(size_mib: int) -> Dict[str, Any]:
    """128 BF16 tensors of N(0, 1) values, filled in place (every page resident, no temporaries)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    shape = shape_for(size_mib)
    bases = [torch.empty(shape, dtype=torch.bfloat16).normal_(generator=gen) for _ in range(min(DISTINCT, N_TENSORS))]
    sd = {}
    for i in range(N_TENSORS):
        name = f"layers.{i // 4}.{('q', 'k', 'v', 'o')[i % 4]}_proj.weight"
        sd[name] = bases[i] if i < len(bases) else bases[i % len(bases)].clone()
    return sd


def nbytes(sd: Dict[str, Any]) -> int:
    return sum(t.numel() * t.element_size() for t in sd.values())


def summary(times: List[float]) -> Dict[str, Any]:
    return {"median_s": statistics.median(times), "min_s": min(times), "times_s": [round(t, 4) for t in times]}


def interleaved(
    cases: Dict[str, Tuple[Callable[[], Any], Optional[Callable[[], None]]]], repeats: int
) -> Dict[str, Dict[str, Any]]:
    """Time each case ``repeats`` times, round-robin; ``before`` (untimed) runs before each call."""
    times: Dict[str, List[float]] = {k: [] for k in cases}
    for _ in range(repeats):
        for key, (fn, before) in cases.items():
            if before is not None:
                before()
            gc.collect()
            t0 = time.perf_counter()
            out = fn()
            times[key].append(time.perf_counter() - t0)
            del out
            gc.collect()
    return {k: summary(v) for k, v in times.items()}


def read_through(path: str) -> None:
    """Read a file once so that its pages are in the page cache."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(16 * MIB)
        while f.readinto(buf):
            pass


def remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            m = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M)
        return int(m.group(1)) if m else None
    except OSError:
        return None


def rusage() -> Tuple[int, float, float]:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_minflt, r.ru_utime, r.ru_stime


def loadavg() -> Optional[List[float]]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(bench_dir: str) -> Dict[str, Any]:
    info: Dict[str, Any] = {
        "nproc": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            cpuinfo = f.read()
        m = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
        info["cpu_model"] = m.group(1).strip() if m else None
        flags = re.search(r"^flags\s*:\s*(.+)$", cpuinfo, re.M)
        info["cpu_sha_ni"] = bool(flags and "sha_ni" in flags.group(1).split())
        info["cpu_avx512f"] = bool(flags and "avx512f" in flags.group(1).split())
    except OSError:
        info["cpu_model"] = None
    try:
        with open("/proc/meminfo") as f:
            m = re.search(r"^MemTotal:\s+(\d+) kB", f.read(), re.M)
        info["mem_total_gib"] = round(int(m.group(1)) / MIB, 1) if m else None
    except OSError:
        info["mem_total_gib"] = None
    try:  # filesystem of the benchmark directory: the longest matching mount point
        best = ("", "?", "?")
        real = os.path.realpath(bench_dir)
        with open("/proc/mounts") as f:
            for line in f:
                dev, mnt, fstype = line.split()[:3]
                if (real == mnt or real.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best[0]):
                    best = (mnt, dev, fstype)
        info["bench_dir_fs"] = f"{best[2]} on {best[1]} (mounted at {best[0]})"
    except OSError:
        info["bench_dir_fs"] = None
    for mod in ("deathtensors", "torch", "safetensors", "numpy", "zstandard"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001 - informational only
            info[mod] = None
    # A VM whose balloon reports freed pages to the host makes first touches of memory slow.
    info["virtio_balloon"] = os.path.isdir("/sys/bus/virtio/drivers/virtio_balloon")
    try:
        with open("/proc/cmdline") as f:
            info["free_page_reporting"] = "page_reporting" in f.read()
    except OSError:
        info["free_page_reporting"] = None
    sha = shutil.which("sha256sum")
    info["sha256sum"] = None
    if sha:
        try:
            out = subprocess.run([sha, "--version"], capture_output=True, text=True, check=False).stdout
            info["sha256sum"] = out.splitlines()[0] if out else sha
        except OSError:
            info["sha256sum"] = sha
    return info


def provenance() -> Dict[str, Any]:
    """Which library is measured: the git commit of the tree and the installed extension's digest."""
    import hashlib

    info: Dict[str, Any] = {}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        info["git_head"] = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split("\n")
        info["git_modified_files"] = len([d for d in dirty if d.strip()])
    except (OSError, subprocess.CalledProcessError):
        info["git_head"] = None
    try:
        import deathtensors._core as core

        with open(core.__file__, "rb") as f:
            info["core_sha256"] = hashlib.sha256(f.read()).hexdigest()[:16]
        info["core_mtime"] = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(os.path.getmtime(core.__file__)))
        info["core_path"] = core.__file__
    except (ImportError, OSError):
        info["core_sha256"] = None
    return info


#: Directory holding a private copy of the installed package (see ``snapshot_package``).
SNAPSHOT: Optional[str] = None


def snapshot_package(dest: str) -> Optional[str]:
    """Copy the installed ``deathtensors`` package under ``dest`` and import it from there.

    The library is rebuilt and reinstalled while others work on it; measuring
    a private copy keeps every figure of one run (and of its worker
    processes) on the same build.
    """
    global SNAPSHOT
    import importlib.util

    spec = importlib.util.find_spec("deathtensors")
    if spec is None or not spec.submodule_search_locations:
        return None
    src = list(spec.submodule_search_locations)[0]
    target = os.path.join(dest, "pkg")
    shutil.copytree(src, os.path.join(target, "deathtensors"), ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, target)
    SNAPSHOT = target
    return src


def run_worker(args: List[str]) -> Dict[str, Any]:
    """Run this script in a fresh interpreter with worker ``args``; the last stdout line is JSON."""
    cmd = [sys.executable, os.path.abspath(__file__), *args]
    env = dict(os.environ)
    if SNAPSHOT:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (SNAPSHOT, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env)
    if proc.returncode != 0:
        return {"error": (proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- workers (fresh processes)
def mem_worker(case: str, size_mib: int, bench_dir: str) -> Dict[str, Any]:
    """Extra peak RSS of one save: peak RSS during the save minus RSS with the dict loaded."""
    import torch
    from safetensors.torch import save_file

    import deathtensors as dt

    savers: Dict[str, Callable[[str, Dict[str, Any]], None]] = {
        "dt": lambda p, sd: dt.save(p, sd),
        "dt_zstd": lambda p, sd: dt.save(p, sd, compress=True),
        "dt_sha256": lambda p, sd: dt.save(p, sd, checksum=True),
        "dt_zstd_sha256": lambda p, sd: dt.save(p, sd, compress=True, checksum=True),
        "safetensors": lambda p, sd: save_file(sd, p),
    }
    save = savers[case]
    path = os.path.join(bench_dir, f"mem-{case}.bin")
    # Warm-up on a tiny dict: one-time set-up (thread pools, dtype tables) is not counted.
    save(path, {"w": torch.zeros(4, 4, dtype=torch.bfloat16)})
    remove(path)

    sd = make_state_dict(size_mib)
    size = nbytes(sd)
    gc.collect()
    baseline_kib = status_kib("VmRSS")
    method = "VmHWM after writing 5 to /proc/self/clear_refs"
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        hwm = status_kib("VmHWM")
        if baseline_kib is None or hwm is None or hwm > baseline_kib + 1024:
            raise OSError("VmHWM was not reset")
    except OSError:
        # The dict is filled in place, so the peak before the save is about the baseline.
        method = "ru_maxrss (peak since start; dict filled in place, so no earlier peak)"
        baseline_kib = baseline_kib or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    save(path, sd)
    elapsed = time.perf_counter() - t0
    if method.startswith("VmHWM"):
        peak_kib = status_kib("VmHWM") or 0
    else:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    remove(path)
    extra = max(0, peak_kib - baseline_kib) * 1024
    return {
        "case": case,
        "module": dt.__file__,
        "state_dict_bytes": size,
        "baseline_rss_bytes": baseline_kib * 1024,
        "peak_rss_bytes": peak_kib * 1024,
        "extra_peak_bytes": extra,
        "extra_fraction": extra / size,
        "method": method,
        "save_s": elapsed,
    }


def load_worker(which: str, path: str) -> Dict[str, Any]:
    """Time one full load in this (fresh) process: libraries imported first, untimed."""
    import torch
    from safetensors.torch import load_file

    import deathtensors as dt

    def dt_load() -> Dict[str, Any]:
        with dt.open(path) as f:
            return {k: f.get_tensor(k) for k in f.keys()}

    def dt_get_tensors() -> Dict[str, Any]:
        with dt.open(path) as f:
            return f.get_tensors()

    loaders: Dict[str, Callable[[], Dict[str, Any]]] = {
        "dt": dt_load,
        "dt_zstd": dt_load,
        "dt_get_tensors": dt_get_tensors,
        "torch": lambda: torch.load(path, weights_only=True),
        "safetensors_pread": lambda: load_file(path, backend="pread"),
    }
    fn = loaders[which]
    gc.collect()
    a = rusage()
    t0 = time.perf_counter()
    out = fn()
    elapsed = time.perf_counter() - t0
    b = rusage()
    return {
        "which": which,
        "module": dt.__file__,
        "s": elapsed,
        "tensors": len(out),
        "bytes": sum(t.numel() * t.element_size() for t in out.values()),
        "minor_faults": b[0] - a[0],
        "utime_s": round(b[1] - a[1], 3),
        "stime_s": round(b[2] - a[2], 3),
    }


# --------------------------------------------------------------------------- the benchmark
def row(
    rid: str,
    measure: str,
    dt_fig: Any,
    peer: str,
    peer_fig: Any,
    ratio: Optional[float],
    target: Optional[str],
    size: int,
) -> Dict[str, Any]:
    met = None
    if target and ratio is not None:
        op, bound = target.split()
        bound_v = float(bound.rstrip("%")) / (100 if bound.endswith("%") else 1)
        met = ratio <= bound_v if op == "<=" else ratio >= bound_v
    return {
        "id": rid,
        "measure": measure,
        "dt": dt_fig,
        "peer": peer,
        "peer_result": peer_fig,
        "ratio": ratio,
        "target": target,
        "met": met,
        "bytes": size,
    }


def run(args: argparse.Namespace, tmp: str) -> Dict[str, Any]:
    import hashlib

    import torch
    from safetensors.torch import load_file, save_file

    import deathtensors as dt

    base_dir = args.dir or "/tmp"
    rows: List[Dict[str, Any]] = []
    notes: List[str] = []
    started = time.time()
    R = args.repeats
    result: Dict[str, Any] = {
        "benchmark": "core",
        "args": {"size_mib": args.size_mib, "repeats": R, "dir": base_dir},
        "machine": machine_info(tmp),
        "loadavg_start": loadavg(),
        "library": provenance(),
    }

    def log(msg: str) -> None:
        if not args.quiet:
            print(f"[bench_core {time.time() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    try:
        log(f"building a {args.size_mib} MiB state dict of {N_TENSORS} BF16 tensors {shape_for(args.size_mib)}")
        sd = make_state_dict(args.size_mib)
        size = nbytes(sd)
        result["state_dict"] = {
            "tensors": len(sd),
            "dtype": "BF16",
            "shape": list(shape_for(args.size_mib)),
            "bytes": size,
        }

        p_dt = os.path.join(tmp, "model.deathtensors")
        p_dtz = os.path.join(tmp, "model-zstd.deathtensors")
        p_dts = os.path.join(tmp, "model-sha256.deathtensors")
        p_st = os.path.join(tmp, "model.safetensors")
        p_pt = os.path.join(tmp, "model.pt")

        def fresh(path: str) -> Callable[[], None]:
            def before() -> None:
                remove(path)
                os.sync()

            return before

        def st_save_fsync() -> None:
            save_file(sd, p_st)
            fd = os.open(p_st, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        # ---- 1. save ------------------------------------------------------------------
        log("1. save (one untimed warm-up save each, then interleaved repeats)")
        dt.save(p_dt, sd)
        save_file(sd, p_st)
        saves = interleaved(
            {
                "dt": (lambda: dt.save(p_dt, sd), fresh(p_dt)),
                "safetensors": (lambda: save_file(sd, p_st), fresh(p_st)),
                "safetensors_fsync": (st_save_fsync, fresh(p_st)),
                "dt_zstd": (lambda: dt.save(p_dtz, sd, compress=True), fresh(p_dtz)),
                "dt_sha256": (lambda: dt.save(p_dts, sd, checksum=True), fresh(p_dts)),
                "torch": (lambda: torch.save(sd, p_pt), fresh(p_pt)),
            },
            R,
        )
        result["save"] = saves
        zsize = os.path.getsize(p_dtz)
        st = saves["safetensors"]
        med = {k: v["median_s"] for k, v in saves.items()}
        rows.append(
            row(
                "save",
                "save, uncompressed: time",
                saves["dt"],
                "safetensors.torch.save_file",
                st,
                med["dt"] / med["safetensors"],
                "<= 0.6",
                size,
            )
        )
        rows.append(
            row(
                "save_vs_fsync",
                "save, uncompressed: time (info: the peer fsyncs too, as dt.save does)",
                saves["dt"],
                "save_file + os.fsync",
                saves["safetensors_fsync"],
                med["dt"] / med["safetensors_fsync"],
                None,
                size,
            )
        )
        rows.append(
            row(
                "save_vs_torch",
                "save, uncompressed: time (info)",
                saves["dt"],
                "torch.save",
                saves["torch"],
                med["dt"] / med["torch"],
                None,
                size,
            )
        )
        rows.append(
            row(
                "save_zstd",
                f"save, compress=True (zstd level 3; file is {zsize / size:.1%} of raw): time (info)",
                saves["dt_zstd"],
                "safetensors.torch.save_file",
                st,
                med["dt_zstd"] / med["safetensors"],
                None,
                size,
            )
        )
        rows.append(
            row(
                "save_sha256",
                "save, checksum=True (SHA-256): time (info)",
                saves["dt_sha256"],
                "safetensors.torch.save_file",
                st,
                med["dt_sha256"] / med["safetensors"],
                None,
                size,
            )
        )
        torch.save(sd, p_pt)  # the files the load section reads
        save_file(sd, p_st)

        # ---- 2. load ------------------------------------------------------------------
        log("2. load: correctness check, warm the page cache, then fresh-process loads")

        def dt_load(path: str) -> Dict[str, Any]:
            with dt.open(path) as f:
                return {k: f.get_tensor(k) for k in f.keys()}

        for p in (p_dt, p_dtz):  # untimed round-trip check
            got = dt_load(p)
            if list(got) != list(sd) or not all(torch.equal(got[k], sd[k]) for k in sd):
                raise AssertionError(f"{os.path.basename(p)}: tensors read back differ from those saved")
            del got
        for p in (p_dt, p_dtz, p_st, p_pt):
            read_through(p)
        paths = {"dt": p_dt, "dt_get_tensors": p_dt, "dt_zstd": p_dtz, "torch": p_pt, "safetensors_pread": p_st}
        fresh_runs: Dict[str, List[Dict[str, Any]]] = {k: [] for k in LOADERS}
        for _ in range(R):
            for which in LOADERS:
                fresh_runs[which].append(run_worker(["--load-worker", which, "--path", paths[which]]))
        errors = [r["error"] for runs in fresh_runs.values() for r in runs if "error" in r]
        if errors:
            raise RuntimeError(f"a load worker failed: {errors[0]}")
        loads = {}
        for which, runs in fresh_runs.items():
            s = summary([r["s"] for r in runs])
            s["minor_faults"] = statistics.median(r["minor_faults"] for r in runs)
            s["stime_s"] = statistics.median(r["stime_s"] for r in runs)
            s["utime_s"] = statistics.median(r["utime_s"] for r in runs)
            loads[which] = s
        result["load_fresh_process"] = loads
        result["load_fresh_process_runs"] = fresh_runs
        lmed = {k: v["median_s"] for k, v in loads.items()}
        rows.append(
            row(
                "load",
                "open + get_tensor of all, fresh process: time",
                loads["dt"],
                "torch.load(weights_only=True)",
                loads["torch"],
                lmed["dt"] / lmed["torch"],
                "<= 0.5",
                size,
            )
        )
        rows.append(
            row(
                "load_vs_st_pread",
                "open + get_tensor of all, fresh process: time (info)",
                loads["dt"],
                'safetensors load_file(backend="pread")',
                loads["safetensors_pread"],
                lmed["dt"] / lmed["safetensors_pread"],
                None,
                size,
            )
        )
        rows.append(
            row(
                "load_get_tensors",
                "open + get_tensors() (parallel), fresh process: time (info)",
                loads["dt_get_tensors"],
                "torch.load(weights_only=True)",
                loads["torch"],
                lmed["dt_get_tensors"] / lmed["torch"],
                None,
                size,
            )
        )
        rows.append(
            row(
                "load_zstd",
                "open + get_tensor of all, zstd file, fresh process: time (info)",
                loads["dt_zstd"],
                "torch.load(weights_only=True)",
                loads["torch"],
                lmed["dt_zstd"] / lmed["torch"],
                None,
                size,
            )
        )
        log("2b. load repeated in this process (allocator warm)")
        cases = {
            "dt": (lambda: dt_load(p_dt), None),
            "torch": (lambda: torch.load(p_pt, weights_only=True), None),
            "safetensors_mmap": (lambda: load_file(p_st), None),
        }
        has_mmap = hasattr(dt.DtFile, "get_tensor_mmap")
        if has_mmap:

            def dt_mmap() -> Dict[str, Any]:
                with dt.open(p_dt) as f:
                    return {k: f.get_tensor_mmap(k) for k in f.keys()}

            cases["dt_mmap"] = (dt_mmap, None)
        inproc = interleaved(cases, R)
        result["load_in_process"] = inproc
        rows.append(
            row(
                "load_in_process",
                "open + get_tensor of all, same process, repeated: time (info)",
                inproc["dt"],
                "torch.load(weights_only=True)",
                inproc["torch"],
                inproc["dt"]["median_s"] / inproc["torch"]["median_s"],
                None,
                size,
            )
        )
        lazy = inproc["dt_mmap"] if has_mmap else inproc["dt"]
        r = row(
            "load_mmap",
            (
                "open + get_tensor_mmap of all (zero-copy, lazy): time (info)"
                if has_mmap
                else "open + get_tensor of all: time (info; the peer maps the file lazily)"
            ),
            lazy,
            "safetensors.torch.load_file (mmap, lazy)",
            inproc["safetensors_mmap"],
            lazy["median_s"] / inproc["safetensors_mmap"]["median_s"],
            None,
            size,
        )
        r["no_throughput"] = ["dt", "peer_result"] if has_mmap else ["peer_result"]
        rows.append(r)
        for p in (p_dtz, p_st, p_pt, p_dt):
            remove(p)

        # ---- 4. verify ----------------------------------------------------------------
        log("4. verify vs sha256sum")
        fsize = os.path.getsize(p_dts)
        read_through(p_dts)

        def dt_verify() -> bool:
            with dt.open(p_dts) as f:
                return f.verify()

        def py_sha() -> str:
            h = hashlib.sha256()
            with open(p_dts, "rb", buffering=0) as f:
                buf = bytearray(4 * MIB)
                view = memoryview(buf)
                while n := f.readinto(buf):
                    h.update(view[:n])
            return h.hexdigest()

        if not dt_verify():
            raise AssertionError("verify() of a fresh file failed")
        sha = shutil.which("sha256sum")
        cases: Dict[str, Tuple[Callable[[], Any], Optional[Callable[[], None]]]] = {"dt": (dt_verify, None)}
        if sha:
            cases["sha256sum"] = (lambda: subprocess.run([sha, p_dts], stdout=subprocess.DEVNULL, check=True), None)
        cases["hashlib"] = (py_sha, None)
        ver = interleaved(cases, R)
        result["verify"] = ver
        if sha:
            ratio = ver["sha256sum"]["median_s"] / ver["dt"]["median_s"]  # throughput ratio: same bytes
            rows.append(
                row(
                    "verify",
                    "verify a SHA-256 file: throughput",
                    ver["dt"],
                    "sha256sum",
                    ver["sha256sum"],
                    ratio,
                    ">= 0.9",
                    fsize,
                )
            )
        else:
            notes.append("sha256sum is not installed: the verify target is not measured (n/a).")
            rows.append(
                row(
                    "verify",
                    "verify a SHA-256 file: throughput",
                    ver["dt"],
                    "sha256sum (not installed)",
                    None,
                    None,
                    ">= 0.9",
                    fsize,
                )
            )
        rows.append(
            row(
                "verify_vs_hashlib",
                "verify a SHA-256 file: throughput (info)",
                ver["dt"],
                "Python hashlib.sha256 (OpenSSL), 4 MiB reads",
                ver["hashlib"],
                ver["hashlib"]["median_s"] / ver["dt"]["median_s"],
                None,
                fsize,
            )
        )
        remove(p_dts)

        # ---- 3. memory (a fresh process per case) ---------------------------------------
        log("3. extra peak memory of a save (one fresh process per case)")
        sd.clear()  # the workers build their own
        gc.collect()
        mem = {}
        for case in MEM_CASES:
            mem[case] = run_worker(["--mem-worker", case, "--size-mib", str(args.size_mib), "--dir", tmp])
        result["memory"] = mem
        st_mem = mem["safetensors"]
        for case, label, target in (
            ("dt", "save, uncompressed: extra peak RSS / state dict", "<= 10%"),
            ("dt_zstd", "save, compress=True: extra peak RSS / state dict", "<= 10%"),
            ("dt_sha256", "save, checksum=True: extra peak RSS / state dict (info)", None),
            ("dt_zstd_sha256", "save, compress=True, checksum=True: extra peak RSS / state dict (info)", None),
        ):
            r = mem[case]
            rows.append(
                row(
                    f"mem_{case}",
                    label,
                    r,
                    "safetensors.torch.save_file",
                    st_mem,
                    r.get("extra_fraction"),
                    target,
                    size,
                )
            )
        methods = sorted({r["method"] for r in mem.values() if "method" in r})
        notes.append(f"Peak RSS: {'; '.join(methods)}.")
    finally:  # the data files; the caller removes the directory
        for name in os.listdir(tmp):
            if name != "pkg":
                remove(os.path.join(tmp, name))

    after = provenance()
    if after.get("core_sha256") != result["library"].get("core_sha256"):
        notes.append(
            "WARNING: the measured deathtensors extension changed during this run "
            f"({result['library'].get('core_sha256')} -> {after.get('core_sha256')}); "
            "the figures may mix two versions: run again."
        )
    result["library_end"] = after
    result["rows"] = rows
    result["notes"] = notes
    result["loadavg_end"] = loadavg()
    result["wall_s"] = round(time.time() - started, 1)
    return result


# --------------------------------------------------------------------------- output
def fmt_cell(r: Dict[str, Any], key: str) -> str:
    v = r[key]
    if v is None:
        return "n/a"
    if r["id"].startswith("mem_"):
        if "error" in v:
            return f"error: {v['error']}"
        return f"{v['extra_peak_bytes'] / MIB:,.1f} MiB ({100 * v['extra_fraction']:.1f}%)"
    s = v["median_s"]
    text = f"{s:.3f} s"
    if r["bytes"] and key not in r.get("no_throughput", ()):  # a lazy map reads nothing: no throughput
        text += f" ({r['bytes'] / MIB / s:,.0f} MiB/s)"
    return text


def markdown(result: Dict[str, Any]) -> str:
    lines = [
        "| Measure | deathtensors | Peer | Peer's figure | Ratio | Target | Met |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        if r["ratio"] is None:
            ratio = "n/a"
        elif r["id"].startswith("mem_"):
            ratio = f"{100 * r['ratio']:.1f}%"
        else:
            ratio = f"{r['ratio']:.2f}"
        met = "info" if r["target"] is None else ("n/a" if r["met"] is None else ("**yes**" if r["met"] else "**no**"))
        lines.append(
            f"| {r['measure']} | {fmt_cell(r, 'dt')} | {r['peer']} | {fmt_cell(r, 'peer_result')} | {ratio} | "
            f"{r['target'] or '-'} | {met} |"
        )
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    ap = argparse.ArgumentParser(
        description=(__doc__ or "").split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size-mib", type=int, default=1024, help="state dict size in MiB (default 1024)")
    ap.add_argument("--repeats", type=int, default=3, help="timed runs per figure; the median is reported (default 3)")
    ap.add_argument("--out", default="bench/results/core.json", help="JSON results (default bench/results/core.json)")
    ap.add_argument("--dir", default=None, help="where the temporary files go (default /tmp)")
    ap.add_argument(
        "--no-snapshot",
        action="store_true",
        help="import deathtensors where installed instead of from a private copy made at start",
    )
    ap.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    ap.add_argument("--mem-worker", default=None, choices=MEM_CASES, help=argparse.SUPPRESS)
    ap.add_argument("--load-worker", default=None, choices=LOADERS, help=argparse.SUPPRESS)
    ap.add_argument("--path", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.size_mib < 1 or args.repeats < 1:
        ap.error("--size-mib and --repeats must be >= 1")
    if args.mem_worker:
        print(json.dumps(mem_worker(args.mem_worker, args.size_mib, args.dir or "/tmp")))
        return 0
    if args.load_worker:
        print(json.dumps(load_worker(args.load_worker, args.path)))
        return 0

    base_dir = args.dir or "/tmp"
    os.makedirs(base_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="dt-bench-core-", dir=base_dir)
    try:
        installed = snapshot_package(tmp) if not args.no_snapshot else None
        result = run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["library"]["measured_copy_of"] = installed
    table = markdown(result)
    m, sdi = result["machine"], result["state_dict"]
    print(
        f"deathtensors core benchmark: {sdi['tensors']} BF16 tensors {sdi['shape']} = {sdi['bytes'] / MIB:,.0f} MiB; "
        f"median of {args.repeats}; warm page cache\n"
        f"machine: {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_total_gib']} GiB RAM, {m['bench_dir_fs']}; "
        f"Python {m['python']}, torch {m['torch']}, safetensors {m['safetensors']}, deathtensors {m['deathtensors']}; "
        f"load average {result['loadavg_start']} -> {result['loadavg_end']}; {result['wall_s']} s\n"
        f"library: git {result['library'].get('git_head')} (+{result['library'].get('git_modified_files')} modified "
        f"files), installed _core sha256 {result['library'].get('core_sha256')} "
        f"built {result['library'].get('core_mtime')}\n"
    )
    print(table)
    for note in result["notes"]:
        print(f"\n{note}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        result["markdown"] = table
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(f"\nresults: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
