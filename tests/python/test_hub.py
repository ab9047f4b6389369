"""The Hugging Face Hub integration, with the real ``huggingface_hub`` client against a loopback server.

Each scenario runs in a child process (the client reads ``HF_ENDPOINT`` and
``HF_HOME`` once, at import) pointed at a :class:`hub_server.HubServer` on
127.0.0.1 that records every request, so the tests check what the client
really sent: which files, how many bytes, which ``Authorization`` header.
Nothing here reaches past loopback.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest

pytest.importorskip("huggingface_hub")
np = pytest.importorskip("numpy")

from _dtutil import run_on_pty  # noqa: E402
from hub_server import HubServer  # noqa: E402

import deathtensors as dt  # noqa: E402
from deathtensors.huggingface import HEADER_PROBE_BYTES  # noqa: E402

WRITE_TOKEN = "hf_writer_token"

PRELUDE = """
import hashlib, json, os, sys
import numpy as np
import deathtensors as dt
from deathtensors.huggingface import *
from deathtensors.huggingface import HubShardedReader
def digest(a):
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
def out(value):
    print("RESULT " + json.dumps(value))
"""


class Env:
    """A server, a temporary ``HF_HOME`` and a folder of local files, and a runner of child scenarios."""

    def __init__(self, server: HubServer, tmp: Path, xet: bool) -> None:
        self.server = server
        self.tmp = tmp
        self.hf_home = tmp / "hf"
        self.files = tmp / "files"
        self.files.mkdir()
        self.xet = xet

    def env(self, **extra: Optional[str]) -> Dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_"))}
        env.update(
            HF_ENDPOINT=self.server.url,
            HF_HOME=str(self.hf_home),
            HF_HUB_DISABLE_TELEMETRY="1",
            HF_HUB_DISABLE_PROGRESS_BARS="1",
            HF_TOKEN=WRITE_TOKEN,
            NO_PROXY="127.0.0.1",
        )
        if not self.xet:
            env["HF_HUB_DISABLE_XET"] = "1"
        for k, v in extra.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        return env

    def py(self, code: str, *, ok: bool = True, **env: Optional[str]) -> subprocess.CompletedProcess:
        """Run ``code`` (after :data:`PRELUDE`) in a child with ``argv[1]`` = the files folder."""
        script = PRELUDE + textwrap.dedent(code)
        proc = subprocess.run(
            [sys.executable, "-c", script, str(self.files)],
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if ok:
            assert proc.returncode == 0, proc.stderr[-4000:]
        return proc

    def result(self, code: str, **env: Optional[str]) -> Any:
        proc = self.py(code, **env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        assert len(lines) == 1, proc.stdout + proc.stderr[-2000:]
        return json.loads(lines[0][len("RESULT ") :])

    def cli(self, *args: str, **env: Optional[str]) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "deathtensors", *args],
            env=self.env(**env),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=self.files,
        )


@pytest.fixture(params=["lfs", "regular"])
def hub(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Env]:
    """Both upload paths: ``lfs`` (HF_HUB_DISABLE_XET=1, LFS batch + PUT) and ``regular`` (hf_xet installed)."""
    mode = request.param
    server = HubServer(upload_mode=mode).start()
    try:
        yield Env(server, tmp_path, xet=(mode == "regular"))
    finally:
        server.stop()


@pytest.fixture
def lfs_hub(tmp_path: Path) -> Iterator[Env]:
    """One upload path, for tests about something else than uploads."""
    server = HubServer(upload_mode="lfs").start()
    try:
        yield Env(server, tmp_path, xet=False)
    finally:
        server.stop()


def model(seed: int = 0) -> Dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "weight": rng.standard_normal((128, 128)).astype(np.float32),
        "bias": np.zeros(128, np.float32),
        "steps": np.arange(10, dtype=np.int64),
    }


def digests(tensors: Dict[str, Any]) -> Dict[str, str]:
    return {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()).hexdigest() for k, v in tensors.items()}


def resolve_gets(server: HubServer) -> List[str]:
    """File paths (after ``/resolve/<rev>/``) of every GET of a file."""
    return [r["path"].split("/resolve/", 1)[1].split("/", 1)[1] for r in server.requests("GET", "/resolve/")]


# -- push and load ------------------------------------------------------------------------------------


def test_push_then_load_a_single_file(hub: Env) -> None:
    tensors = model()
    local = hub.files / "model.deathtensors"
    dt.save(str(local), tensors, compress=True, checksum=True)
    got = hub.result(
        """
        url = push_to_hub(repo_id="death-legion/my-model", local_path=sys.argv[1] + "/model.deathtensors",
                          path_in_repo="model.deathtensors")
        with load_from_hub("death-legion/my-model", "model.deathtensors", verify=True) as f:
            out({"url": url, "path": f.path, "keys": f.keys(),
                 "digests": {k: digest(f.get_tensor(k, framework="numpy")) for k in f.keys()}})
        """
    )
    assert got["url"] == f"{hub.server.url}/death-legion/my-model/blob/main/model.deathtensors"
    assert hub.server.files("death-legion/my-model")["model.deathtensors"] == local.read_bytes()
    assert got["keys"] == list(tensors)
    assert got["digests"] == digests(tensors)
    # The standard cache layout, so other processes and libraries reuse the download.
    snapshot = Path(got["path"])
    assert snapshot.parent.parent.name == "snapshots"
    assert snapshot.parent.parent.parent == hub.hf_home / "hub" / "models--death-legion--my-model"
    lfs_puts = hub.server.requests("PUT", "/lfs-upload/")
    if hub.xet:
        assert not lfs_puts and not hub.server.requests(contains="xet-write-token")
    else:
        assert len(lfs_puts) == 1 and hub.server.requests("POST", "/info/lfs/objects/batch")


def test_push_then_load_sharded_fetches_the_index_and_one_shard(hub: Env) -> None:
    tensors = {f"layer.{i}.weight": np.full((64, 64), i, np.float32) for i in range(8)}
    dt.save_sharded(str(hub.files / "big_model.deathtensors"), tensors, max_shard_bytes=2 * 64 * 64 * 4, checksum=True)
    hub.py('push_sharded_to_hub("death-legion/big-model", sys.argv[1] + "/big_model.deathtensors")')
    repo = hub.server.repo("death-legion/big-model")
    stored = hub.server.files("death-legion/big-model")
    assert sorted(p for p in stored if p.endswith(".deathtensors")) == [
        f"big_model-0000{i}-of-00004.deathtensors" for i in range(1, 5)
    ]
    assert "big_model.deathtensors.index.json" in stored
    assert len(repo.commits) == 2  # the repo's creation, then one commit with every file

    hub.server.clear_log()
    got = hub.result(
        """
        with load_sharded_from_hub("death-legion/big-model", "big_model.deathtensors", verify=True) as sr:
            out({"value": digest(sr.get_tensor("layer.5.weight", framework="numpy")),
                 "shard": sr.which_shard("layer.5.weight"), "downloaded": sr.downloaded_shards()})
        """
    )
    assert got["value"] == digests({"w": tensors["layer.5.weight"]})["w"]
    assert got["shard"] == "big_model-00003-of-00004.deathtensors"
    assert got["downloaded"] == [got["shard"]]
    assert resolve_gets(hub.server) == ["big_model.deathtensors.index.json", got["shard"]]

    # Whole-checkpoint reads open and close each shard, but fetch each once.
    got = hub.result(
        """
        with load_sharded_from_hub("death-legion/big-model", "big_model.deathtensors", verify=True) as sr:
            every = sr.get_tensors(framework="numpy")
            stats = sr.all_stats()
            again = sr.get_tensors(framework="numpy")
            sr.verify()
            out({"digests": {k: digest(v) for k, v in every.items()}, "again": {k: digest(v) for k, v in again.items()},
                 "means": [s["mean"] for s in stats.values()],
                 "downloaded": sr.downloaded_shards()})
        """
    )
    assert got["digests"] == got["again"] == digests(tensors)
    assert got["means"] == [float(i) for i in range(8)]
    assert sorted(got["downloaded"]) == [f"big_model-0000{i}-of-00004.deathtensors" for i in range(1, 5)]


def test_a_second_sharded_push_replaces_every_shard_in_one_commit(lfs_hub: Env) -> None:
    base = str(lfs_hub.files / "ck.deathtensors")
    dt.save_sharded(base, {f"t{i}": np.full(256, i, np.float32) for i in range(4)}, max_shard_bytes=1024)
    lfs_hub.py('push_sharded_to_hub("ns/ck", sys.argv[1] + "/ck.deathtensors")')
    assert sum(p.startswith("ck-") for p in lfs_hub.server.files("ns/ck")) == 4
    dt.save_sharded(base, {f"t{i}": np.full(256, i, np.float32) for i in range(4)}, max_shard_bytes=2048)
    lfs_hub.py('push_sharded_to_hub("ns/ck", sys.argv[1] + "/ck.deathtensors")')
    shards = sorted(p for p in lfs_hub.server.files("ns/ck") if p.startswith("ck-"))
    assert shards == ["ck-00001-of-00002.deathtensors", "ck-00002-of-00002.deathtensors"]


def test_revision_and_repo_type(lfs_hub: Env) -> None:
    local = lfs_hub.files / "m.deathtensors"
    dt.save(str(local), {"v": np.array([1], np.int32)})
    lfs_hub.py('push_to_hub("ns/data", sys.argv[1] + "/m.deathtensors", repo_type="dataset")')
    first = lfs_hub.server.repo("ns/data", "dataset").branches["main"]
    dt.save(str(local), {"v": np.array([2], np.int32)})
    got = lfs_hub.result(
        f"""
        url = push_to_hub("ns/data", sys.argv[1] + "/m.deathtensors", repo_type="dataset")
        with load_from_hub("ns/data", "m.deathtensors", repo_type="dataset") as f:
            now = int(f.get_tensor("v", framework="numpy")[0])
        with load_from_hub("ns/data", "m.deathtensors", repo_type="dataset", revision="{first}") as f:
            then = int(f.get_tensor("v", framework="numpy")[0])
        out({{"url": url, "now": now, "then": then}})
        """
    )
    assert got == {"url": f"{lfs_hub.server.url}/datasets/ns/data/blob/main/m.deathtensors", "now": 2, "then": 1}
    assert ("model", "ns/data") not in lfs_hub.server.repos


# -- offline and cache ---------------------------------------------------------------------------------


def test_offline_mode_serves_single_and_sharded_files_from_the_cache(lfs_hub: Env) -> None:
    tensors = model(3)
    dt.save(str(lfs_hub.files / "m.deathtensors"), tensors, checksum=True)
    dt.save_sharded(str(lfs_hub.files / "s.deathtensors"), tensors, max_shard_bytes=1000)
    lfs_hub.py(
        """
        push_to_hub("ns/off", sys.argv[1] + "/m.deathtensors")
        push_sharded_to_hub("ns/off", sys.argv[1] + "/s.deathtensors")
        load_from_hub("ns/off", "m.deathtensors").close()
        with load_sharded_from_hub("ns/off", "s.deathtensors") as sr:
            sr.get_tensor("weight", framework="numpy")
        """
    )
    lfs_hub.server.stop()
    got = lfs_hub.result(
        """
        with load_from_hub("ns/off", "m.deathtensors", verify=True) as f:
            single = {k: digest(f.get_tensor(k, framework="numpy")) for k in f.keys()}
        with load_sharded_from_hub("ns/off", "s.deathtensors") as sr:
            shard = digest(sr.get_tensor("weight", framework="numpy"))
        try:
            load_from_hub("ns/off", "never-downloaded.deathtensors")
            missing = None
        except dt.HubConnectionError as e:
            missing = str(e)
        out({"single": single, "shard": shard, "missing": missing})
        """,
        HF_HUB_OFFLINE="1",
    )
    assert got["single"] == digests(tensors)
    assert got["shard"] == digests(tensors)["weight"]
    assert got["missing"] is not None and "cache" in got["missing"]


# -- listing and info ----------------------------------------------------------------------------------


def test_list_and_info_report_the_files_really_in_the_repo(lfs_hub: Env) -> None:
    lfs_hub.server.add_repo(
        "ns/mixed",
        files={
            "a.deathtensors": _file_bytes(lfs_hub.files / "a.dt", 1),
            "sub/b.deathtensors": _file_bytes(lfs_hub.files / "b.dt", 2),
            "legacy.dt": _file_bytes(lfs_hub.files / "c.dt", 3),
            "model.safetensors": b"not listed",
            "README.md": b"# hi",
        },
    )
    lfs_hub.server.repo("ns/mixed").likes = 7
    got = lfs_hub.result(
        """
        load_from_hub("ns/mixed", "a.deathtensors").close()
        out({"list": list_repo_models("ns/mixed"), "info": hub_model_info("ns/mixed")})
        """
    )
    expected = ["a.deathtensors", "legacy.dt", "sub/b.deathtensors"]
    assert sorted(got["list"]) == expected
    info = got["info"]
    assert sorted(info["deathtensors_files"]) == expected
    assert info["likes"] == 7
    assert info["downloads"] == lfs_hub.server.repo("ns/mixed").downloads >= 1
    assert info["sha"] == lfs_hub.server.repo("ns/mixed").branches["main"]
    assert info["id"] == "ns/mixed"


def _file_bytes(path: Path, seed: int, compress: bool = False, **tensors: Any) -> bytes:
    dt.save(str(path), tensors or model(seed), compress=compress, checksum=True)
    return path.read_bytes()


def test_remote_reads_stay_on_one_commit_while_the_branch_moves(lfs_hub: Env) -> None:
    # The header was read by range from v1, then v2 was pushed with another dtype at the
    # same offset: the tensor's later range read used to return v2's bytes decoded as v1's
    # dtype, silently. A cached copy of v1 also stood in for the branch after v2.
    got = lfs_hub.result(
        """
        p = sys.argv[1] + "/m.deathtensors"
        pad = np.zeros(40000, np.float32)  # puts 'a' past the first range request
        dt.save(p, {"pad": pad, "a": np.arange(8, dtype=np.float32)})
        push_to_hub("ns/moving", p)
        f = HubCachedFile("ns/moving", "m.deathtensors")
        dtype_v1 = f.info("a")["dtype"]
        dt.save(p, {"pad": pad, "a": np.arange(100, 108, dtype=np.int32)})
        push_to_hub("ns/moving", p)
        a = f.get_tensor("a", framework="numpy")
        fresh = HubCachedFile("ns/moving", "m.deathtensors")
        b = fresh.get_tensor("a", framework="numpy")
        # Download v2, push v3: the cached v2 must not stand in for the branch.
        fresh.download()
        dt.save(p, {"pad": pad, "a": np.arange(8, dtype=np.float32), "new": np.ones(2, np.float32)})
        push_to_hub("ns/moving", p)
        later = HubCachedFile("ns/moving", "m.deathtensors")
        out({"dtype_v1": dtype_v1, "a": a.tolist(), "a_dtype": str(a.dtype), "b": b.tolist(),
             "later_keys": later.keys(),
             "info_keys": [t["name"] for t in hub_file_info("ns/moving", "m.deathtensors")["tensors"]]})
        """
    )
    assert got["dtype_v1"] == "F32"
    assert (got["a"], got["a_dtype"]) == (list(range(8)), "float32")
    assert got["b"] == list(range(100, 108))
    assert got["later_keys"] == ["pad", "a", "new"]
    assert got["info_keys"] == ["pad", "a", "new"]


def test_remote_header_and_tensor_are_read_by_range_without_downloading(lfs_hub: Env) -> None:
    rng = np.random.default_rng(5)
    big = {
        "embeddings": rng.standard_normal((2048, 512)).astype(np.float32),  # 4 MiB
        "small": np.arange(16, dtype=np.int16),
        "norm": np.ones(512, np.float32),
    }
    data = _file_bytes(lfs_hub.files / "big.deathtensors", 0, **big)
    packed = _file_bytes(lfs_hub.files / "packed.deathtensors", 0, compress=True, **big)
    lfs_hub.server.add_repo("ns/remote", files={"big.deathtensors": data, "packed.deathtensors": packed})
    with dt.open(str(lfs_hub.files / "big.deathtensors")) as f:
        local = {k: f.info(k) for k in f.keys()}

    got = lfs_hub.result(
        """
        info = hub_file_info("ns/remote", "big.deathtensors")
        f = HubCachedFile("ns/remote", "big.deathtensors")
        small = f.get_tensor("small", framework="numpy")
        out({"info": info, "small": small.tolist(), "fetched": f.bytes_fetched, "cached": f.cached_path})
        """
    )
    info = got["info"]
    assert [t["name"] for t in info["tensors"]] == list(big)
    for t in info["tensors"]:
        assert {k: t[k] for k in ("dtype", "shape", "nbytes", "file_offset")} == {
            k: local[t["name"]][k] for k in ("dtype", "shape", "nbytes", "file_offset")
        }
    assert info["file_size"] == len(data) and info["checksum"] == "sha256"
    assert got["small"] == list(range(16))
    assert got["cached"] is None  # nothing was downloaded into the cache

    gets = lfs_hub.server.requests("GET", "/resolve/")
    assert gets and all(r["range"] is not None and r["status"] == 206 for r in gets)
    served = sum(r["bytes_sent"] for r in gets)
    header_end = local["embeddings"]["file_offset"]  # the first tensor starts after the header
    # Two header reads of at most the probe each, and exactly the 32 bytes of "small".

    assert served <= 2 * max(HEADER_PROBE_BYTES, header_end) + big["small"].nbytes
    assert served < len(data) / 20, f"{served} of {len(data)} bytes served"
    assert info["bytes_fetched"] <= max(HEADER_PROBE_BYTES, header_end)

    # A compressed file: the tensor's chunks are fetched by range and decoded; nothing is downloaded.
    with dt.open(str(lfs_hub.files / "packed.deathtensors")) as f:
        packed_info = {k: f.info(k) for k in f.keys()}
    assert packed_info["embeddings"]["chunks"] > 1
    for wanted in ("norm", "embeddings"):
        lfs_hub.server.clear_log()
        got = lfs_hub.result(
            f"""
            f = HubCachedFile("ns/remote", "packed.deathtensors")
            out({{"t": digest(f.get_tensor({wanted!r}, framework="numpy")), "cached": f.cached_path}})
            """
        )
        assert got == {"t": digests({"t": big[wanted]})["t"], "cached": None}, wanted
        gets = lfs_hub.server.requests("GET", "/resolve/")
        assert gets and all(r["range"] is not None and r["status"] == 206 for r in gets)
        served = sum(r["bytes_sent"] for r in gets)
        # The header probe, and the tensor's stored bytes unless the probe held them already.
        assert served <= HEADER_PROBE_BYTES + packed_info[wanted]["stored_nbytes"], wanted
    assert served >= packed_info["embeddings"]["stored_nbytes"]  # the 3+ MB tensor itself was fetched
    lfs_hub.server.clear_log()
    got = lfs_hub.result(
        """
        f = HubCachedFile("ns/remote", "packed.deathtensors")
        t = f.get_tensor("norm", device="meta")  # read by range, then moved
        out({"fetched": f.bytes_fetched, "device": str(t.device), "shape": list(t.shape)})
        """
    )
    assert got["device"] == "meta" and got["shape"] == [512]
    fetched = got["fetched"]
    assert fetched < len(packed) / 20, f"{fetched} of {len(packed)} bytes fetched for a 2 KiB tensor"


def test_a_damaged_remote_chunk_is_a_typed_error(lfs_hub: Env) -> None:
    rng = np.random.default_rng(6)
    w = rng.standard_normal((512, 512)).astype(np.float32)
    good = bytearray(_file_bytes(lfs_hub.files / "w.deathtensors", 0, compress=True, w=w))
    with dt.open(str(lfs_hub.files / "w.deathtensors")) as f:
        entry = f.info("w")
    # Inside a zstd frame (the exponent plane of the first chunk); raw planes are covered by the footer only.
    frame = bytes(good).index(b"\x28\xb5\x2f\xfd", entry["file_offset"])
    good[frame + 40] ^= 0xFF
    lfs_hub.server.add_repo("ns/damaged", files={"w.deathtensors": bytes(good)})
    got = lfs_hub.result(
        """
        try:
            HubCachedFile("ns/damaged", "w.deathtensors").get_tensor("w")
            out("no error")
        except dt.DeathtensorsError as e:
            out([type(e).__name__, str(e)])
        """
    )
    assert got[0] == "FormatError" and ('"w"' in got[1] or "'w'" in got[1]), got


def test_a_long_remote_header_is_fetched_once(lfs_hub: Env) -> None:
    """A header longer than the 64 KiB probe: its tail is fetched once, and reading a
    tensor afterwards costs one range request for that tensor alone."""
    many = {f"layer.{i:04d}.{'x' * 40}": np.full(4, i, np.float32) for i in range(1200)}
    data = _file_bytes(lfs_hub.files / "long.deathtensors", 0, compress=True, **many)
    with dt.open(str(lfs_hub.files / "long.deathtensors")) as f:
        data_start = f._desc["data_start"]
    assert data_start > HEADER_PROBE_BYTES
    lfs_hub.server.add_repo("ns/long", files={"long.deathtensors": data})
    last = list(many)[-1]
    got = lfs_hub.result(
        f"""
        f = HubCachedFile("ns/long", "long.deathtensors")
        n = len(f.keys())
        t = f.get_tensor({last!r}, framework="numpy")
        out({{"n": n, "t": t.tolist(), "fetched": f.bytes_fetched}})
        """
    )
    assert got["n"] == len(many) and got["t"] == many[last].tolist()
    gets = lfs_hub.server.requests("GET", "/resolve/")
    assert len(gets) == 3, [r["range"] for r in gets]  # the probe, the header's tail, the tensor
    assert got["fetched"] < data_start + 1024


def test_a_hostile_remote_header_is_refused_with_a_typed_error(lfs_hub: Env) -> None:
    good = _file_bytes(lfs_hub.files / "g.deathtensors", 1)
    lfs_hub.server.add_repo(
        "ns/bad",
        files={
            "huge-header.deathtensors": good[:16] + (10**12).to_bytes(8, "little") + good[24:],
            "not-dt.deathtensors": b"PK\x03\x04" + b"\0" * 4000,
        },
    )
    got = lfs_hub.result(
        """
        errors = {}
        for name in ("huge-header.deathtensors", "not-dt.deathtensors"):
            try:
                hub_file_info("ns/bad", name)
            except dt.DeathtensorsError as e:
                errors[name] = type(e).__name__
        out(errors)
        """
    )
    assert got == {"huge-header.deathtensors": "FormatError", "not-dt.deathtensors": "FormatError"}
    assert sum(r["bytes_sent"] for r in lfs_hub.server.requests("GET")) <= 2 * 64 * 1024


def test_hostile_hub_answers_are_typed_errors_and_escaped_output(lfs_hub: Env) -> None:
    """Regression: a hostile sharded index made convert_safetensors_on_hub raise
    raw JSONDecodeError/TypeError/RecursionError, and the hub CLI printed file
    names with their escape sequences."""
    lfs_hub.server.add_repo(
        "ns/hostile",
        files={
            "bad.safetensors.index.json": b"[" * 100_000,
            "seven.safetensors.index.json": b"7",
            "dup.safetensors.index.json": b'{"weight_map": {}, "weight_map": {}}',
            "evil\x1b[2J.deathtensors": _file_bytes(lfs_hub.files / "e.deathtensors", 2),
        },
    )
    got = lfs_hub.result(
        """
        errors = {}
        for name in ("bad", "seven", "dup"):
            try:
                convert_safetensors_on_hub("ns/hostile", name + ".safetensors.index.json")
            except dt.DeathtensorsError as e:
                errors[name] = type(e).__name__
        out(errors)
        """
    )
    assert got == {"bad": "FormatError", "seven": "FormatError", "dup": "FormatError"}
    listed = lfs_hub.cli("hub-list", "ns/hostile")
    assert listed.returncode == 0, listed.stderr
    assert "\x1b" not in listed.stdout and "evil\\u{1b}[2J.deathtensors" in listed.stdout, listed.stdout
    as_json = lfs_hub.cli("hub-list", "ns/hostile", "--json")
    assert "\x1b" not in as_json.stdout and "evil\x1b[2J.deathtensors" in json.loads(as_json.stdout), as_json.stdout


def test_an_impossible_file_size_from_the_server_is_a_hub_error() -> None:
    """Regression: a Content-Range total past 2**64 reached the Rust core as an
    OverflowError, which the hub CLI printed as a traceback."""
    from deathtensors.huggingface import _total_size

    assert _total_size("bytes 0-9/123", 206, None) == 123
    for total in (2**63, 10**30):
        with pytest.raises(dt.HubError, match="no file can have"):
            _total_size(f"bytes 0-9/{total}", 206, None)
    with pytest.raises(dt.HubError, match="no file can have"):
        _total_size(None, 200, str(10**30))


# -- conversion -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("delete_original", [False, True])
def test_convert_safetensors_on_hub(hub: Env, delete_original: bool) -> None:
    st = pytest.importorskip("safetensors.numpy")
    tensors = model(9)
    st.save_file(tensors, str(hub.files / "model.safetensors"), metadata={"format": "np"})
    hub.server.add_repo(
        "death-legion/old-checkpoint", files={"model.safetensors": (hub.files / "model.safetensors").read_bytes()}
    )
    before = len(hub.server.repo("death-legion/old-checkpoint").commits)
    got = hub.result(
        f"""
        url = convert_safetensors_on_hub(repo_id="death-legion/old-checkpoint",
                                         safetensors_filename="model.safetensors",
                                         compress=True, delete_original={delete_original})
        out(url)
        """
    )
    files = hub.server.files("death-legion/old-checkpoint")
    assert got == f"{hub.server.url}/death-legion/old-checkpoint/blob/main/model.deathtensors"
    assert len(hub.server.repo("death-legion/old-checkpoint").commits) == before + 1
    assert ("model.safetensors" in files) is not delete_original
    converted = hub.files / "converted.deathtensors"
    converted.write_bytes(files["model.deathtensors"])
    with dt.open(str(converted), verify=True) as f:
        assert f.is_compressed() and f.has_checksum()
        assert digests({k: f.get_tensor(k, framework="numpy") for k in f.keys()}) == digests(tensors)


def test_convert_on_hub_never_deletes_a_source_pushed_meanwhile(lfs_hub: Env) -> None:
    # The commit went to the branch with no parent: a model.safetensors pushed while the
    # conversion ran was deleted, and the branch kept only the conversion of the old one.
    st = pytest.importorskip("safetensors.numpy")
    st.save_file(model(1), str(lfs_hub.files / "v1.safetensors"))
    st.save_file(model(2), str(lfs_hub.files / "v2.safetensors"))
    v2 = (lfs_hub.files / "v2.safetensors").read_bytes()
    lfs_hub.server.add_repo("ns/racing", files={"model.safetensors": (lfs_hub.files / "v1.safetensors").read_bytes()})
    got = lfs_hub.result(
        """
        from huggingface_hub import HfApi
        from deathtensors.errors import HubUploadError
        convert = dt._core.import_remote  # the streamed conversion of the source
        def convert_while_someone_pushes(*args, **kwargs):
            done = convert(*args, **kwargs)
            HfApi().upload_file(path_or_fileobj=sys.argv[1] + "/v2.safetensors", path_in_repo="model.safetensors",
                                repo_id="ns/racing")
            return done
        dt._core.import_remote = convert_while_someone_pushes
        try:
            convert_safetensors_on_hub("ns/racing", "model.safetensors", delete_original=True)
            out("committed")
        except HubUploadError as e:
            out("refused: " + str(e))
        """
    )
    assert got.startswith("refused"), got
    files = lfs_hub.server.files("ns/racing")
    assert files == {"model.safetensors": v2}
    # Converting a file onto its own name would delete it; that is refused up front.
    refused = lfs_hub.result(
        """
        try:
            convert_safetensors_on_hub("ns/racing", "model.safetensors", deathtensors_filename="model.safetensors",
                                       delete_original=True)
        except dt.InvalidArgumentError as e:
            out(str(e))
        """
    )
    assert "a file it converts" in refused
    assert lfs_hub.server.files("ns/racing") == {"model.safetensors": v2}


def test_convert_a_sharded_safetensors_checkpoint_on_hub(lfs_hub: Env) -> None:
    st = pytest.importorskip("safetensors.numpy")
    tensors = {f"t{i}": np.full(100, i, np.float32) for i in range(4)}
    repo_files: Dict[str, bytes] = {}
    weight_map = {}
    for n, group in enumerate((["t0", "t1"], ["t2", "t3"]), start=1):
        name = f"model-0000{n}-of-00002.safetensors"
        st.save_file({k: tensors[k] for k in group}, str(lfs_hub.files / name))
        repo_files[name] = (lfs_hub.files / name).read_bytes()
        weight_map.update({k: name for k in group})
    repo_files["model.safetensors.index.json"] = json.dumps({"metadata": {}, "weight_map": weight_map}).encode()
    lfs_hub.server.add_repo("ns/sharded-st", files=repo_files)
    got = lfs_hub.result(
        """
        url = convert_safetensors_on_hub("ns/sharded-st", "model.safetensors.index.json", delete_original=True)
        with load_sharded_from_hub("ns/sharded-st", "model.deathtensors") as sr:
            out({"url": url, "t3": sr.get_tensor("t3", framework="numpy").tolist()[:2], "keys": sr.keys()})
        """
    )
    assert got["t3"] == [3.0, 3.0] and sorted(got["keys"]) == sorted(tensors)
    remaining = sorted(hub_path for hub_path in lfs_hub.server.files("ns/sharded-st") if "safetensors" in hub_path)
    assert remaining == []
    # The shards were streamed, not downloaded: the cache holds the index, and the converted checkpoint read back.
    cached = sorted(p.name for p in (lfs_hub.hf_home / "hub").rglob("*.safetensors"))
    assert cached == [], cached
    assert got["url"].endswith("/ns/sharded-st/blob/main/model.deathtensors.index.json")


def _cached_blobs(env: Env) -> List[Path]:
    return [p for p in (env.hf_home / "hub").rglob("*") if p.is_file() and "blobs" in p.parts]


def test_convert_on_hub_streams_the_source_without_downloading_it(lfs_hub: Env) -> None:
    """The source is read by range as the conversion writes it: nothing of it
    lands in the cache, small tensors share range requests, and the result is
    byte for byte the local conversion's."""
    st = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(5)
    tensors = {f"small.{i:02d}": rng.standard_normal(64).astype(np.float32) for i in range(40)}
    tensors["big"] = rng.standard_normal((256, 256)).astype(np.float32)  # big enough for a filter trial
    tensors["mask"] = np.frombuffer(bytes([0, 1, 2, 255] * 8), np.uint8).view(np.bool_)  # bytes 2, 255: true
    src = lfs_hub.files / "model.safetensors"
    st.save_file(tensors, str(src))
    size = src.stat().st_size
    lfs_hub.server.add_repo("ns/stream", files={"model.safetensors": src.read_bytes()})
    lfs_hub.server.clear_log()
    url = lfs_hub.result(
        """
        out(convert_safetensors_on_hub("ns/stream", "model.safetensors", compress=True))
        """
    )
    assert url.endswith("/ns/stream/blob/main/model.deathtensors")
    gets = lfs_hub.server.requests("GET", "/model.safetensors")
    assert all(r["range"] for r in gets), gets  # range reads only, never the whole file
    # The header probe, the filter trial's sample of "big", then the data in one read-ahead.
    assert len(gets) <= 3, [r["range"] for r in gets]
    assert sum(r["bytes_sent"] for r in gets) < size + 64 * 1024
    assert _cached_blobs(lfs_hub) == []
    local = dt.from_safetensors(str(src), str(lfs_hub.files / "local.deathtensors"), compress=True)
    assert lfs_hub.server.files("ns/stream")["model.deathtensors"] == Path(local).read_bytes()


@pytest.mark.parametrize("hold", [0.0, 30.0], ids=["short", "stalled"])
def test_a_range_answer_cut_short_is_a_connection_error(lfs_hub: Env, hold: float) -> None:
    """Regression: a server that stopped sending mid-answer hung the conversion
    (no timeout on range reads), and a short answer made a FormatError
    blaming the source ("truncated file")."""
    st = pytest.importorskip("safetensors.numpy")
    src = lfs_hub.files / "model.safetensors"
    st.save_file({"w": np.random.default_rng(4).standard_normal(300_000).astype(np.float32)}, str(src))
    repo = lfs_hub.server.add_repo("ns/cut", files={"model.safetensors": src.read_bytes()})
    before = list(repo.commits)
    lfs_hub.server.cut_ranges = (1000, hold)
    started = time.monotonic()
    got = lfs_hub.result(
        """
        try:
            convert_safetensors_on_hub("ns/cut", "model.safetensors")
            out("converted")
        except dt.DeathtensorsError as e:
            out(type(e).__name__)
        """,
        HF_HUB_DOWNLOAD_TIMEOUT="2",
    )
    assert got == "HubConnectionError", got
    assert time.monotonic() - started < 25
    assert repo.commits == before


def test_read_ahead_serves_every_read_exactly_and_fetches_no_byte_twice() -> None:
    from deathtensors.huggingface import _ReadAhead

    data = np.random.default_rng(2).integers(0, 256, 50_000, dtype=np.uint8).tobytes()
    fetched: List[Tuple[int, int]] = []

    def fetch(offset: int, length: int) -> bytearray:
        fetched.append((offset, length))
        return bytearray(data[offset : offset + length])

    reads = _ReadAhead(fetch, len(data), 1000)
    rng = np.random.default_rng(3)
    pos = 0
    for _ in range(3000):  # runs of sequential reads of every size, with jumps between runs
        if rng.random() < 0.05:
            pos = int(rng.integers(0, len(data)))
        n = min(int(rng.choice([1, 7, 999, 1000, 1001, 2500])), len(data) - pos)
        assert bytes(reads(pos, n)) == data[pos : pos + n], (pos, n)
        pos = 0 if pos + n >= len(data) else pos + n
    # A sequential scan costs a fetch per block, and fetches no byte twice.
    fetched.clear()
    scan = _ReadAhead(fetch, len(data), 1000)
    pos = 0
    for n in [8, 40, 3, 900, 2000, 10, 10, 5000, 1] * 30:
        n = min(n, len(data) - pos)
        assert bytes(scan(pos, n)) == data[pos : pos + n]
        pos += n
    assert sum(length for _, length in fetched) == pos
    assert len(fetched) <= pos // 1000 + 30, len(fetched)


def test_convert_on_hub_uses_a_source_already_in_the_cache(lfs_hub: Env) -> None:
    st = pytest.importorskip("safetensors.numpy")
    st.save_file(model(3), str(lfs_hub.files / "model.safetensors"))
    source = (lfs_hub.files / "model.safetensors").read_bytes()
    lfs_hub.server.add_repo("ns/cached", files={"model.safetensors": source})
    got = lfs_hub.result(
        """
        from huggingface_hub import hf_hub_download
        hf_hub_download("ns/cached", "model.safetensors")
        out(convert_safetensors_on_hub("ns/cached", "model.safetensors"))
        """
    )
    assert got.endswith("/model.deathtensors")
    assert [r for r in lfs_hub.server.requests("GET", "/model.safetensors") if r["range"]] == []
    converted = lfs_hub.files / "converted.deathtensors"
    converted.write_bytes(lfs_hub.server.files("ns/cached")["model.deathtensors"])
    with dt.open(str(converted), verify=True) as f:
        assert digests({k: f.get_tensor(k, framework="numpy") for k in f.keys()}) == digests(model(3))


def test_a_failed_read_mid_stream_leaves_the_repo_unchanged(lfs_hub: Env) -> None:
    st = pytest.importorskip("safetensors.numpy")
    src = lfs_hub.files / "model.safetensors"
    st.save_file({"w": np.random.default_rng(1).standard_normal(300_000).astype(np.float32)}, str(src))
    repo = lfs_hub.server.add_repo("ns/flaky", files={"model.safetensors": src.read_bytes()})
    before = list(repo.commits)
    # The header probe goes through; the next read of the source fails.
    lfs_hub.server.fail("GET", r"/resolve/[^/]+/model\.safetensors$", 404, skip=1)
    got = lfs_hub.result(
        """
        try:
            convert_safetensors_on_hub("ns/flaky", "model.safetensors", delete_original=True)
            out("converted")
        except dt.HubError as e:
            out(type(e).__name__)
        """
    )
    assert got in {"HubError", "HubNotFoundError"}, got
    assert repo.commits == before
    assert lfs_hub.server.files("ns/flaky") == {"model.safetensors": src.read_bytes()}
    assert _cached_blobs(lfs_hub) == []


# -- tokens ---------------------------------------------------------------------------------------------

TOKEN_CASES = [
    ("argument", {"HF_TOKEN": "env-hf", "HUGGING_FACE_HUB_TOKEN": "env-legacy"}, True, "arg-token"),
    ("HF_TOKEN", {"HF_TOKEN": "env-hf", "HUGGING_FACE_HUB_TOKEN": "env-legacy"}, False, "env-hf"),
    ("HUGGING_FACE_HUB_TOKEN", {"HF_TOKEN": None, "HUGGING_FACE_HUB_TOKEN": "env-legacy"}, False, "env-legacy"),
    ("login cache", {"HF_TOKEN": None, "HUGGING_FACE_HUB_TOKEN": None}, False, "cached-login"),
]


@pytest.mark.parametrize("case,env,pass_arg,expected", TOKEN_CASES, ids=[c[0] for c in TOKEN_CASES])
def test_token_order(lfs_hub: Env, case: str, env: Dict[str, Optional[str]], pass_arg: bool, expected: str) -> None:
    lfs_hub.hf_home.mkdir(parents=True, exist_ok=True)
    (lfs_hub.hf_home / "token").write_text("cached-login\n")
    dt.save(str(lfs_hub.files / "m.deathtensors"), {"x": np.zeros(3, np.float32)})
    arg = ', token="arg-token"' if pass_arg else ""
    lfs_hub.py(
        f"""
        push_to_hub("ns/tok", sys.argv[1] + "/m.deathtensors"{arg})
        load_from_hub("ns/tok", "m.deathtensors"{arg}).close()
        """,
        **env,
    )
    for method, where in (("POST", "/commit/"), ("POST", "/preupload/"), ("HEAD", "/resolve/"), ("GET", "/resolve/")):
        seen = {r["authorization"] for r in lfs_hub.server.requests(method, where)}
        assert seen == {f"Bearer {expected}"}, (method, where, seen)


def test_push_without_any_token_fails_before_any_request(lfs_hub: Env) -> None:
    dt.save(str(lfs_hub.files / "m.deathtensors"), {"x": np.zeros(3, np.float32)})
    got = lfs_hub.result(
        """
        try:
            push_to_hub("ns/none", sys.argv[1] + "/m.deathtensors")
        except dt.HubAuthError as e:
            out(str(e))
        """,
        HF_TOKEN=None,
        HUGGING_FACE_HUB_TOKEN=None,
    )
    assert "hf auth login" in got and "HF_TOKEN" in got
    assert lfs_hub.server.log == []


# -- errors ---------------------------------------------------------------------------------------------


def test_missing_repo_file_and_revision_are_typed_errors(lfs_hub: Env) -> None:
    lfs_hub.server.add_repo("ns/there", files={"a.deathtensors": _file_bytes(lfs_hub.files / "a.dt", 1)})
    got = lfs_hub.result(
        """
        cases = {
            "repo": lambda: load_from_hub("ns/absent", "a.deathtensors"),
            "file": lambda: load_from_hub("ns/there", "b.deathtensors"),
            "revision": lambda: load_from_hub("ns/there", "a.deathtensors", revision="no-such-branch"),
            "info": lambda: hub_model_info("ns/absent"),
            "list": lambda: list_repo_models("ns/absent"),
            "remote header": lambda: hub_file_info("ns/there", "b.deathtensors"),
        }
        seen = {}
        for name, call in cases.items():
            try:
                call()
                seen[name] = None
            except dt.HubError as e:
                seen[name] = [type(e).__name__, isinstance(e, dt.DeathtensorsError), str(e)]
        out(seen)
        """
    )
    assert got["repo"][0] == "HubRepoNotFoundError" and "ns/absent" in got["repo"][2]
    assert got["file"][0] == "HubEntryNotFoundError" and "b.deathtensors" in got["file"][2]
    assert got["revision"][0] == "HubRevisionNotFoundError"
    assert got["info"][0] == "HubRepoNotFoundError"
    assert got["list"][0] == "HubRepoNotFoundError"
    assert got["remote header"][0] == "HubEntryNotFoundError"
    assert all(v[1] for v in got.values())


def test_a_malformed_repo_id_is_an_argument_error_and_missing_names_are_named(lfs_hub: Env) -> None:
    """A repo id the client refuses was a HubConnectionError (an OSError, so
    retried by retry-on-OSError code) and exit 1; a missing local file or
    remote name was reported as a missing sharded index."""
    dt.save(lfs_hub.files / "m.deathtensors", {"w": np.ones(4, np.float32)})
    got = lfs_hub.result(
        """
        try:
            push_to_hub("not a repo id!!", os.path.join(sys.argv[1], "m.deathtensors"))
            out(None)
        except Exception as e:
            out([type(e).__name__, isinstance(e, dt.InvalidArgumentError), isinstance(e, OSError), str(e)])
        """
    )
    assert got[:3] == ["InvalidArgumentError", True, False], got
    assert "not a repo id!!" in got[3]
    bad = lfs_hub.cli("hub-push", "bad repo!!", "m.deathtensors")
    assert bad.returncode == 2, bad.stderr
    assert "bad repo!!" in bad.stderr and "Traceback" not in bad.stderr

    gone = lfs_hub.cli("hub-push", "ns/x", "nope.deathtensors")
    assert gone.returncode == 1
    assert "nope.deathtensors: no such file, and no sharded checkpoint index" in gone.stderr, gone.stderr
    assert "[Errno" not in gone.stderr

    lfs_hub.server.add_repo("ns/there", files={"a.deathtensors": _file_bytes(lfs_hub.files / "a.dt", 1)})
    absent = lfs_hub.cli("hub-pull", "ns/there", "nope.deathtensors")
    assert absent.returncode == 1
    assert "nope.deathtensors is not in ns/there, and neither is a sharded checkpoint index" in absent.stderr, (
        absent.stderr
    )


@pytest.mark.parametrize("where", ["lfs-upload", "commit"])
def test_a_server_error_mid_upload_leaves_the_repo_unchanged(lfs_hub: Env, where: str) -> None:
    first = {f"t{i}": np.full(512, i, np.float32) for i in range(4)}
    base = str(lfs_hub.files / "ck.deathtensors")
    dt.save_sharded(base, first, max_shard_bytes=4096)
    lfs_hub.py('push_sharded_to_hub("ns/safe", sys.argv[1] + "/ck.deathtensors")')
    before = lfs_hub.server.files("ns/safe")
    head = lfs_hub.server.repo("ns/safe").branches["main"]
    lfs_hub.server.clear_log()

    dt.save_sharded(base, {k: v + 100 for k, v in first.items()}, max_shard_bytes=2048)
    # 507 is a server error the client does not retry. LFS: the first upload succeeds, the next fails.
    if where == "lfs-upload":
        lfs_hub.server.fail("PUT", "/lfs-upload/", 507, skip=1)
    else:
        lfs_hub.server.fail("POST", "/commit/", 507)
    got = lfs_hub.result(
        """
        try:
            push_sharded_to_hub("ns/safe", sys.argv[1] + "/ck.deathtensors")
            out(None)
        except dt.HubUploadError as e:
            out(str(e))
        """
    )
    assert got is not None and "507" in got and "unchanged" in got
    if where == "lfs-upload":
        # Uploads run on several threads: one went through, one failed; the commit never came.
        statuses = [r["status"] for r in lfs_hub.server.requests("PUT", "/lfs-upload/")]
        assert 200 in statuses and 507 in statuses, statuses
    assert not lfs_hub.server.requests("POST", "/commit/") or where == "commit"
    assert lfs_hub.server.repo("ns/safe").branches["main"] == head
    assert lfs_hub.server.files("ns/safe") == before


def test_a_transient_storage_error_is_retried(lfs_hub: Env) -> None:
    dt.save(str(lfs_hub.files / "m.deathtensors"), {"x": np.arange(5, dtype=np.float32)})
    lfs_hub.server.fail("PUT", "/lfs-upload/", 503, times=1)
    lfs_hub.py('push_to_hub("ns/retry", sys.argv[1] + "/m.deathtensors")')
    assert "m.deathtensors" in lfs_hub.server.files("ns/retry")
    assert [r["status"] for r in lfs_hub.server.requests("PUT", "/lfs-upload/")] == [503, 200]


def test_a_damaged_local_file_is_never_pushed(lfs_hub: Env) -> None:
    path = lfs_hub.files / "m.deathtensors"
    dt.save(str(path), {"x": np.arange(1000, dtype=np.float32)}, checksum=True)
    raw = bytearray(path.read_bytes())
    raw[-100] ^= 0xFF  # a data byte, caught by the footer
    path.write_bytes(bytes(raw))
    got = lfs_hub.result(
        """
        try:
            push_to_hub("ns/x", sys.argv[1] + "/m.deathtensors")
        except dt.ChecksumError as e:
            out(type(e).__name__)
        """
    )
    assert got == "ChecksumError"
    assert lfs_hub.server.log == []


# -- without huggingface_hub ----------------------------------------------------------------------------

BLOCK_HF = """
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "huggingface_hub" or name.startswith("huggingface_hub."):
            raise ImportError("blocked for the test: No module named 'huggingface_hub'")
sys.meta_path.insert(0, _Block())
"""


def test_without_huggingface_hub_the_error_says_how_to_install_it(lfs_hub: Env, tmp_path: Path) -> None:
    site = tmp_path / "block"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_HF)
    env = {"PYTHONPATH": str(site)}
    got = lfs_hub.result(
        """
        import deathtensors.huggingface as h
        imported = "huggingface_hub" in sys.modules
        try:
            h.list_repo_models("ns/x")
            msg = None
        except ImportError as e:
            msg = str(e)
        out({"imported": imported, "msg": msg})
        """,
        **env,
    )
    assert got["imported"] is False
    assert "pip install deathtensors[huggingface]" in got["msg"]
    proc = lfs_hub.cli("hub-list", "ns/x", **env)
    assert proc.returncode == 2
    assert "pip install deathtensors[huggingface]" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_an_old_huggingface_hub_is_named_not_half_used(monkeypatch: pytest.MonkeyPatch) -> None:
    """huggingface_hub 0.x has another HTTP stack and other error classes:
    refuse it up front with the version found, instead of failing mid-call."""
    import huggingface_hub

    from deathtensors import huggingface as h

    assert h._version_tuple("1.8.0rc1") == (1, 8, 0) and h._version_tuple("0.36.2") == (0, 36, 2)
    monkeypatch.setattr(huggingface_hub, "__version__", "0.36.2")
    with pytest.raises(ImportError, match=r"huggingface_hub 1\.0 or newer, found 0\.36\.2"):
        h.list_repo_models("ns/x")


def test_the_extras_resolve_on_every_python_the_package_supports() -> None:
    """huggingface_hub 1.x needs Python 3.9: on 3.8 the extras must leave it out
    (pip could not resolve `deathtensors[huggingface]` there at all)."""
    tomllib = pytest.importorskip("tomllib")
    requirements = pytest.importorskip("packaging.requirements")
    pyproject = Path(__file__).resolve().parents[2] / "python" / "pyproject.toml"
    project = tomllib.loads(pyproject.read_text())["project"]
    assert project["requires-python"] == ">=3.8"
    for extra in ("huggingface", "dev"):
        hub = [requirements.Requirement(r) for r in project["optional-dependencies"][extra]]
        hub = [r for r in hub if r.name == "huggingface_hub"]
        assert len(hub) == 1, extra
        for py, wanted in (("3.8", False), ("3.9", True), ("3.13", True)):
            env = {"python_version": py, "python_full_version": py + ".0"}
            assert (hub[0].marker is None or hub[0].marker.evaluate(env)) == wanted, (extra, py)


def test_importing_deathtensors_never_imports_huggingface_hub() -> None:
    code = "import sys, deathtensors, deathtensors.huggingface; print('huggingface_hub' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- CLI ------------------------------------------------------------------------------------------------


def test_cli_hub_commands(lfs_hub: Env) -> None:
    st = pytest.importorskip("safetensors.numpy")
    tensors = model(4)
    dt.save(str(lfs_hub.files / "model.deathtensors"), tensors, compress=True, checksum=True)
    st.save_file(tensors, str(lfs_hub.files / "model.safetensors"))

    push = lfs_hub.cli("hub-push", "death-legion/my-model", "model.deathtensors", "--json")
    assert push.returncode == 0, push.stderr
    assert json.loads(push.stdout)["url"].endswith("/death-legion/my-model/blob/main/model.deathtensors")

    listed = lfs_hub.cli("hub-list", "death-legion/my-model")
    assert listed.returncode == 0 and listed.stdout.split() == ["model.deathtensors"]

    info = lfs_hub.cli("hub-info", "death-legion/my-model", "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["deathtensors_files"] == ["model.deathtensors"]

    table = lfs_hub.cli("hub-info", "death-legion/my-model", "model.deathtensors")
    assert table.returncode == 0, table.stderr
    # The same text as local `info` (its table used to differ): only the file line differs,
    # and a last line says how the header was read.
    local = lfs_hub.cli("info", str(lfs_hub.files / "model.deathtensors"))
    remote_lines, local_lines = table.stdout.splitlines(), local.stdout.splitlines()
    assert remote_lines[0] == "file:      death-legion/my-model/model.deathtensors"
    assert remote_lines[1:-1] == local_lines[1:], table.stdout
    assert remote_lines[-1].startswith("(header read by range: ")
    assert "[128, 128]" in table.stdout and "zstd" in table.stdout

    out_dir = lfs_hub.files / "pulled"
    pull = lfs_hub.cli(
        "hub-pull", "death-legion/my-model", "model.deathtensors", "--verify", "--local-dir", str(out_dir)
    )
    assert pull.returncode == 0, pull.stderr
    assert (out_dir / "model.deathtensors").read_bytes() == (lfs_hub.files / "model.deathtensors").read_bytes()

    lfs_hub.server.add_repo(
        "death-legion/old", files={"model.safetensors": (lfs_hub.files / "model.safetensors").read_bytes()}
    )
    every_option = lfs_hub.cli(
        "hub-convert",
        "death-legion/old",
        "model.safetensors",
        "--compress=zstd",
        "--level",
        "9",
        "--checksum",
        "blake3",
        "--output",
        "model-z9.deathtensors",
        "--message",
        "zstd-9 copy",
    )
    assert every_option.returncode == 0, every_option.stderr
    copy = lfs_hub.files / "model-z9.deathtensors"
    copy.write_bytes(lfs_hub.server.files("death-legion/old")["model-z9.deathtensors"])
    with dt.open(str(copy), verify=True) as f:
        assert f.codec() == "zstd" and f.checksum_algorithm() == "blake3"
    assert dt.read_manifest(dt.write_manifest(str(copy)))["header"]["compression"]["level"] == 9
    conv = lfs_hub.cli("hub-convert", "death-legion/old", "model.safetensors", "--compress", "--delete-original")
    assert conv.returncode == 0, conv.stderr
    assert sorted(lfs_hub.server.files("death-legion/old")) == ["model-z9.deathtensors", "model.deathtensors"]

    missing = lfs_hub.cli("hub-pull", "death-legion/absent", "model.deathtensors")
    assert missing.returncode == 1
    assert missing.stderr.startswith("deathtensors: error:") and len(missing.stderr.strip().splitlines()) == 1
    assert "Traceback" not in missing.stderr

    usage = lfs_hub.cli("hub-push", "only-one-argument")
    assert usage.returncode == 2


def test_cli_hub_names_with_invisible_layout_characters_are_escaped(lfs_hub: Env) -> None:
    """The hub commands print names from the server through the Python CLI's
    escaping: a right-to-left override (U+202E) must not reach the terminal
    raw, where "model.\u202esrosnethtaed" would show as "model.deathtensors"."""
    spoof = "evil\u202esrosnethtaed.deathtensors"
    lfs_hub.server.add_repo("ns/bidi", files={spoof: b"not read"})
    listed = lfs_hub.cli("hub-list", "ns/bidi")
    assert listed.returncode == 0, listed.stderr
    assert "\u202e" not in listed.stdout and listed.stdout.split() == ["evil\\u{202e}srosnethtaed.deathtensors"]
    as_json = lfs_hub.cli("hub-list", "ns/bidi", "--json")
    assert "\u202e" not in as_json.stdout and json.loads(as_json.stdout) == [spoof]


def test_cli_pull_of_a_sharded_checkpoint(lfs_hub: Env) -> None:
    tensors = {f"t{i}": np.full(300, i, np.float32) for i in range(5)}
    dt.save_sharded(str(lfs_hub.files / "big.deathtensors"), tensors, max_shard_bytes=2400)
    assert lfs_hub.cli("hub-push", "ns/big", "big.deathtensors").returncode == 0
    out_dir = lfs_hub.files / "copy"
    pull = lfs_hub.cli("hub-pull", "ns/big", "big.deathtensors", "--local-dir", str(out_dir), "--json")
    assert pull.returncode == 0, pull.stderr
    assert len(json.loads(pull.stdout)["paths"]) == 1 + 3
    with dt.open_sharded(str(out_dir / "big.deathtensors")) as sr:
        assert sr.get_tensor("t4", framework="numpy").tolist()[:1] == [4.0]


def test_cli_help_lists_the_hub_commands() -> None:
    out = subprocess.run([sys.executable, "-m", "deathtensors", "--help"], capture_output=True, text=True).stdout
    for cmd in ("hub-push", "hub-pull", "hub-list", "hub-info", "hub-convert"):
        assert cmd in out


def test_cli_progress_bars_only_on_a_terminal(lfs_hub: Env) -> None:
    dt.save(str(lfs_hub.files / "m.deathtensors"), {"x": np.zeros(300_000, np.float32)})
    assert lfs_hub.cli("hub-push", "ns/p", "m.deathtensors").returncode == 0
    env = lfs_hub.env(HF_HUB_DISABLE_PROGRESS_BARS=None)
    args = [sys.executable, "-m", "deathtensors", "hub-pull", "ns/p", "m.deathtensors"]
    proc, drawn = run_on_pty(args, env)
    assert proc.returncode == 0
    assert "m.deathtensors" in drawn and "%" in drawn  # the client's download bar, on the terminal
    (lfs_hub.hf_home / "hub").rename(lfs_hub.tmp / "old-cache")
    piped = subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and "%" not in piped.stderr


# -- the spec README's example, as written --------------------------------------------------------------

SPEC_EXAMPLE = """
import os
os.chdir(sys.argv[1])
import torch, deathtensors as dt
from deathtensors.huggingface import (
    push_to_hub, load_from_hub,
    push_sharded_to_hub, load_sharded_from_hub,
    list_repo_models, hub_model_info,
    convert_safetensors_on_hub, HubCachedFile,
)
huge_state_dict = {f"layer.{i}.weight": torch.full((64, 64), float(i)) for i in range(50)}

model = {"weight": torch.randn(128, 128), "bias": torch.zeros(128)}
dt.save("model.deathtensors", model, compress=True, checksum=True)
url = push_to_hub(
    repo_id="death-legion/my-model",
    local_path="model.deathtensors",
    path_in_repo="model.deathtensors",
)
print(url)
with load_from_hub("death-legion/my-model", "model.deathtensors", verify=True) as f:
    w = f.get_tensor("weight")
assert torch.equal(w, model["weight"])

shards = dt.save_sharded("big_model.deathtensors", huge_state_dict, max_shard_bytes=5 * 64 * 64 * 4)
push_sharded_to_hub("death-legion/big-model", "big_model.deathtensors")
with load_sharded_from_hub("death-legion/big-model", "big_model.deathtensors") as sr:
    w = sr.get_tensor("layer.42.weight")
    print(sr.which_shard("layer.42.weight"))
assert torch.equal(w, huge_state_dict["layer.42.weight"])

# (the test put model.safetensors in death-legion/old-checkpoint)
convert_safetensors_on_hub(
    repo_id="death-legion/old-checkpoint",
    safetensors_filename="model.safetensors",
    compress=True,
    delete_original=False,
)
for f in list_repo_models("death-legion/my-model"):
    print(f)
info = hub_model_info("death-legion/my-model")
print(info["downloads"], info["likes"], info["deathtensors_files"])
"""


def test_the_spec_readme_example_runs_as_written(lfs_hub: Env) -> None:
    pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.numpy")
    st.save_file(model(1), str(lfs_hub.files / "seed.safetensors"))
    lfs_hub.server.add_repo(
        "death-legion/old-checkpoint", files={"model.safetensors": (lfs_hub.files / "seed.safetensors").read_bytes()}
    )
    proc = lfs_hub.py(SPEC_EXAMPLE)
    lines = proc.stdout.splitlines()
    assert lines[0] == f"{lfs_hub.server.url}/death-legion/my-model/blob/main/model.deathtensors"
    assert lines[1] == "big_model-00009-of-00010.deathtensors"
    assert lines[2] == "model.deathtensors"
    downloads = lfs_hub.server.repo("death-legion/my-model").downloads
    assert lines[3] == f"{downloads} 0 ['model.deathtensors']" and downloads >= 1
    assert "model.deathtensors" in lfs_hub.server.files("death-legion/old-checkpoint")


def test_spaces_and_odd_repo_paths_push_or_fail_cleanly(lfs_hub: Env) -> None:
    # A Space could never be pushed to: the client wants an SDK to create one, even one that
    # exists (a raw ValueError, a traceback from the CLI). Paths the Hub refuses were a
    # ValueError mid-call; '/x' and './x' were stored as 'x' but reported as '//x' and './x'.
    local = lfs_hub.files / "model.deathtensors"
    dt.save(str(local), model())
    got = lfs_hub.result(
        """
        p = sys.argv[1] + "/model.deathtensors"
        urls = [push_to_hub("ns/space", p, repo_type="space"),
                push_to_hub("ns/space", p, "/abs.deathtensors", repo_type="space"),
                push_to_hub("ns/space", p, "./sub//dot.deathtensors", repo_type="space")]
        refused = []
        for bad in ("../x.deathtensors", "a/../../b.deathtensors", ".git/x.deathtensors", "/"):
            try:
                push_to_hub("ns/space", p, bad, repo_type="space")
            except dt.InvalidArgumentError as e:
                refused.append(bad)
        # A local name that is not UTF-8 cannot be a repo path; named in the repo, it goes up.
        import shutil
        odd = sys.argv[1] + "/" + os.fsdecode(b"m\\xff.deathtensors")
        shutil.copy(p, odd)
        try:
            push_to_hub("ns/space", odd, repo_type="space")
        except dt.InvalidArgumentError as e:
            refused.append("not utf-8" if "not valid UTF-8" in str(e) else str(e))
        urls.append(push_to_hub("ns/space", odd, "odd.deathtensors", repo_type="space"))
        out({"urls": urls, "refused": refused})
        """
    )
    base = f"{lfs_hub.server.url}/spaces/ns/space/blob/main/"
    assert got["urls"] == [
        base + "model.deathtensors",
        base + "abs.deathtensors",
        base + "sub/dot.deathtensors",
        base + "odd.deathtensors",
    ]
    assert got["refused"] == ["../x.deathtensors", "a/../../b.deathtensors", ".git/x.deathtensors", "/", "not utf-8"]
    stored = lfs_hub.server.files("ns/space", repo_type="space")
    assert {"model.deathtensors", "abs.deathtensors", "sub/dot.deathtensors"} <= set(stored)
    r = lfs_hub.cli("hub-push", "ns/space", str(local), "--repo-type", "space", "--path-in-repo", "../up.deathtensors")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "not a path inside the repo" in r.stderr


def test_an_endpoint_that_answers_html_is_a_hub_error_not_a_traceback(lfs_hub: Env) -> None:
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class LoginPage(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = b"<html><body>Proxy login</body></html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = ThreadingHTTPServer(("127.0.0.1", 0), LoginPage)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        for args in (["hub-list", "ns/repo"], ["hub-info", "ns/repo"]):
            r = lfs_hub.cli(*args, HF_ENDPOINT=url)
            assert r.returncode == 1, (args, r.stderr)
            assert "Traceback" not in r.stderr and "is not JSON" in r.stderr, r.stderr
    finally:
        server.shutdown()


def _answering(answers: Dict[str, bytes]) -> Any:
    """A loopback server answering each GET with the body of the first ``answers``
    key (a regex) that its path matches (404 when none does); ``.url``, ``.shutdown()``."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Canned(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            body = next((b for pattern, b in answers.items() if re.search(pattern, self.path)), None)
            self.send_response(404 if body is None else 200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Canned)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}"  # type: ignore[attr-defined]
    return server


@pytest.mark.parametrize(
    "info, tree",
    [
        (b"{}", b'[{"type": "file"}]'),  # no repo id; a tree entry without a path
        (b"null", b"null"),
        (b'{"id": "ns/repo", "siblings": [{"rfilename": 5}]}', b'[{"type": "file", "path": 5}]'),
        (b'{"id": "ns/repo", "downloads": "lots"}', b'[{"path": "a.deathtensors"}]'),
        (b'{"id": 5}', b'{"not": "a list"}'),
    ],
)
def test_malformed_answers_are_hub_errors_naming_the_server(lfs_hub: Env, info: bytes, tree: bytes) -> None:
    """Regression: a repo-info or tree answer without what a Hub sends raised a
    raw KeyError/TypeError/AttributeError (a traceback and exit 2 from the CLI),
    or was handed on as it was ("downloads": "lots")."""
    server = _answering({r"/tree/": tree, r"^/api/models/ns/repo": info})
    try:
        for args in (["hub-info", "ns/repo"], ["hub-list", "ns/repo"]):
            r = lfs_hub.cli(*args, HF_ENDPOINT=server.url)
            assert r.returncode == 1, (args, r.stdout, r.stderr)
            assert "Traceback" not in r.stderr and "not what a Hugging Face Hub sends" in r.stderr, (args, r.stderr)
            assert server.url in r.stderr, r.stderr
    finally:
        server.shutdown()


def test_an_html_answer_names_the_endpoint_asked_not_hf_endpoint(lfs_hub: Env) -> None:
    """Regression: with endpoint= given, the "not JSON" error asked whether
    HF_ENDPOINT's server (never contacted) was a Hub."""
    server = _answering({r".": b"<html>Proxy login</html>"})
    try:
        got = lfs_hub.result(
            f"""
            try:
                hub_model_info("ns/repo", endpoint={server.url!r})
            except dt.HubError as e:
                out(str(e))
            """
        )
        assert f"is {server.url} a Hugging Face Hub?" in got and lfs_hub.server.url not in got, got
    finally:
        server.shutdown()


def test_a_file_size_or_commit_a_server_cannot_mean_is_a_hub_error(lfs_hub: Env) -> None:
    """Regression: a Content-Range total of 5,000 digits raised a raw ValueError
    (Python's limit on converting long digit strings), and an X-Repo-Commit
    such as ".." went into URLs and cache paths."""
    from deathtensors.huggingface import _total_size

    with pytest.raises(dt.HubError, match="no file size"):
        _total_size("bytes 0-0/" + "9" * 5000, 206, None)
    with pytest.raises(dt.HubError, match="no file size"):
        _total_size(None, 200, "9" * 5000)
    with pytest.raises(dt.HubError, match="no file can have"):
        _total_size("bytes 0-0/" + "9" * 20, 206, None)
    got = lfs_hub.result(
        """
        import dataclasses
        import huggingface_hub
        real = huggingface_hub.get_hf_file_metadata
        def hostile(*args, **kwargs):
            return dataclasses.replace(real(*args, **kwargs), commit_hash="..")
        huggingface_hub.get_hf_file_metadata = hostile
        dt.save(os.path.join(sys.argv[1], "m.deathtensors"), {"a": np.zeros(2)})
        push_to_hub("ns/m", os.path.join(sys.argv[1], "m.deathtensors"))
        try:
            HubCachedFile("ns/m", "m.deathtensors").header()
        except dt.HubError as e:
            out(str(e))
        """
    )
    assert "no valid commit" in got and "'..'" in got, got


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak RSS reset")
def test_a_remote_tensor_read_peaks_at_about_twice_its_size(lfs_hub: Env) -> None:
    # The body went through a growing bytearray, a slice, bytes() and a Vec before the
    # tensor's own buffer: about four times the tensor at the peak.
    mib = 64
    local = lfs_hub.files / "big.deathtensors"
    dt.save(str(local), {"a": np.arange(mib * 1024 * 1024 // 4, dtype=np.float32)})
    lfs_hub.server.add_repo("ns/big", files={"big.deathtensors": local.read_bytes()})
    got = lfs_hub.result(
        """
        def status(key):
            with open("/proc/self/status") as s:
                return next(int(line.split()[1]) for line in s if line.startswith(key)) * 1024
        f = HubCachedFile("ns/big", "big.deathtensors")
        f.keys()
        with open("/proc/self/clear_refs", "w") as c:
            c.write("5")
        base = status("VmRSS")
        a = f.get_tensor("a", framework="numpy")
        out({"grown": status("VmHWM") - base, "ok": bool((a == np.arange(a.size, dtype=np.float32)).all()),
             "cached": f.cached_path is not None})
        """
    )
    assert got["ok"] and not got["cached"]
    assert got["grown"] < 2.5 * mib * 2**20, f"peak grew by {got['grown'] / 2**20:.0f} MiB for a {mib} MiB tensor"


def test_private_repos_are_created_private_and_urls_are_quoted(lfs_hub: Env) -> None:
    # The test server read "private", which huggingface_hub 1.x no longer sends ("visibility"),
    # so private=True was never exercised. Revisions with a slash and odd file names
    # appeared in the returned URL unquoted.
    local = lfs_hub.files / "model.deathtensors"
    dt.save(str(local), model())
    got = lfs_hub.result(
        """
        out(push_to_hub("ns/secret", sys.argv[1] + "/model.deathtensors", "sp ace#1.deathtensors", private=True))
        """
    )
    assert got == f"{lfs_hub.server.url}/ns/secret/blob/main/sp%20ace%231.deathtensors"
    assert lfs_hub.server.repo("ns/secret").private
    anonymous = lfs_hub.py(
        """
        from deathtensors.errors import HubRepoNotFoundError
        try:
            load_from_hub("ns/secret", "sp ace#1.deathtensors")
        except HubRepoNotFoundError:
            print("RESULT \\"hidden\\"")
        """,
        HF_TOKEN=None,
    )
    assert 'RESULT "hidden"' in anonymous.stdout, anonymous.stderr[-2000:]


def test_an_oversized_hub_index_is_refused_before_it_is_downloaded(lfs_hub: Env) -> None:
    from deathtensors._sharded import MAX_INDEX_BYTES

    huge = b'{"metadata": {}, "weight_map": {}}' + b" " * MAX_INDEX_BYTES
    lfs_hub.server.add_repo("ns/huge-index", files={"m.deathtensors.index.json": huge})
    lfs_hub.server.clear_log()
    got = lfs_hub.result(
        """
        try:
            load_sharded_from_hub("ns/huge-index", "m.deathtensors")
        except dt.FormatError as e:
            out(str(e))
        """
    )
    assert "over the limit" in got and "nothing was downloaded" in got
    assert not resolve_gets(lfs_hub.server), "the index was downloaded anyway"


def test_an_empty_or_tiny_remote_file_is_a_format_error_as_it_is_locally(lfs_hub: Env) -> None:
    # The empty file's range read was answered 416, which surfaced as a HubError.
    lfs_hub.server.add_repo("ns/e", files={"empty.deathtensors": b"", "tiny.deathtensors": b"DTLEGION"})
    got = lfs_hub.result(
        """
        kinds = []
        for name in ("empty.deathtensors", "tiny.deathtensors"):
            try:
                hub_file_info("ns/e", name)
            except dt.FormatError as e:
                kinds.append("FormatError")
            except Exception as e:
                kinds.append(type(e).__name__)
        out(kinds)
        """
    )
    assert got == ["FormatError", "FormatError"]


# -- the cache when the Hub fails, names outside the repo, refused tokens -------------------------------


def test_cli_offline_pull_of_a_sharded_checkpoint_by_its_base_name(lfs_hub: Env) -> None:
    """Regression: offline, the single-file attempt failed "not in the cache"
    and the sharded checkpoint (cached) was never tried."""
    dt.save_sharded(str(lfs_hub.files / "big.deathtensors"), model(4), max_shard_bytes=1000)
    assert lfs_hub.cli("hub-push", "ns/shp", "big.deathtensors").returncode == 0
    online = lfs_hub.cli("hub-pull", "ns/shp", "big.deathtensors", "--json")
    assert online.returncode == 0, online.stderr
    offline = lfs_hub.cli("hub-pull", "ns/shp", "big.deathtensors", "--json", HF_HUB_OFFLINE="1")
    assert offline.returncode == 0, offline.stderr
    assert json.loads(offline.stdout)["paths"] == json.loads(online.stdout)["paths"]
    never = lfs_hub.cli("hub-pull", "ns/shp", "other.deathtensors", HF_HUB_OFFLINE="1")
    assert never.returncode == 1 and "cache" in never.stderr and "Traceback" not in never.stderr


@pytest.mark.parametrize("down", ["500", "stopped"])
def test_a_sharded_load_uses_the_cache_when_the_hub_is_down(lfs_hub: Env, down: str) -> None:
    """Regression: the index's size check asked the Hub first and had no
    fallback, so a warm cache served single files but not checkpoints."""
    tensors = model(5)
    dt.save_sharded(str(lfs_hub.files / "s.deathtensors"), tensors, max_shard_bytes=1000)
    lfs_hub.py(
        """
        push_sharded_to_hub("ns/down", sys.argv[1] + "/s.deathtensors")
        with load_sharded_from_hub("ns/down", "s.deathtensors") as sr:
            sr.get_tensor("weight", framework="numpy")
        """
    )
    if down == "500":
        for method in ("HEAD", "GET"):
            lfs_hub.server.fail(method, "/resolve/", 500)
    else:
        lfs_hub.server.stop()
    got = lfs_hub.result(
        """
        with load_sharded_from_hub("ns/down", "s.deathtensors") as sr:
            cached = digest(sr.get_tensor("weight", framework="numpy"))
        try:
            load_sharded_from_hub("ns/down", "never.deathtensors")
            missing = None
        except dt.HubError as e:
            missing = type(e).__name__
        out({"cached": cached, "missing": missing})
        """,
        HF_HUB_DOWNLOAD_TIMEOUT="2",
        HF_HUB_ETAG_TIMEOUT="2",
    )
    assert got["cached"] == digests(tensors)["weight"]
    assert got["missing"] == "HubConnectionError", got  # an outage, as a lost connection is


def test_names_outside_the_repo_are_refused_before_any_request(lfs_hub: Env) -> None:
    """Regression: ``..`` in a name to read was a bare ValueError (a traceback
    in the CLI), after a request, with the token, to a URL outside the repo."""
    lfs_hub.server.add_repo("ns/names", files={"m.deathtensors": _file_bytes(lfs_hub.files / "m.dt", 1)})
    lfs_hub.server.clear_log()
    got = lfs_hub.result(
        """
        seen = {}
        for name in ["../x.deathtensors", "a/../../x.deathtensors", "", "/", ".git/config"]:
            for call, fn in [
                ("load", lambda: load_from_hub("ns/names", name)),
                ("sharded", lambda: load_sharded_from_hub("ns/names", name)),
                ("remote", lambda: HubCachedFile("ns/names", name).header()),
                ("convert", lambda: convert_safetensors_on_hub("ns/names", name)),
            ]:
                try:
                    fn()
                    seen[call + " " + name] = None
                except Exception as e:
                    seen[call + " " + name] = type(e).__name__
        with load_from_hub("ns/names", "/m.deathtensors") as f:  # a leading slash is dropped
            keys = f.keys()
        out({"seen": seen, "keys": keys})
        """
    )
    assert set(got["seen"].values()) == {"InvalidArgumentError"}, got["seen"]
    assert sorted(got["keys"]) == sorted(model(1))
    assert [r["path"] for r in lfs_hub.server.log if "/resolve/" in r["path"]] == [
        "/ns/names/resolve/main/m.deathtensors"
    ] * 2  # the HEAD and GET of the one good name
    for command in (["hub-pull", "ns/names", "../x.deathtensors"], ["hub-info", "ns/names", "a/../../x.deathtensors"]):
        bad = lfs_hub.cli(*command)
        assert bad.returncode == 2, bad.stderr
        assert "Traceback" not in bad.stderr and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


def test_a_refused_token_is_a_hub_auth_error_for_reads_and_writes(lfs_hub: Env) -> None:
    """Regression: a write refused with 401/403 was a HubUploadError, and a read
    refused with 403 a HubConnectionError saying "offline mode or no connection"."""
    dt.save(lfs_hub.files / "m.deathtensors", model(6))
    lfs_hub.py('push_to_hub("ns/auth", sys.argv[1] + "/m.deathtensors")')
    for status in (401, 403):
        lfs_hub.server.failures.clear()
        for path in (r"/api/repos/create", r"/preupload/", r"/commit/", r"/info/lfs"):
            lfs_hub.server.fail("POST", path, status)
        wrote = lfs_hub.result(
            """
            try:
                push_to_hub("ns/auth", sys.argv[1] + "/m.deathtensors", path_in_repo="n.deathtensors")
                out(None)
            except dt.HubError as e:
                out([type(e).__name__, str(e)])
            """
        )
        assert wrote[0] == "HubAuthError" and "unchanged" in wrote[1] and str(status) in wrote[1], wrote
        assert "n.deathtensors" not in lfs_hub.server.files("ns/auth")
        lfs_hub.server.failures.clear()
        for method in ("HEAD", "GET"):
            lfs_hub.server.fail(method, "/resolve/", status)
        read = lfs_hub.result(
            """
            try:
                load_from_hub("ns/auth", "m.deathtensors")
                out(None)
            except dt.HubError as e:
                out([type(e).__name__, str(e)])
            """
        )
        assert read[0] == "HubAuthError" and "offline" not in read[1], read
    lfs_hub.server.failures.clear()


def test_a_download_of_the_wrong_size_is_a_connection_error(lfs_hub: Env) -> None:
    """Regression: a body shorter than the size the Hub announced was a bare OSError."""
    dt.save(lfs_hub.files / "m.deathtensors", model(7), checksum=True)
    lfs_hub.py('push_to_hub("ns/short", sys.argv[1] + "/m.deathtensors")')
    lfs_hub.server.tamper = lambda path, body: body[:-100]
    got = lfs_hub.result(
        """
        try:
            load_from_hub("ns/short", "m.deathtensors")
            out(None)
        except Exception as e:
            out([type(e).__name__, isinstance(e, dt.HubError), str(e)])
        """
    )
    assert got[:2] == ["HubConnectionError", True] and "size" in got[2], got
    pulled = lfs_hub.cli("hub-pull", "ns/short", "m.deathtensors")
    assert pulled.returncode == 1 and len(pulled.stderr.strip().splitlines()) == 1, pulled.stderr
    lfs_hub.server.tamper = None
    assert lfs_hub.cli("hub-pull", "ns/short", "m.deathtensors", "--verify").returncode == 0


def test_a_damaged_cached_copy_is_named_and_force_download_replaces_it(lfs_hub: Env) -> None:
    """A download damaged in transit (same size) stays in the shared cache;
    verify says so, and force_download fetches it anew (there was no way to)."""
    tensors = model(8)
    dt.save(lfs_hub.files / "m.deathtensors", tensors, checksum=True)
    lfs_hub.py('push_to_hub("ns/bad", sys.argv[1] + "/m.deathtensors")')

    def flip(path: str, body: bytes) -> bytes:
        damaged = bytearray(body)
        damaged[len(body) // 2] ^= 0xFF
        return bytes(damaged)

    lfs_hub.server.tamper = flip
    lfs_hub.py('load_from_hub("ns/bad", "m.deathtensors").close()')  # the damaged copy is cached
    lfs_hub.server.tamper = None
    code = """
        try:
            with load_from_hub("ns/bad", "m.deathtensors", verify=True, force_download=FORCE) as f:
                out({k: digest(f.get_tensor(k, framework="numpy")) for k in f.keys()})
        except dt.ChecksumError as e:
            out(str(e))
        """
    cached = lfs_hub.result(code.replace("FORCE", "False"))
    assert isinstance(cached, str) and "force_download=True" in cached, cached
    pulled = lfs_hub.cli("hub-pull", "ns/bad", "m.deathtensors", "--verify")
    assert pulled.returncode == 1 and "--force-download" in pulled.stderr, pulled.stderr
    forced = lfs_hub.cli("hub-pull", "ns/bad", "m.deathtensors", "--verify", "--force-download")
    assert forced.returncode == 0, forced.stderr
    assert lfs_hub.result(code.replace("FORCE", "False")) == digests(tensors)
    assert lfs_hub.result(code.replace("FORCE", "True")) == digests(tensors)
