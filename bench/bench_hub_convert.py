"""Converting a safetensors file on the Hub: streamed by range against download-then-convert.

Serves MiniLM's real ``model.safetensors`` (F32, 90 MB; fetched once into
``--cache``, see ``bench_compression.fetch_weights``) from the loopback Hub
double of the tests, and measures, each in a fresh child process, the
conversion step of ``convert_safetensors_on_hub(..., compress=True)``:

- ``stream``: the source read by HTTP range as it is converted (what
  ``convert_safetensors_on_hub`` does);
- ``download``: ``hf_hub_download`` of the source into the cache, then
  ``from_safetensors`` of the cached copy with the same options (what it did
  before it streamed).

Reported: wall time, peak resident memory of the child (``VmHWM``) over its
resident memory after the imports, the GET requests and bytes the server sent,
and the files the cache holds afterwards. Both outputs are checked to be the
same bytes. Only 127.0.0.1 is contacted.

    .venv/bin/python bench/bench_hub_convert.py [--cache DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "python"))

from bench_compression import fetch_weights  # noqa: E402
from hub_server import HubServer  # noqa: E402

CHILD = """
import json, os, sys, time
import deathtensors as dt
from deathtensors.huggingface import HubCachedFile, _import_streamed
from huggingface_hub import hf_hub_download

def status_mb(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024

mode, repo, dst = sys.argv[1:4]
options = ("zstd", None, "sha256")  # compress=True, checksum=True
base = status_mb("VmRSS")
t0 = time.perf_counter()
if mode == "stream":
    _import_streamed(HubCachedFile(repo, "model.safetensors"), dst, options)
else:
    src = hf_hub_download(repo, "model.safetensors")
    dt.from_safetensors(src, dst, compress=True, checksum=True)
seconds = time.perf_counter() - t0
# VmHWM, not ru_maxrss: Linux carries the parent's peak into ru_maxrss across fork and exec.
peak = status_mb("VmHWM")
print(json.dumps({"seconds": seconds, "peak_over_base_mb": peak - base}))
"""


def run(mode: str, server: HubServer, repo: str, tmp: str) -> Dict[str, Any]:
    home = tempfile.mkdtemp(dir=tmp)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_"))}
    env.update(
        HF_ENDPOINT=server.url,
        HF_HOME=home,
        HF_TOKEN="hf_writer_token",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        NO_PROXY="127.0.0.1",
    )
    server.clear_log()
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, mode, repo, os.path.join(tmp, f"{mode}.deathtensors")],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    gets = server.requests("GET", "/model.safetensors")
    out["requests"] = len(gets)
    out["bytes_sent_mb"] = sum(r["bytes_sent"] for r in gets) / 1e6
    out["cached_blobs"] = sum(len(files) for folder, _, files in os.walk(home) if os.path.basename(folder) == "blobs")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_cache = os.environ.get("DT_BENCH_CACHE", os.path.join(os.path.dirname(HERE), ".cache", "bench"))
    parser.add_argument("--cache", default=default_cache)
    args = parser.parse_args()
    source = fetch_weights(args.cache)
    with open(source, "rb") as f:
        data = f.read()
    server = HubServer(upload_mode="lfs").start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            results = {}
            for mode in ("download", "stream"):
                server.add_repo(f"bench/{mode}", files={"model.safetensors": data})
                results[mode] = run(mode, server, f"bench/{mode}", tmp)
            with open(os.path.join(tmp, "stream.deathtensors"), "rb") as a, open(
                os.path.join(tmp, "download.deathtensors"), "rb"
            ) as b:
                same = a.read() == b.read()
    finally:
        server.stop()
    print(f"source: {len(data) / 1e6:.1f} MB, compress=True, checksum=True; same output bytes: {same}")
    for mode, r in results.items():
        print(
            f"{mode:8s}  {r['seconds']:6.2f} s  peak RSS over base {r['peak_over_base_mb']:7.1f} MB  "
            f"{r['requests']:3d} GETs  {r['bytes_sent_mb']:6.1f} MB sent  {r['cached_blobs']} blobs cached"
        )
    stream, download = results["stream"], results["download"]
    print(
        f"stream/download: time {stream['seconds'] / download['seconds']:.2f}x, "
        f"peak memory {stream['peak_over_base_mb'] / max(download['peak_over_base_mb'], 1e-9):.2f}x, "
        f"bytes sent {stream['bytes_sent_mb'] / download['bytes_sent_mb']:.3f}x"
    )


if __name__ == "__main__":
    main()
