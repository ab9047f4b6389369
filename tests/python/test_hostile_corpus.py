"""Hostile corpus: crafted files opened end to end, each in a fresh process under limits.

Every case is built here from :func:`_dtutil.build_file` (no binaries are
committed), then opened in a new ``python`` process that first warms up the
library on a valid file (thread pool, codecs, hashes), then caps its address
space at the warmed-up size + :data:`ADDRESS_SPACE_CAP` with ``RLIMIT_AS``,
resets its peak RSS, and opens the case: ``dt.open(path)``,
``get_bytes`` of every tensor then ``verify`` when it has a footer, or ``dt.open_sharded(index, verify=True)`` and
``info`` of every tensor. Each case must be refused with its exact error class
and a message saying what is wrong, within :data:`SECONDS` (a hang check, not
a benchmark), with peak RSS growth within :data:`RSS_SLACK` plus twice the
bytes the case wrote (Rust allocations included, which tracemalloc misses).

The rule tests themselves live in tests/rust/hostile.rs and
test_lazy_and_safety.py (which also checks that no eval/exec/pickle runs);
this file is the end-to-end, time- and memory-bounded check.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import pytest
from _dtutil import FLAG_CHECKSUM, FLAG_COMPRESSED, FLAG_ENCRYPTED, build_file, layout, tensor_entry

import deathtensors as dt
from deathtensors import _core

np = pytest.importorskip("numpy")

SECONDS = 1.0
ADDRESS_SPACE_CAP = 256 << 20
RSS_SLACK = 8 << 20
MAX_CHUNK = 64 << 20
#: The most raw bytes zstd can make of one stored byte; the reader refuses chunk tables that claim more.
ZSTD_MAX_EXPANSION = 32768
ZSTD = {"codec": "zstd", "level": 3}
LZ4 = {"codec": "lz4", "level": 0}
FOUR = b"\x01\x02\x03\x04"

RUNNER = textwrap.dedent(
    """
    import json, os, resource, sys, time
    import deathtensors as dt

    kind, path, warm, cap = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])

    def status(key):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise KeyError(key)

    with dt.open(warm, verify=True) as f:
        for name in f.keys():
            f.get_bytes(name)
    limit = status("VmSize") + cap
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    base = status("VmRSS")
    opened = []
    # os.open raises the event with the path; open(fd) (os.fdopen) with the fd, skipped.
    sys.addaudithook(
        lambda event, args: opened.append(os.fsdecode(args[0]))
        if event == "open" and isinstance(args[0], (str, bytes))
        else None
    )
    start = time.perf_counter()
    try:
        if kind == "file":
            with dt.open(path) as f:
                for name in f.keys():
                    f.get_bytes(name)
                if f.has_checksum():
                    f.verify()
        else:
            with dt.open_sharded(path, verify=True) as sr:
                for name in sr.keys():
                    sr.info(name)
        out = {"error": None}
    except BaseException as e:
        out = {"error": type(e).__name__, "module": type(e).__module__, "message": str(e)}
    out["seconds"] = time.perf_counter() - start
    out["rss_growth"] = status("VmHWM") - base
    out["opened"] = [p for p in opened if isinstance(p, str)]
    print(json.dumps(out))
    """
)


def run_hostile(kind: str, path: Path, warm: Path) -> Dict[str, Any]:
    """Open ``path`` in a fresh, limited process; what it raised, how long it took, its RSS growth."""
    proc = subprocess.run(
        [sys.executable, "-c", RUNNER, kind, str(path), str(warm), str(ADDRESS_SPACE_CAP)],
        capture_output=True,
        text=True,
        timeout=30,  # a FIFO opened by mistake blocks forever: this ends it
        check=False,
    )
    assert proc.returncode == 0, f"the process died ({proc.returncode}): {proc.stderr[-2000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def warm_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("warm") / "warm.deathtensors"
    dt.save(
        path,
        {"w": np.arange(4096, dtype=np.float32), "b": np.arange(300, dtype=np.int64)},
        compress=True,
        checksum=True,
    )
    return path


@pytest.fixture(scope="module")
def frame_bombs(tmp_path_factory) -> Dict[str, bytes]:
    """One codec unit per codec that expands to 64 MiB of zeros, made by the library's own writer."""
    out = {}
    base = tmp_path_factory.mktemp("bombs")
    zeros = np.zeros(MAX_CHUNK, dtype=np.uint8)
    for codec in ("zstd", "lz4"):
        path = base / f"{codec}.deathtensors"
        rows = dt._rows(dt._entries({"z": zeros}), None)
        _core.save(str(path), rows, codec=codec, chunk_bytes=MAX_CHUNK, durable=False)
        lay = layout(path)
        [chunk] = lay.tensor("z")["chunks"]
        assert chunk[2] == MAX_CHUNK and chunk[1] < MAX_CHUNK // 100, chunk
        out[codec] = lay.stored("z")
    return out


# -- the corpus ------------------------------------------------------------------------------------


@dataclass
class Case:
    """A crafted file: ``build(folder)`` writes it and returns the path to open."""

    build: Callable[[Path], Path]
    error: str  # the exact class name in deathtensors.errors
    fragment: str  # a piece of the message that says what is wrong
    kind: str = "file"


def _file(data: bytes) -> Callable[[Path], Path]:
    def build(folder: Path) -> Path:
        path = folder / "hostile.deathtensors"
        path.write_bytes(data)
        return path

    return build


def _sparse(data: bytes, size: int) -> Callable[[Path], Path]:
    """``data`` at the start of a sparse file of ``size`` bytes (the rest is a hole)."""

    def build(folder: Path) -> Path:
        path = folder / "sparse.deathtensors"
        with open(path, "wb") as fh:
            fh.write(data)
            fh.truncate(size)
        return path

    return build


#: The data of :func:`_sparse_entries`: two F32 values, padding, two I64 indices.
SPARSE_DATA = struct.pack("<2f", 3.0, 4.0) + bytes(56) + struct.pack("<2q", 0, 1)


def _sparse_entries(shape: Sequence[int] = (4,)) -> List[Dict[str, Any]]:
    """A valid sparse COO tensor ``s`` (values, then its indices part), as save_sparse writes it."""
    layout = {"id": "sparse_coo", "shape": list(shape), "params": {"coalesced": True}, "parts": {"indices": "s/i"}}
    return [
        tensor_entry("s", dtype="F32", shape=[2], offsets=[0, 8], layout=layout),
        tensor_entry("s/i", dtype="I64", shape=[1, 2], offsets=[64, 80], part_of="s"),
    ]


def _alias_of(entry: Dict[str, Any]) -> Dict[str, Any]:
    """An entry ``b`` that is an alias of ``entry`` (same dtype, shape and offsets)."""
    return tensor_entry(
        "b", dtype=entry["dtype"], shape=entry["shape"], offsets=entry["offsets"], alias_of=entry["name"]
    )


def _compressed(tensor: Dict[str, Any], data: bytes, compression: Optional[Dict[str, Any]] = None) -> bytes:
    return build_file({"compression": compression or ZSTD, "tensors": [tensor]}, data, flags=FLAG_COMPRESSED)


def _footer(algorithm: str, flags: int = FLAG_CHECKSUM) -> bytes:
    """A file announcing an ``algorithm`` footer whose 32 bytes hash nothing."""
    return build_file({"checksum": algorithm, "tensors": [tensor_entry()]}, FOUR, flags=flags, footer=b"\x5a" * 32)


def _deep(open_text: str, close_text: str, n: int = 100_000) -> bytes:
    return build_file('{"metadata":{"x":' + open_text * n + "1" + close_text * n + '},"tensors":[]}')


CORPUS: Dict[str, Case] = {
    # header length
    "header-len-beyond-the-file": Case(_file(build_file({"tensors": []}, header_len=5000)), "FormatError", "truncated"),
    "header-len-u64-max": Case(
        _file(build_file({"tensors": []}, header_len=2**64 - 1)), "FormatError", "over the limit"
    ),
    "header-len-over-the-limit-in-a-file-that-long": Case(
        _sparse(build_file({"tensors": []}, header_len=100_000_001), 100_000_100), "FormatError", "over the limit"
    ),
    # sizes
    "ten-to-the-12-elements": Case(
        _file(build_file({"tensors": [tensor_entry(dtype="F32", shape=[10**12], offsets=[0, 16])]}, bytes(16))),
        "FormatError",
        "4000000000000 bytes",
    ),
    "ten-to-the-12-elements-with-a-range-to-match": Case(
        _file(build_file({"tensors": [tensor_entry(dtype="F32", shape=[10**12], offsets=[0, 4 * 10**12])]}, bytes(16))),
        "FormatError",
        "outside the data region",
    ),
    "ten-to-the-12-elements-compressed": Case(
        _file(_compressed(tensor_entry(shape=[10**12], chunks=[[0, 4, 4 * ZSTD_MAX_EXPANSION]]), FOUR)),
        "FormatError",
        "chunks decode to",
    ),
    "shape-product-overflows-u64": Case(
        _file(build_file({"tensors": [tensor_entry(shape=[2**32, 2**32])]}, FOUR)), "FormatError", "overflows 64 bits"
    ),
    "shape-product-overflows-before-a-zero": Case(
        _file(build_file({"tensors": [tensor_entry(shape=[2**63, 4, 0], offsets=[0, 0])]})),
        "FormatError",
        "overflows 64 bits",
    ),
    "shape-u64-max-times-item-size": Case(
        _file(build_file({"tensors": [tensor_entry(dtype="C128", shape=[2**64 - 1])]}, FOUR)),
        "FormatError",
        "overflows 64 bits",
    ),
    # Empty, but with dimensions no framework can index (torch and numpy raised
    # their own TypeError/ValueError/RuntimeError on these before).
    "empty-with-a-dimension-past-i64": Case(
        _file(build_file({"tensors": [tensor_entry(dtype="F32", shape=[0, 2**63], offsets=[0, 0])]})),
        "FormatError",
        "63 bits",
    ),
    "empty-with-strides-past-i64": Case(
        _file(build_file({"tensors": [tensor_entry(dtype="F32", shape=[0, 2**40, 2**40], offsets=[0, 0])]})),
        "FormatError",
        "63 bits",
    ),
    "sparse-shape-past-i64": Case(
        _file(build_file({"tensors": _sparse_entries(shape=[2**64 - 1])}, SPARSE_DATA)),
        "FormatError",
        "63 bits",
    ),
    # aliases of non-dense tensors (format spec §3.5 forbids them; get_tensors raised KeyError)
    "alias-of-a-sparse-part": Case(
        _file(build_file({"tensors": [*_sparse_entries(), _alias_of(_sparse_entries()[1])]}, SPARSE_DATA)),
        "FormatError",
        "non-dense tensor or a part",
    ),
    "alias-of-a-sparse-tensor": Case(
        _file(build_file({"tensors": [*_sparse_entries(), _alias_of(_sparse_entries()[0])]}, SPARSE_DATA)),
        "FormatError",
        "non-dense tensor or a part",
    ),
    # byte ranges
    "overlapping-ranges": Case(
        _file(build_file({"tensors": [tensor_entry("a"), tensor_entry("b", dtype="I8")]}, FOUR)),
        "FormatError",
        'overlaps tensor "a"',
    ),
    "range-end-u64-max": Case(
        _file(build_file({"tensors": [tensor_entry(offsets=[0, 2**64 - 1])]}, FOUR)), "FormatError", "outside the data"
    ),
    "range-reversed": Case(
        _file(build_file({"tensors": [tensor_entry(offsets=[4, 0])]}, FOUR)), "FormatError", "outside the data"
    ),
    "range-past-the-end": Case(
        _file(build_file({"tensors": [tensor_entry(offsets=[2**40, 2**40 + 4])]}, FOUR)),
        "FormatError",
        "outside the data",
    ),
    # decompression bombs: tables claiming a huge raw size
    "chunk-table-of-1000-times-64-MiB": Case(
        _file(
            _compressed(
                tensor_entry(shape=[8], offsets=[0, 1000], chunks=[[i, 1, MAX_CHUNK] for i in range(1000)]), bytes(1000)
            )
        ),
        "FormatError",
        "the codec expands at most 32768x",
    ),
    "chunk-raw-length-over-64-MiB": Case(
        _file(_compressed(tensor_entry(shape=[2**40], chunks=[[0, 4, 2**40]]), FOUR)), "FormatError", "raw length"
    ),
    "chunk-raw-length-u64-max": Case(
        _file(_compressed(tensor_entry(shape=[8], chunks=[[0, 4, 2**64 - 1]]), FOUR)), "FormatError", "raw length"
    ),
    # text of the header
    "invalid-utf8-in-metadata": Case(
        _file(build_file(b'{"metadata":{"a":"\xff\xfe"},"tensors":[]}')), "FormatError", "invalid header"
    ),
    "invalid-utf8-in-a-name": Case(
        _file(build_file(b'{"tensors":[{"name":"\xc0\xaf","dtype":"U8","shape":[0],"offsets":[0,0]}]}')),
        "FormatError",
        "invalid header",
    ),
    "utf16-surrogate-escape": Case(
        _file(build_file('{"metadata":{"a":"\\ud800"},"tensors":[]}')), "FormatError", "invalid header"
    ),
    "deeply-nested-arrays": Case(_file(_deep("[", "]")), "FormatError", "recursion limit"),
    "deeply-nested-objects": Case(_file(_deep('{"a":', "}")), "FormatError", "recursion limit"),
    "unclosed-nesting": Case(_file(build_file('{"metadata":{"x":' + "[" * 100_000)), "FormatError", "invalid header"),
    "duplicate-top-level-keys": Case(
        _file(build_file('{"tensors":[],"tensors":[]}')), "FormatError", 'duplicate key "tensors"'
    ),
    "duplicate-keys-deep-in-metadata": Case(
        _file(build_file('{"metadata":{"x":[{"y":{"z":1,"\\u007a":2}}]},"tensors":[]}')),
        "FormatError",
        'duplicate key "z"',
    ),
    "duplicate-tensor-names": Case(
        _file(build_file({"tensors": [tensor_entry(), tensor_entry(offsets=[64, 68])]}, FOUR + bytes(60) + FOUR)),
        "FormatError",
        "twice",
    ),
    "nan-in-metadata": Case(_file(build_file('{"metadata":{"a":NaN},"tensors":[]}')), "FormatError", "invalid header"),
    "infinity-in-metadata": Case(
        _file(build_file('{"metadata":{"a":-Infinity},"tensors":[]}')), "FormatError", "invalid header"
    ),
    "number-overflowing-a-double": Case(
        _file(build_file('{"metadata":{"a":1e999},"tensors":[]}')), "FormatError", "invalid header"
    ),
    "nan-as-a-dimension": Case(
        _file(build_file('{"tensors":[{"name":"a","dtype":"U8","shape":[NaN],"offsets":[0,4]}]}', FOUR)),
        "FormatError",
        "invalid header",
    ),
    # what follows the data
    "trailing-bytes": Case(
        _file(build_file({"tensors": [tensor_entry()]}, FOUR + b"junk")), "FormatError", "4 trailing bytes"
    ),
    "sha256-footer-that-does-not-match": Case(_file(_footer("sha256")), "ChecksumError", "checksum mismatch (sha256)"),
    "blake3-footer-that-does-not-match": Case(_file(_footer("blake3")), "ChecksumError", "checksum mismatch (blake3)"),
    "footer-flag-without-footer-bytes": Case(
        _file(build_file({"checksum": "sha256", "tensors": []}, flags=FLAG_CHECKSUM)), "FormatError", "truncated"
    ),
    # flags
    "encryption-flag": Case(
        _file(build_file({"tensors": [tensor_entry()]}, FOUR, flags=FLAG_ENCRYPTED)), "EncryptedFileError", "encryption"
    ),
    "encryption-flag-with-every-other-bit": Case(
        _file(_footer("sha256", flags=0xFFFFFFFF)), "EncryptedFileError", "encryption"
    ),
}


@pytest.mark.parametrize("name", list(CORPUS))
def test_hostile_file_is_refused_quickly_in_bounded_memory(tmp_path, warm_file, name):
    case = CORPUS[name]
    path = case.build(tmp_path)
    result = run_hostile(case.kind, path, warm_file)
    assert (result["module"], result["error"]) == ("deathtensors.errors", case.error), result
    assert case.fragment in result["message"], result
    assert result["seconds"] < SECONDS, result
    written = sum(p.stat().st_blocks * 512 for p in tmp_path.rglob("*") if p.is_file())
    assert result["rss_growth"] <= RSS_SLACK + 2 * written, result


@pytest.mark.parametrize("codec, raw_len", [("zstd", 4096), ("lz4", 1 << 19)])
def test_codec_unit_expanding_past_its_raw_length_is_corrupt(tmp_path, warm_file, frame_bombs, codec, raw_len):
    # One codec unit that holds 64 MiB of zeros, declared as a small chunk: decoding
    # must stop at the declared raw length, not trust the size inside the codec's data.
    stored = frame_bombs[codec]
    assert len(stored) <= raw_len
    entry = tensor_entry(shape=[raw_len], offsets=[0, len(stored)], chunks=[[0, len(stored), raw_len]])
    path = tmp_path / "bomb.deathtensors"
    path.write_bytes(_compressed(entry, stored, ZSTD if codec == "zstd" else LZ4))
    result = run_hostile("file", path, warm_file)
    assert (result["module"], result["error"]) == ("deathtensors.errors", "FormatError"), result
    assert 'tensor "a": chunk 0' in result["message"] and "is corrupt" in result["message"], result
    assert result["seconds"] < SECONDS, result
    assert result["rss_growth"] <= RSS_SLACK + 2 * path.stat().st_size, result


def _consistent_table(folder: Path, stored_per_chunk: int) -> Path:
    """A table that adds up: 2 chunks of 64 MiB, each stored as ``stored_per_chunk`` garbage bytes."""
    n = stored_per_chunk
    entry = tensor_entry(shape=[2 * MAX_CHUNK], offsets=[0, 2 * n], chunks=[[0, n, MAX_CHUNK], [n, n, MAX_CHUNK]])
    path = folder / "consistent.deathtensors"
    path.write_bytes(_compressed(entry, (b"\x28\xb5\x2f\xfd" * n)[: 2 * n]))
    return path


def test_consistent_chunk_table_bomb_is_refused_at_open_in_memory_bounded_by_the_file_size(tmp_path, warm_file):
    # 64 MiB from 4 bytes is more than zstd can expand: refused before anything is allocated.
    path = _consistent_table(tmp_path, 4)
    result = run_hostile("file", path, warm_file)
    assert (result["module"], result["error"]) == ("deathtensors.errors", "FormatError"), result
    assert "the codec expands at most 32768x" in result["message"], result
    assert result["seconds"] < SECONDS, result
    assert result["rss_growth"] <= RSS_SLACK + 2 * path.stat().st_size, result


def test_a_table_within_the_codec_bound_fails_cleanly_when_read(tmp_path, warm_file):
    # 64 MiB from 2048 bytes is possible for zstd, so the file opens; its garbage fails on
    # the first chunk. Memory is bounded by what the codec could make of the file's bytes.
    path = _consistent_table(tmp_path, MAX_CHUNK // ZSTD_MAX_EXPANSION)
    result = run_hostile("file", path, warm_file)
    assert (result["module"], result["error"]) == ("deathtensors.errors", "FormatError"), result
    assert "is corrupt" in result["message"], result
    assert result["seconds"] < SECONDS, result
    assert result["rss_growth"] <= RSS_SLACK + ZSTD_MAX_EXPANSION * path.stat().st_size, result


# -- sharded indexes pointing outside their folder -------------------------------------------------


def _checkpoint(tmp_path: Path, target: str) -> Path:
    """A folder with one valid shard and an index that also names ``target``."""
    folder = tmp_path / "model"
    folder.mkdir()
    dt.save(folder / "m-00001-of-00001.deathtensors", {"ok": np.ones(2, dtype=np.float32)})
    index = folder / "m.deathtensors.index.json"
    index.write_text(json.dumps({"weight_map": {"ok": "m-00001-of-00001.deathtensors", "evil": target}}))
    return index


def _outside(tmp_path: Path, fifo: bool) -> Path:
    """A file outside the checkpoint's folder: a valid deathtensors file, or a FIFO that blocks whoever opens it."""
    (tmp_path / "outside").mkdir()
    target = tmp_path / "outside" / "evil.deathtensors"
    if fifo:
        os.mkfifo(target)
    else:
        dt.save(target, {"evil": np.zeros(2, dtype=np.float32)})
    return target


@pytest.mark.parametrize(
    "target, fragment",
    [
        ("../../etc/passwd", "contains a path separator"),
        ("/etc/passwd", "contains a path separator"),
        ("../outside/evil.deathtensors", "contains a path separator"),
        ("{abs}", "contains a path separator"),
        ("..\\outside\\evil.deathtensors", "contains a path separator"),
    ],
)
@pytest.mark.parametrize("fifo", [False, True], ids=["valid-target", "fifo-target"])
def test_sharded_index_pointing_outside_its_folder_is_refused(tmp_path, warm_file, target, fragment, fifo):
    outside = _outside(tmp_path, fifo)
    target = target.replace("{abs}", str(outside))
    index = _checkpoint(tmp_path, target)
    result = run_hostile("sharded", index, warm_file)  # a FIFO opened for reading would hang here
    assert (result["module"], result["error"]) == ("deathtensors.errors", "FormatError"), result
    # The shard name as JSON quotes it (controls escaped): one safe line.
    assert fragment in result["message"] and json.dumps(target, ensure_ascii=False) in result["message"], result
    assert result["seconds"] < SECONDS, result
    assert result["rss_growth"] <= RSS_SLACK + 2 * index.stat().st_size, result
    outside_dir = str(tmp_path / "outside")
    assert not [p for p in result["opened"] if p.startswith(outside_dir) or p.endswith("passwd")], result["opened"]
    # The checkpoint itself is fine without the hostile entry.
    index.write_text(json.dumps({"weight_map": {"ok": "m-00001-of-00001.deathtensors"}}))
    with dt.open_sharded(index) as sr:
        assert sr.get_tensor("ok", framework="numpy").tolist() == [1.0, 1.0]


# -- found by review: each fails (or hangs) without its fix ----------------------------------------------


def test_many_parts_listed_in_reverse_open_in_linear_time(tmp_path, warm_file):
    """Regression: checking each ``part_of`` entry scanned its owner's whole
    ``parts`` map, so a 6 MB header of 60,000 parts took 6.4 s to refuse (and
    the 100 MB limit allowed far worse); it is one lookup now (0.4 s)."""
    m = 60_000
    parts = [tensor_entry(f"p{i}", shape=[0], offsets=[0, 0], part_of="s") for i in range(m)]
    layout_ = {"id": "sparse_coo", "shape": [4], "params": {}, "parts": {f"k{i}": f"p{m - 1 - i}" for i in range(m)}}
    owner = tensor_entry("s", dtype="F32", shape=[0], offsets=[0, 0], layout=layout_)
    path = tmp_path / "parts.deathtensors"
    path.write_bytes(build_file({"tensors": [*parts, owner]}))
    result = run_hostile("file", path, warm_file)
    assert (result["module"], result["error"]) == ("deathtensors.errors", "FormatError"), result
    assert "needs parts" in result["message"] and result["seconds"] < 3.0, result


def test_a_sparse_tensor_named_with_the_empty_string_reads_back(tmp_path):
    """Regression: ``part_of: ""`` was taken for "no owner", so the indices part
    was listed as a tensor and reading the sparse tensor raised KeyError."""
    entries = _sparse_entries()
    entries[0]["name"] = ""
    entries[1]["part_of"] = ""
    path = tmp_path / "empty-name.deathtensors"
    path.write_bytes(build_file({"tensors": entries}, SPARSE_DATA))
    with dt.open(path) as f:
        assert f.keys() == [""]
        got = f.get_tensor("")
        assert got.is_sparse and got.to_dense().tolist() == [3.0, 4.0, 0.0, 0.0]
        assert list(f.get_tensors()) == [""]


def test_slicing_a_huge_empty_tensor_does_not_walk_its_rows(tmp_path):
    """Regression: ``get_slice(name)[:]`` took the min and max of a Python range
    of all rows, and ``[::2]`` built a list of them: hours (and gigabytes) for
    a 192-byte file declaring 2**40 rows of nothing."""
    path = tmp_path / "rows.deathtensors"
    path.write_bytes(build_file({"tensors": [tensor_entry(dtype="F32", shape=[2**40, 0], offsets=[0, 0])]}))
    code = textwrap.dedent(
        f"""
        import deathtensors as dt
        s = dt.open({str(path)!r}).get_slice("a")
        assert tuple(s[:].shape) == (2**40, 0)
        assert tuple(s[::2].shape) == (2**39, 0)
        assert tuple(s[::-3].shape) == ((2**40 + 2) // 3, 0)
        assert tuple(s[5:2**39:7].shape) == (len(range(5, 2**39, 7)), 0)
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr


def test_a_fifo_named_like_an_index_or_a_manifest_does_not_block(tmp_path):
    """Regression: opening them waited for a writer, forever."""
    os.mkfifo(tmp_path / "m.deathtensors.index.json")
    os.mkfifo(tmp_path / "m.manifest.json")
    code = textwrap.dedent(
        f"""
        import deathtensors as dt
        for call in (lambda: dt.open_sharded({str(tmp_path / "m.deathtensors")!r}),
                     lambda: dt.read_manifest({str(tmp_path / "m.manifest.json")!r})):
            try:
                call()
            except dt.FormatError as e:
                assert "not a regular file" in str(e), e
            else:
                raise AssertionError("a FIFO was accepted")
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


def test_a_remote_file_claiming_a_huge_tensor_is_an_error_not_an_abort():
    """Regression: the stored bytes of a remote tensor were allocated with an
    infallible ``vec!``, so a server claiming a 2**61-byte file aborted the
    process (SIGABRT). Run in a child: the bug kills the process."""
    code = textwrap.dedent(
        """
        import json, struct
        from deathtensors import _core, errors
        n = 1 << 61
        text = json.dumps({"tensors": [{"name": "a", "dtype": "U8", "shape": [n], "offsets": [0, n]}]}).encode()
        text += b" " * ((-24 - len(text)) % 64)
        head = b"DTLEGION" + struct.pack("<IIQ", 1, 0, len(text)) + text
        fetch = lambda off, ln: (head + bytes(64))[off:off + ln]
        _core.read_header(len(head) + n, fetch)
        try:
            _core.read_remote_tensor(len(head) + n, fetch, "a")
        except errors.DeathtensorsError as e:
            print(type(e).__name__)
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "DeathtensorsError", (done.returncode, done.stderr[-500:])
