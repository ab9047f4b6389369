"""Zero-copy mmap and lazy row slices (issue #4 points 2 and 3)."""

from __future__ import annotations

import gc
import os

import numpy as np
import pytest
import torch

import deathtensors as dt
from deathtensors import _core
from deathtensors._frameworks import prepare


def _save_chunked(path, tensors, chunk_bytes, codec="zstd"):
    rows = [(name, *prepare(name, t), None) for name, t in tensors.items()]
    _core.save(str(path), rows, codec=codec, chunk_bytes=chunk_bytes)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------- mmap


def test_mmap_tensor_points_into_the_mapping(tmp_path):
    t = torch.arange(4096, dtype=torch.float32).reshape(64, 64)
    p = tmp_path / "m.deathtensors"
    dt.save(p, {"pad": torch.zeros(3), "t": t})
    with dt.open(p) as f:
        m = f.get_tensor_mmap("t")
        base, length = f._reader.map("t").mapping_range()
        info = f.info("t")
    assert torch.equal(m, t)
    assert base <= m.data_ptr() < base + length
    assert m.data_ptr() == base + info["file_offset"]  # no copy: the file's bytes, in place
    assert m.data_ptr() % 64 == 0


def test_mmap_writes_never_reach_the_file(tmp_path):
    t = torch.ones(256, 256)
    p = tmp_path / "m.deathtensors"
    dt.save(p, {"t": t})
    before = p.read_bytes()
    f = dt.open(p)
    m = f.get_tensor_mmap("t")
    m.mul_(7)
    assert float(m[0, 0]) == 7.0
    assert p.read_bytes() == before
    with dt.open(p) as g:
        assert torch.equal(g.get_tensor("t"), t)


def test_mmap_outlives_the_closed_file(tmp_path):
    t = torch.randn(128, 32)
    p = tmp_path / "m.deathtensors"
    dt.save(p, {"t": t})
    f = dt.open(p)
    m = f.get_tensor_mmap("t")
    arr = f.get_tensor_mmap("t", framework="numpy")
    f.close()
    del f
    gc.collect()
    os.remove(p)  # even the directory entry is gone
    assert torch.equal(m, t)
    np.testing.assert_array_equal(arr, t.numpy())


def test_mmap_of_a_compressed_file_says_to_use_get_tensor(tmp_path):
    p = tmp_path / "c.deathtensors"
    dt.save(p, {"t": torch.zeros(10)}, compress=True)
    with dt.open(p) as f, pytest.raises(dt.InvalidArgumentError, match="get_tensor"):
        f.get_tensor_mmap("t")


def test_mmap_every_dtype_and_empty(tmp_path):
    tensors = {
        "bf": torch.randn(5, 3).to(torch.bfloat16),
        "i64": torch.arange(7, dtype=torch.int64),
        "c": torch.randn(4, dtype=torch.complex64),
        "b": torch.tensor([True, False, True]),
        "e": torch.zeros(0, 4),
        "s": torch.tensor(2.5, dtype=torch.float64),
    }
    p = tmp_path / "m.deathtensors"
    dt.save(p, tensors)
    with dt.open(p) as f:
        for name, t in tensors.items():
            m = f.get_tensor_mmap(name)
            assert m.dtype == t.dtype and m.shape == t.shape, name
            assert torch.equal(m, t), name


def test_mapping_a_large_tensor_does_not_load_it(tmp_path):
    n = 1 << 30  # 1 GiB
    p = tmp_path / "big.deathtensors"
    dt.save(p, {"big": np.zeros(n, dtype=np.uint8)})  # calloc'd: saving it does not make it resident
    gc.collect()
    with dt.open(p) as f:
        before = _rss_bytes()
        m = f.get_tensor_mmap("big")
        grown = _rss_bytes() - before
        assert m.numel() == n
        assert grown < 64 << 20, f"RSS grew by {grown} bytes for a mapped 1 GiB tensor"
        assert int(m[n // 2]) == 0  # touching one page is fine


# ---------------------------------------------------------------- row slices


@pytest.mark.parametrize("codec", [None, "zstd", "lz4"])
def test_slices_at_chunk_boundaries(tmp_path, codec):
    t = torch.arange(1000 * 16, dtype=torch.float32).reshape(1000, 16)  # 64-byte rows
    p = tmp_path / "s.deathtensors"
    chunk = 64 * 100  # 100 rows per chunk
    if codec:
        _save_chunked(p, {"t": t}, chunk, codec)
    else:
        dt.save(p, {"t": t})
    with dt.open(p) as f:
        for start, count in [(0, 100), (99, 2), (100, 100), (199, 1), (950, 50), (0, 1000), (333, 444)]:
            got = f.get_tensor_slice("t", start, count)
            assert torch.equal(got, t[start : start + count]), (start, count)


def test_compressed_slices_decode_at_most_two_extra_chunks(tmp_path):
    t = torch.randn(4000, 64)  # 256-byte rows
    chunk = 256 * 50
    p = tmp_path / "s.deathtensors"
    _save_chunked(p, {"other": torch.randn(3000, 64), "t": t}, chunk)
    with dt.open(p) as f:
        for start, count in [(0, 1), (49, 2), (1234, 300), (3999, 1), (10, 3980)]:
            before = f._reader.decoded_bytes()
            got = f.get_tensor_slice("t", start, count)
            decoded = f._reader.decoded_bytes() - before
            assert torch.equal(got, t[start : start + count])
            assert decoded <= count * 256 + 2 * chunk, (start, count, decoded)
        # The whole tensor decodes everything; the other tensor was never touched.
        assert f._reader.decoded_bytes() < t.numel() * 4 * 5


def test_slice_arguments_behave_like_python_slicing(tmp_path):
    t = torch.arange(10 * 3).reshape(10, 3)
    p = tmp_path / "s.deathtensors"
    dt.save(p, {"t": t, "scalar": torch.tensor(1)}, compress=True)
    with dt.open(p) as f:
        assert torch.equal(f.get_tensor_slice("t", -3, 2), t[-3:-1])
        assert torch.equal(f.get_tensor_slice("t", -3, 100), t[-3:])
        assert torch.equal(f.get_tensor_slice("t", 8, 100), t[8:])
        assert f.get_tensor_slice("t", 20, 5).shape == (0, 3)
        assert torch.equal(f.get_tensor_slice("t", -100, 2), t[:2])
        with pytest.raises(dt.InvalidArgumentError):
            f.get_tensor_slice("t", 0, -1)
        with pytest.raises(dt.InvalidArgumentError, match="0-d"):
            f.get_tensor_slice("scalar", 0, 1)
        with pytest.raises(dt.TensorNotFoundError):
            f.get_tensor_slice("nope", 0, 1)
        np.testing.assert_array_equal(f.get_tensor_slice("t", 2, 3, framework="numpy"), t[2:5].numpy())


def test_slice_bounds_take_numpy_and_torch_integers_as_python_ints(tmp_path):
    """Regression: numpy scalars were added in numpy's fixed-width types, so
    (int64 1, int64 2**63-1) overflowed to a raw OverflowError, (int64,
    uint64) became a float (raw TypeError), and uint8 1 + 255 wrapped to 0
    (an error about a byte range nobody asked for)."""
    t = torch.arange(10 * 3).reshape(10, 3)
    p = tmp_path / "s.deathtensors"
    dt.save(p, {"t": t})
    with dt.open(p) as f:
        for start, count in [
            (np.int64(1), np.int64(2**63 - 1)),
            (np.int64(1), np.uint64(2)),
            (np.uint8(1), np.uint8(255)),
            (torch.tensor(1), torch.tensor(2)),
            (np.int32(-3), 2),
        ]:
            want = t[int(start) :][: int(count)]
            assert torch.equal(f.get_tensor_slice("t", start, count), want), (start, count)
        bad = [(1.5, 2), ("1", 2), (None, 2), (0, 2.0), (True, 2), (np.True_, 2), (torch.tensor([5]), 2)]
        for start, count in bad:  # what get_slice refuses as a position too
            with pytest.raises(dt.InvalidArgumentError, match="must be integers"):
                f.get_tensor_slice("t", start, count)


def test_get_slice_handle(tmp_path):
    t = torch.randn(300, 7, 5)
    p = tmp_path / "s.deathtensors"
    _save_chunked(p, {"t": t}, 7 * 5 * 4 * 16)
    with dt.open(p) as f:
        h = f.get_slice("t")
        assert h.get_shape() == [300, 7, 5] and h.get_dtype() == "F32" and len(h) == 300
        for key in [slice(10, 20), slice(None, None, 7), slice(-5, None), slice(250, 10, -3), 4, -1, slice(0, 0)]:
            assert torch.equal(
                h[key],
                t[key] if not isinstance(key, slice) or (key.step or 1) > 0 else t[list(range(*key.indices(300)))],
            ), key
        assert torch.equal(h[2:9, 1:3, ::2], t[2:9, 1:3, ::2])
        assert torch.equal(h[5, 2], t[5, 2])
        assert torch.equal(h[...], t)
        with pytest.raises(IndexError):
            h[300]


def test_get_slice_takes_numpy_and_torch_integer_indices(tmp_path):
    """Regression: ``h[np.int64(3)]`` raised TypeError (only Python ints were
    rows), and ``h[True]`` (or ``h[torch.tensor([1])]``) read one row where
    numpy and torch read a mask (or a list of rows)."""
    t = torch.randn(40, 3)
    p = tmp_path / "s.deathtensors"
    dt.save(p, {"t": t})
    with dt.open(p) as f:
        h = f.get_slice("t")
        for key in [np.int64(3), np.int32(-2), np.uint8(7), torch.tensor(5)]:
            assert torch.equal(h[key], t[int(key)]), key
        assert torch.equal(h[np.int64(1), np.int64(2)], t[1, 2])
        assert torch.equal(h[np.int64(2) : np.int64(30) : np.int64(9)], t[2:30:9])
        with pytest.raises(IndexError):
            h[np.int64(40)]
        # Bools and arrays (even of one element) are masks or row lists to numpy and torch.
        for rows in [True, np.True_, torch.tensor(True), torch.tensor([1]), np.array([1]), [1]]:
            with pytest.raises(TypeError):
                h[rows]
        # What is no index at all is numpy's IndexError.
        for bad in [np.float64(1.0), "1", 1.5, torch.tensor(1.0)]:
            with pytest.raises(IndexError):
                h[bad]


# ---------------------------------------------------------------- tied weights


@pytest.mark.parametrize("compress", [False, True, "lz4"])
def test_tied_weights_are_stored_once_and_share_memory_again(tmp_path, compress):
    emb = torch.randn(500, 64)
    tied = {"embed.weight": emb, "lm_head.weight": emb, "first_rows": emb[:10], "other": torch.ones(3)}
    untied = {"embed.weight": emb, "lm_head.weight": emb.clone(), "first_rows": emb[:10], "other": torch.ones(3)}
    p, q = tmp_path / "tied.deathtensors", tmp_path / "untied.deathtensors"
    dt.save(p, tied, compress=compress, checksum=True)
    dt.save(q, untied, compress=compress, checksum=True)
    # The alias costs a header entry, not 128 KB of bytes.
    assert os.path.getsize(q) - os.path.getsize(p) >= emb.numel() * 4 * 0.8
    with dt.open(p, verify=True) as f:
        assert f.info("lm_head.weight")["alias_of"] == "embed.weight"
        assert f.info("first_rows")["alias_of"] is None  # a partial view is its own bytes
        loaded = f.get_tensors()
        assert loaded["lm_head.weight"].data_ptr() == loaded["embed.weight"].data_ptr()
        assert torch.equal(loaded["lm_head.weight"], emb)
        assert torch.equal(loaded["first_rows"], emb[:10])
        assert torch.equal(f.get_tensor("lm_head.weight"), emb)  # alone, it reads the shared bytes


def test_same_storage_with_another_shape_is_saved_separately(tmp_path):
    w = torch.randn(4, 6)
    dt.save(tmp_path / "v.deathtensors", {"w": w, "flat": w.view(24)})
    with dt.open(tmp_path / "v.deathtensors") as f:
        assert f.info("flat")["alias_of"] is None
        assert torch.equal(f.get_tensor("flat"), w.view(24))


# ---------------------------------------------------------------- append


@pytest.mark.parametrize("compress", [False, True, "lz4"])
@pytest.mark.parametrize("checksum", [False, True, "blake3"])
def test_append_keeps_old_tensors_and_settings(tmp_path, compress, checksum):
    p = tmp_path / "a.deathtensors"
    old = {"a": torch.randn(300, 40), "b": torch.arange(10), "tied": None}
    old["tied"] = old["a"]
    dt.save(p, old, metadata={"a": {"k": 1}}, global_metadata={"g": "x"}, compress=compress, checksum=checksum)
    new = {"c": torch.randn(7, 7).to(torch.bfloat16), "d": torch.tensor(True)}
    dt.append(p, new, metadata={"c": {"m": [1, 2]}}, extra_global_metadata={"step": 2})
    with dt.open(p) as f:
        assert f.keys() == ["a", "b", "tied", "c", "d"]
        assert f.is_compressed() == bool(compress)
        assert f.checksum_algorithm() == {False: None, True: "sha256", "blake3": "blake3"}[checksum]
        if checksum:
            assert f.verify()
        assert f.metadata() == {"g": "x", "step": 2}
        assert f.info("a")["metadata"] == {"k": 1} and f.info("c")["metadata"] == {"m": [1, 2]}
        got = f.get_tensors()
        for name, t in {**old, **new}.items():
            assert torch.equal(got[name], t), name
        assert got["tied"] is got["a"]


def test_append_to_a_file_whose_header_names_a_level_zstd_lacks(tmp_path):
    """Regression: a header written by another tool with ``"level": 99`` made
    every append fail on the level; the codec's default is used instead."""
    p = tmp_path / "odd-level.deathtensors"
    dt.save(p, {"a": torch.randn(64)}, compress=True)
    raw = p.read_bytes()
    assert raw.count(b'"level":3}') == 1
    head = raw.index(b'"level":3}')
    end = raw.index(b"  ", head)  # the header's space padding gives the extra byte
    raw = raw[:head] + b'"level":99}' + raw[head + 10 : end] + raw[end + 1 :]
    p.write_bytes(raw)
    with dt.open(p) as f:
        assert f.keys() == ["a"]
    dt.append(p, {"b": torch.ones(8)})
    with dt.open(p) as f:
        assert f.keys() == ["a", "b"] and f.get_tensor("b").tolist() == [1.0] * 8


def test_append_refuses_existing_names_unless_overwrite(tmp_path):
    p = tmp_path / "a.deathtensors"
    dt.save(p, {"a": torch.zeros(3), "b": torch.ones(2)}, compress=True, checksum=True)
    before = p.read_bytes()
    with pytest.raises(dt.InvalidArgumentError, match="overwrite"):
        dt.append(p, {"b": torch.zeros(1)})
    assert p.read_bytes() == before  # untouched
    dt.append(p, {"b": torch.full((5,), 7.0)}, overwrite=True)
    with dt.open(p, verify=True) as f:
        assert f.keys() == ["a", "b"]
        assert torch.equal(f.get_tensor("b"), torch.full((5,), 7.0))


@pytest.mark.parametrize("compress", [False, "lz4", True])
@pytest.mark.parametrize("checksum", [True, "blake3"])
def test_append_refuses_a_file_its_footer_says_is_damaged(tmp_path, compress, checksum):
    """Regression: append copied the damaged bytes verbatim and wrote a fresh
    footer over them, so the file verified afterwards with a wrong value in it
    (uncompressed and lz4 chunks carry no check of their own)."""
    p = tmp_path / "a.deathtensors"
    w = torch.arange(4096, dtype=torch.float32)
    dt.save(p, {"w": w}, checksum=checksum, compress=compress)
    raw = bytearray(p.read_bytes())
    raw[len(raw) - 32 - 1000] ^= 0x01  # a byte of the tensor data
    p.write_bytes(bytes(raw))
    with pytest.raises(dt.ChecksumError, match=f"{p.name}.*checksum mismatch"):
        dt.append(p, {"new": torch.zeros(2)})
    assert p.read_bytes() == bytes(raw)  # left as it was
    with pytest.raises(dt.ChecksumError):
        dt.open(p, verify=True)


def test_append_does_not_decompress_old_tensors(tmp_path):
    p = tmp_path / "a.deathtensors"
    dt.save(p, {"big": torch.randn(2000, 256)}, compress=True)
    with dt.open(p) as f:
        stored = f.info("big")["stored_nbytes"]
    dt.append(p, {"small": torch.zeros(1)})
    with dt.open(p) as f:
        assert f.info("big")["stored_nbytes"] == stored  # copied as stored, chunk by chunk
        f.get_tensor("small")
        assert f._reader.decoded_bytes() == 4  # only the new tensor was decoded


def test_append_peak_memory_does_not_grow_with_the_file(tmp_path):
    import subprocess
    import sys

    p = tmp_path / "big.deathtensors"
    n = 384 << 20
    dt.save_file(p, {"big": {"dtype": "U8", "shape": [n], "data": bytes(n)}}, checksum=True)
    code = (
        "import resource, torch, deathtensors as dt, sys\n"
        "base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "dt.append(sys.argv[1], {'x': torch.ones(10)})\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) * 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(p)], check=True, capture_output=True, text=True)
    grown = int(out.stdout.strip().splitlines()[-1])
    assert grown < 96 << 20, f"append of a 384 MiB file grew peak RSS by {grown} bytes"
    with dt.open(p, verify=True) as f:
        assert f.keys() == ["big", "x"]


# ---------------------------------------------------------------- sparse COO


def _sparse_cases():
    g = torch.Generator().manual_seed(0)
    uncoalesced = torch.sparse_coo_tensor(
        torch.tensor([[0, 1, 1, 0], [2, 0, 2, 2]]), torch.tensor([3.0, 4.0, 5.0, 6.0]), (2, 3), check_invariants=True
    )
    hybrid = torch.sparse_coo_tensor(
        torch.tensor([[0, 3, 4]]), torch.randn(3, 2, 5, generator=g, dtype=torch.float64), (6, 2, 5)
    ).coalesce()
    three_d = torch.sparse_coo_tensor(
        torch.tensor([[0, 1], [2, 2], [1, 0]]), torch.tensor([1, -7], dtype=torch.int32), (2, 3, 2)
    ).coalesce()
    empty = torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.zeros(0), (4, 4), check_invariants=True)
    bf = torch.sparse_coo_tensor(torch.tensor([[1]]), torch.tensor([2.5]).to(torch.bfloat16), (3,)).coalesce()
    return {"uncoalesced": uncoalesced, "hybrid": hybrid, "three_d": three_d, "empty": empty, "bf": bf}


@pytest.mark.parametrize("compress", [False, True])
def test_sparse_round_trip_mixed_with_dense(tmp_path, compress):
    cases = _sparse_cases()
    dense = torch.arange(6.0)
    p = tmp_path / "sp.deathtensors"
    dt.save_sparse(p, {"dense": dense, **cases}, compress=compress, checksum=True)
    with dt.open(p, verify=True) as f:
        assert f.keys() == ["dense", *cases]  # each sparse tensor listed once
        assert len(f) == 1 + len(cases) and not f.is_sparse("dense") and f.is_sparse("hybrid")
        for name, sp in cases.items():
            got = dt.get_sparse(f, name)
            assert got.layout == torch.sparse_coo and got.shape == sp.shape and got.dtype == sp.dtype, name
            assert got.is_coalesced() == sp.is_coalesced(), name
            assert torch.equal(got._indices(), sp._indices()) and torch.equal(got._values(), sp._values()), name
            assert torch.equal(f.get_tensor(name).to_dense(), sp.to_dense()), name
        everything = f.get_tensors()
        assert torch.equal(everything["dense"], dense)
        assert torch.equal(everything["three_d"].to_dense(), cases["three_d"].to_dense())
        with pytest.raises(dt.InvalidArgumentError, match="not sparse"):
            dt.get_sparse(f, "dense")
        with pytest.raises(dt.InvalidArgumentError, match="torch"):
            f.get_tensor("hybrid", framework="numpy")


def test_row_and_mmap_access_refuse_sparse_tensors(tmp_path):
    """Regression: slices and maps of a sparse tensor used to return its stored
    values (``[9.]`` for row 0 of a 2 x 3 matrix), not its rows."""
    sp = torch.sparse_coo_tensor([[0, 1, 1, 0], [2, 0, 2, 2]], [3.0, 4.0, 5.0, 6.0], (2, 3)).coalesce()
    p = tmp_path / "sp.deathtensors"
    dt.save_sparse(p, {"co": sp, "dense": torch.arange(6.0).reshape(2, 3)})
    with dt.open(p) as f:
        for call in (
            lambda: f.get_tensor_slice("co", 0, 1),
            lambda: f.get_slice("co"),
            lambda: f.get_tensor_mmap("co"),
        ):
            with pytest.raises(dt.InvalidArgumentError, match="'co' is sparse"):
                call()
        assert torch.equal(f.get_tensor("co").to_dense(), sp.to_dense())
        assert torch.equal(f.get_tensor_slice("dense", 1, 1), torch.tensor([[3.0, 4.0, 5.0]]))
        assert torch.equal(f.get_slice("dense")[0:1], torch.tensor([[0.0, 1.0, 2.0]]))


def test_sparse_survives_append_and_overwrite(tmp_path):
    cases = _sparse_cases()
    p = tmp_path / "sp.deathtensors"
    dt.save(p, {"sp": cases["uncoalesced"], "x": torch.ones(2)}, compress=True, checksum=True)
    dt.append(p, {"more": cases["hybrid"]})
    with dt.open(p, verify=True) as f:
        assert f.keys() == ["sp", "x", "more"]
        assert torch.equal(f.get_tensor("sp").to_dense(), cases["uncoalesced"].to_dense())
        assert torch.equal(f.get_tensor("more").to_dense(), cases["hybrid"].to_dense())
    dt.append(p, {"sp": torch.zeros(3)}, overwrite=True)  # a sparse tensor replaced by a dense one
    with dt.open(p, verify=True) as f:
        assert f.keys() == ["sp", "x", "more"] and not f.is_sparse("sp")
        assert torch.equal(f.get_tensor("sp"), torch.zeros(3))


def test_sparse_indices_out_of_bounds_are_a_format_error(tmp_path):
    p = tmp_path / "sp.deathtensors"
    ok = torch.sparse_coo_tensor(torch.tensor([[0, 1]]), torch.tensor([1.0, 2.0]), (2,))
    dt.save(p, {"sp": ok})
    with dt.open(p) as f:
        offset = f._parts["sp" + "/__sparse_indices__"]["file_offset"]
    raw = bytearray(p.read_bytes())
    raw[offset + 8 : offset + 16] = (99).to_bytes(8, "little")  # index 99 in a tensor of size 2
    p.write_bytes(bytes(raw))
    with dt.open(p) as f, pytest.raises(dt.FormatError, match="sp"):
        f.get_tensor("sp")


def _direct_io_works_in(folder) -> bool:
    """Whether the file system of ``folder`` takes an aligned O_DIRECT write."""
    import mmap

    path = os.path.join(folder, "probe")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | getattr(os, "O_DIRECT", 0), 0o600)
    except OSError:
        return False
    try:
        os.pwrite(fd, mmap.mmap(-1, 4096), 0)  # page-aligned memory
        return hasattr(os, "O_DIRECT")
    except OSError:
        return False
    finally:
        os.close(fd)
        os.unlink(path)


def _cached_share(path) -> float:
    """Share of the file's pages in the page cache (mincore(2) on a private map)."""
    import ctypes
    import mmap

    libc = ctypes.CDLL(None, use_errno=True)
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY) as m:
        pages = (len(m) + 4095) // 4096
        vec = (ctypes.c_ubyte * pages)()
        addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
        rc = libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(len(m)), vec)
        assert rc == 0, os.strerror(ctypes.get_errno())
        share = sum(b & 1 for b in vec) / pages
        del addr
    return share


def test_large_durable_saves_match_with_and_without_direct_io(tmp_path, monkeypatch):
    """A durable uncompressed save of 64 MiB or more writes with direct I/O
    (framework/src/direct.rs); with ``DEATHTENSORS_DIRECT_IO=0`` it writes
    through the page cache. Both make the same bytes, and torch reads them back."""
    gen = torch.Generator().manual_seed(11)
    sd = {
        "embed": torch.randn(16411, 2048, generator=gen).to(torch.bfloat16),  # 64 MiB + 22 KiB
        "odd": torch.randn(1001, 3, generator=gen),
        "transposed": torch.randn(300, 700, generator=gen).t(),
        "bias": torch.zeros(7, dtype=torch.float16),
    }
    direct, buffered = tmp_path / "direct.deathtensors", tmp_path / "buffered.deathtensors"
    monkeypatch.delenv("DEATHTENSORS_DIRECT_IO", raising=False)
    dt.save(direct, sd, checksum=True, metadata={"odd": {"k": 1}})
    monkeypatch.setenv("DEATHTENSORS_DIRECT_IO", "0")
    dt.save(buffered, sd, checksum=True, metadata={"odd": {"k": 1}})
    if _direct_io_works_in(tmp_path):
        assert _cached_share(direct) < 0.05, "the default durable save did not write around the page cache"
        assert _cached_share(buffered) > 0.5, "DEATHTENSORS_DIRECT_IO=0 did not write through the page cache"
    assert direct.stat().st_size == buffered.stat().st_size > 64 << 20
    assert direct.read_bytes() == buffered.read_bytes()
    with dt.open(direct, verify=True) as f:
        assert f.keys() == list(sd)
        for name, t in sd.items():
            assert torch.equal(f.get_tensor(name), t), name


def test_get_slice_takes_ellipsis_and_new_axes_as_torch_and_numpy_do(tmp_path):
    """Regression: ``h[..., 2:5]`` of a 1-D tensor (or ``h[..., i, j]`` of a 2-D
    one) raised IndexError, the leading ``...`` taken for the rows' index, and
    ``None`` (a new axis) was refused first; numpy and safetensors take both."""
    t = torch.arange(60.0).reshape(5, 4, 3)
    v = torch.arange(10.0)
    p = tmp_path / "s.deathtensors"
    dt.save(p, {"t": t, "v": v}, compress=True)
    keys = [
        (Ellipsis, slice(2, 5)),
        (Ellipsis, 1),
        (Ellipsis, 1, 2, 0),
        (Ellipsis, 1, slice(0, 2)),
        (1, Ellipsis),
        (slice(1, 4), Ellipsis, 2),
        (Ellipsis, None),
        None,
        (None, 0),
        (None, None, slice(1, 3), Ellipsis, 1),
        (0, None, 2),
    ]
    with dt.open(p) as f:
        for name, full in (("t", t), ("v", v)):
            for key in keys:
                try:
                    want = full[key]
                except IndexError:
                    with pytest.raises(IndexError):
                        f.get_slice(name)[key]
                    continue
                assert torch.equal(f.get_slice(name)[key], want), (name, key)
                got = f.get_slice(name, framework="numpy")[key]
                np.testing.assert_array_equal(got, full.numpy()[key])
        with pytest.raises(IndexError, match="single ellipsis"):
            f.get_slice("t")[..., 0, ...]
        with pytest.raises(IndexError):
            f.get_slice("v")[..., 0, 0]


def _random_key(rng, shape):
    """An index of ints, slices (any step), ``...`` and ``None`` for ``shape``."""
    key = []
    for n in shape[: rng.integers(0, len(shape) + 1)]:
        kind = rng.integers(0, 4)
        if kind == 0:
            key.append(int(rng.integers(-n, n)))
        elif kind == 1:
            key.append(slice(None))
        else:
            lo, hi = sorted(int(x) for x in rng.integers(-n - 2, n + 2, 2))
            step = int(rng.choice([1, 2, 3, 7, -1, -2, -5]))
            key.append(slice(lo, hi, step) if step > 0 else slice(hi, lo, step))
    if key and rng.integers(0, 3) == 0:
        key.insert(int(rng.integers(0, len(key) + 1)), None)
    if rng.integers(0, 4) == 0:
        key.insert(int(rng.integers(0, len(key) + 1)), Ellipsis)
    return tuple(key)


@pytest.mark.parametrize("codec", [None, "zstd", "lz4"])
def test_get_slice_matches_numpy_on_random_keys(tmp_path, codec):
    """Every mix of ints, slices, steps, ``...`` and ``None`` reads what numpy
    indexing of the whole tensor gives, across chunk boundaries."""
    rng = np.random.default_rng(7)
    tensors = {
        "f32": rng.standard_normal((37, 11, 5)).astype(np.float32),
        "u8": rng.integers(0, 255, (200, 3), dtype=np.uint8),
        "i64": rng.integers(-(2**40), 2**40, (9, 13), dtype=np.int64),
        "flat": rng.standard_normal(1000).astype(np.float64),
        "bool": rng.integers(0, 2, (30, 7)).astype(bool),
    }
    p = tmp_path / "s.deathtensors"
    if codec is None:
        dt.save(p, tensors)
    else:
        _save_chunked(p, tensors, 96, codec=codec)  # chunks of a few rows, cut mid-row
    with dt.open(p) as f:
        for name, full in tensors.items():
            for _ in range(150):
                key = _random_key(rng, full.shape)
                try:
                    want = full[key]
                except IndexError:  # `...` moved an int onto a shorter dimension
                    with pytest.raises(IndexError):
                        f.get_slice(name, framework="numpy")[key]
                    continue
                got = f.get_slice(name, framework="numpy")[key]
                assert np.asarray(got).shape == np.asarray(want).shape, (name, key)
                np.testing.assert_array_equal(got, want, err_msg=f"{name}{key}")
            as_torch = f.get_slice(name)[::2, ...]
            assert torch.equal(as_torch, torch.from_numpy(full[::2].copy())), name


def test_get_slice_reads_only_the_chunks_that_hold_picked_elements(tmp_path):
    """Regression: get_slice read every row between the first and the last it
    picked, then applied steps and column windows to them: t[::64] of a 1 GiB
    tensor read (and held) the whole of it."""
    t = torch.randn(4096, 256)  # 1 KiB rows, 4 MiB in all
    p = tmp_path / "s.deathtensors"
    _save_chunked(p, {"t": t}, 16 * 1024)  # 16 rows a chunk
    total = t.numel() * 4
    with dt.open(p) as f:
        h = f.get_slice("t")
        for key, most in [
            ((slice(None, None, 512),), 8 * 16 * 1024),  # 8 rows, one chunk each
            ((slice(100, 3000, 1000), slice(10, 20)), 3 * 16 * 1024),
            ((7, slice(None, None, -3)), 16 * 1024),
            ((Ellipsis, 5), total),  # a column: every chunk holds part of it
        ]:
            before = f._reader.decoded_bytes()
            got = h[key]
            decoded = f._reader.decoded_bytes() - before
            assert torch.equal(got, t[key] if key != (7, slice(None, None, -3)) else t[7].flip(0)[::3]), key
            assert decoded <= most, (key, decoded)


def test_get_slice_takes_steps_too_large_for_64_bits_and_index_arrays_lazily(tmp_path):
    """Regression (review): a slice picking one index with a huge step
    (``1::2**63``) panicked in the selection's arithmetic (2**64 overflowed),
    and an index array after a stepped first item read every row between."""
    t = np.arange(16, dtype=np.float16).reshape(4, 4)
    big = np.random.default_rng(3).standard_normal((4096, 256)).astype(np.float32)
    cube = np.arange(120, dtype=np.int32).reshape(6, 5, 4)
    p = tmp_path / "s.deathtensors"
    _save_chunked(p, {"t": t, "big": big, "cube": cube}, 16 * 1024)
    with dt.open(p) as f:
        h = f.get_slice("t", framework="numpy")
        for key in [(slice(None, None, 2), slice(1, None, 2**63)), (slice(None, None, 2), slice(1, None, 2**64))]:
            np.testing.assert_array_equal(h[key], t[key])
        np.testing.assert_array_equal(h[1 :: 2**70], t[1:2])
        g = f.get_slice("big", framework="numpy")
        before = f._reader.decoded_bytes()
        got = g[::1024, [0, 5]]
        assert f._reader.decoded_bytes() - before <= 4 * 16 * 1024  # 4 rows: 4 chunks
        np.testing.assert_array_equal(got, big[::1024, [0, 5]])
        mask = np.zeros(256, bool)
        mask[[3, 9]] = True
        np.testing.assert_array_equal(g[10:12, mask], big[10:12, mask])
        # numpy's rule for an int and an array split by a slice: their dimension comes first.
        c = f.get_slice("cube", framework="numpy")
        for key in [(3, slice(None), [1, 2]), (slice(None, None, -2), [0, 4], 1), (1, [0, 2], [1, 3])]:
            assert c[key].shape == cube[key].shape, key
            np.testing.assert_array_equal(c[key], cube[key])
        # A mask over two dimensions indexes both: read as rows, then by numpy.
        wide = np.zeros((5, 4), bool)
        wide[1, 2] = wide[4, 0] = True
        np.testing.assert_array_equal(c[1:3, wide], cube[1:3, wide])


def test_get_slice_keeps_numpys_rules_for_bools_new_axes_and_masks(tmp_path):
    """Regression (bug hunt): a bool after the first item took a dimension
    (numpy adds one), index arrays split by None or a zero-length ``...`` came
    back in another order than numpy's, a 2-d mask after ``...`` was "too many
    indices", ``...`` with ints gave a scalar (numpy: a 0-d array), and a
    negative step of a float8 tensor raised torch's NotImplementedError."""
    t = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    f8 = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 6.0]).to(torch.float8_e4m3fn)
    p = tmp_path / "s.deathtensors"
    _save_chunked(p, {"t": t, "f8": f8}, 40)
    mask1 = np.array([True, False, True])
    mask2 = np.zeros((3, 4), bool)
    mask2[0, 1] = mask2[2, 3] = True
    keys = [
        (slice(None), True, 0),
        (0, True, 1),
        (slice(None), np.True_, 1),
        (slice(None), False, 1),
        (slice(None), Ellipsis, True),
        (None, 0, None, [0, 1], None),
        (slice(None), mask1, Ellipsis, 0),
        (0, Ellipsis, mask2),
        (slice(None), Ellipsis, mask2),
        (1, Ellipsis, 2),
        (Ellipsis, 3),
        (1, 2, 3),
    ]
    with dt.open(p) as f:
        h = f.get_slice("t", framework="numpy")
        for key in keys:
            want, got = t[key], h[key]
            assert type(got) is type(want) and np.shape(got) == np.shape(want), (key, np.shape(got))
            np.testing.assert_array_equal(got, want, err_msg=str(key))
        back = f.get_slice("f8")[::-1]
        assert torch.equal(back.view(torch.uint8), f8.view(torch.uint8).flip(0))


def test_get_slice_that_picks_nothing_reads_nothing_and_bad_items_are_index_errors(tmp_path):
    """Regression (review): ``[:, False]``, ``[:, []]`` or an all-False mask
    decoded every chunk for an empty result; an item that is no index next to
    an array was TypeError ("for the rows"), numpy's IndexError."""
    big = np.random.default_rng(5).standard_normal((256, 64)).astype(np.float32)
    p = tmp_path / "s.deathtensors"
    _save_chunked(p, {"big": big}, 4096)  # 16 rows a chunk
    with dt.open(p) as f:
        for framework in ("numpy", "torch"):
            h = f.get_slice("big", framework=framework)
            for key in [(slice(None), False), (slice(None), []), (slice(None), np.zeros(64, bool)), (3, False)]:
                before = f._reader.decoded_bytes()
                got = h[key]
                assert f._reader.decoded_bytes() - before <= 4096, key  # one element's chunk at most
                assert tuple(got.shape) == big[key].shape, (key, got.shape)
        h = f.get_slice("big", framework="numpy")
        for key in [(1.0, [0]), ("a", True), (slice(None, None, 0), "x")]:
            with pytest.raises(IndexError):
                h[key]


def test_get_slice_of_an_uncompressed_tensor_reads_only_the_picked_spans(tmp_path):
    """The uncompressed side of the regression above, counted in bytes read
    (``rchar`` of /proc/self/io): t[::512] of 4 MiB read all of it."""
    if not os.path.exists("/proc/self/io"):
        pytest.skip("no /proc/self/io")

    def bytes_read() -> int:
        with open("/proc/self/io") as io:
            return int(next(line for line in io if line.startswith("rchar:")).split()[1])

    t = torch.randn(4096, 256)
    p = tmp_path / "s.deathtensors"
    dt.save(p, {"t": t})
    with dt.open(p) as f:
        h = f.get_slice("t")
        before = bytes_read()
        got = h[::512, 3]
        assert bytes_read() - before < 64 * 1024
        assert torch.equal(got, t[::512, 3])


def test_get_slice_of_a_0d_tensor_reads_it_whole(tmp_path):
    """Regression: ``h[...]`` and ``h[()]`` of a 0-d tensor raised ``TypeError: len() of a
    0-d tensor``, where safetensors returns the scalar."""
    p = tmp_path / "s.deathtensors"
    dt.save(p, {"s": torch.tensor(2.5), "n": np.array(7, dtype=np.int32)})
    with dt.open(p) as f:
        for key in [Ellipsis, (), (Ellipsis,)]:
            got = f.get_slice("s")[key]
            assert got.shape == () and float(got) == 2.5, key
        assert int(f.get_slice("n", framework="numpy")[...]) == 7
        # As numpy indexes: `[()]` gives a scalar, `[...]` a 0-d array, `[None]` one axis.
        assert isinstance(f.get_slice("n", framework="numpy")[()], np.int32)
        assert f.get_slice("n", framework="numpy")[...].shape == ()
        assert f.get_slice("s")[None].shape == (1,)
        with pytest.raises(IndexError, match="0-d"):
            f.get_slice("s")[0]
        with pytest.raises(TypeError):
            len(f.get_slice("s"))


def test_more_dimensions_than_numpy_holds_is_a_typed_error(tmp_path):
    """Regression: numpy's bare ValueError ("maximum supported dimension") escaped."""
    p = tmp_path / "deep.deathtensors"
    dt.save(p, {"d": torch.ones([1] * 70)})
    with dt.open(p) as f:
        assert f.get_tensor("d").shape == (1,) * 70
        with pytest.raises(dt.InvalidArgumentError, match="numpy cannot hold a tensor of 70 dimensions"):
            f.get_tensor("d", framework="numpy")
