"""The Python API: accessors, errors, paths, atomic writes, threads, packaging, optional frameworks."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _dtutil import DTYPE_IDS, layout, peak_growth_mib, torch_bytes

import deathtensors as dt

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")


@pytest.fixture
def sample(tmp_path):
    tensors = {
        "w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "odd": torch.arange(3, dtype=torch.uint8),  # 3 bytes: the next tensor needs padding
        "b": torch.tensor([1.5, -2.0], dtype=torch.float64),
        "e": torch.zeros(0, 2, dtype=torch.int16),
        "h": torch.tensor([1.0, 2.0], dtype=torch.bfloat16),
    }
    path = tmp_path / "sample.deathtensors"
    dt.save(path, tensors, metadata={"w": {"layer": "fc1"}}, global_metadata={"model": "tiny"})
    return path, tensors


# -- accessors ------------------------------------------------------------------------------------


def test_info_fields(sample):
    path, tensors = sample
    lay = layout(path)
    with dt.open(path) as f:
        info = f.info("w")
        assert info["name"] == "w"
        assert info["dtype"] == "F32"
        assert info["shape"] == [3, 4]
        assert info["nbytes"] == 48
        assert info["metadata"] == {"layer": "fc1"}
        begin, end = info["data_offsets"]
        assert end - begin == 48
        assert info["data_offsets"] == lay.tensor("w")["offsets"]
        assert info["file_offset"] == lay.data_start + begin
        assert info["stored_nbytes"] == 48
        assert info["chunks"] is None
        for name, t in tensors.items():
            i = f.info(name)
            assert i["nbytes"] == t.numel() * t.element_size()
            if i["nbytes"]:
                assert i["file_offset"] % 64 == 0, (name, i["file_offset"])
            raw = path.read_bytes()[i["file_offset"] : i["file_offset"] + i["nbytes"]]
            assert raw == torch_bytes(t), name
        assert f.info("odd")["dtype"] == "U8"
        assert f.info("h")["dtype"] == "BF16"
        assert f.metadata() == {"model": "tiny"}


def test_get_bytes_buffer_and_tensors(sample):
    path, tensors = sample
    with dt.open(path) as f:
        assert f.get_bytes("w") == torch_bytes(tensors["w"])
        assert isinstance(f.get_bytes("w"), bytes)
        buf = f.get_buffer("b")
        assert isinstance(buf, memoryview)
        assert buf.nbytes == 16 and bytes(buf) == torch_bytes(tensors["b"])
        buf[0] = 0xFF  # writable, and private to the caller
        assert f.get_bytes("b") == torch_bytes(tensors["b"])
        assert f.get_buffer("e").nbytes == 0
        all_t = f.get_tensors()
        assert list(all_t) == list(tensors)
        for name, t in tensors.items():
            assert torch.equal(all_t[name], t)
        t = f.get_tensor("w")
        t += 100  # the result owns its memory
        assert torch.equal(f.get_tensor("w"), tensors["w"])
        arr = f.get_tensor("w", framework="numpy")
        assert arr.flags.writeable
        arr[0, 0] = -1
        assert f.get_tensor("w", framework="numpy")[0, 0] == 0
        with pytest.raises(dt.InvalidArgumentError):
            f.get_tensor("w", framework="jax")


def test_get_tensors_numpy(tmp_path):
    path = tmp_path / "n.deathtensors"
    arrays = {"z": np.arange(6, dtype=np.int64).reshape(2, 3), "a": np.array([True, False]), "c": np.ones(2, "<c16")}
    dt.save(path, arrays)
    with dt.open(path) as f:
        got = f.get_tensors(framework="numpy")
    assert list(got) == ["z", "a", "c"]
    for name, arr in arrays.items():
        assert isinstance(got[name], np.ndarray)
        assert got[name].dtype == arr.dtype
        assert np.array_equal(got[name], arr)


def test_missing_name_raises_tensor_not_found(sample):
    path, _ = sample
    with dt.open(path) as f:
        for method in (f.info, f.get_bytes, f.get_buffer, f.get_tensor):
            with pytest.raises(dt.TensorNotFoundError) as exc:
                method("nope")
            assert isinstance(exc.value, KeyError)
            assert isinstance(exc.value, dt.DeathtensorsError)
            assert "nope" in str(exc.value)
        with pytest.raises(KeyError):
            f.get_tensor("W")  # names are case-sensitive
        assert "nope" not in f


def test_context_manager_closes(sample):
    path, tensors = sample
    with dt.open(path) as f:
        assert isinstance(f, dt.DtFile)
        assert not f.closed
        assert f.path == str(path)
        assert "sample.deathtensors" in repr(f)
    assert f.closed
    assert "closed" in repr(f)
    for call in (
        lambda: f.get_tensor("w"),
        lambda: f.get_bytes("w"),
        lambda: f.get_buffer("w"),
        lambda: f.get_tensors(),
        lambda: f.verify(),
    ):
        with pytest.raises(ValueError):
            call()
    f.close()  # closing twice is fine
    # header information stays available
    assert f.keys() == list(tensors)
    # also closed when the block raises
    with pytest.raises(RuntimeError):
        with dt.open(path) as g:
            raise RuntimeError("boom")
    assert g.closed
    # DtFile directly, without a with block
    h = dt.DtFile(path)
    assert torch.equal(h.get_tensor("b"), tensors["b"])
    h.close()
    assert h.closed


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        dt.open(tmp_path / "missing.deathtensors")
    with pytest.raises(OSError):
        dt.open(tmp_path)
    # Regression: a missing folder was a bare OSError with errno 0.
    for write in (
        lambda p: dt.save(p, {"a": torch.zeros(1)}),
        lambda p: dt.save_file(p, {"a": {"dtype": "U8", "shape": [1], "data": b"x"}}),
        lambda p: dt.write_manifest(_saved(tmp_path), p),
    ):
        with pytest.raises(FileNotFoundError) as e:
            write(tmp_path / "no" / "such" / "dir" / "x.deathtensors")
        assert e.value.errno == 2, e.value
        # Regression: the message named the internal temporary file (".x.deathtensors.AbC123.dt-tmp").
        assert ".dt-tmp" not in str(e.value) and "dir" in str(e.value), e.value


def _saved(folder: Path) -> Path:
    path = folder / "saved.deathtensors"
    dt.save(path, {"a": torch.zeros(1)})
    return path


def test_opening_a_directory_raises_is_a_directory_error(tmp_path):
    with pytest.raises(IsADirectoryError):
        dt.open(tmp_path)


def test_uncompressed_alignment_for_many_sizes(tmp_path):
    tensors = {f"t{n}": torch.arange(n, dtype=torch.uint8) for n in [1, 3, 63, 64, 65, 127, 0, 5]}
    tensors["f64"] = torch.ones(3, dtype=torch.float64)
    path = tmp_path / "al.deathtensors"
    dt.save(path, tensors, checksum=True)
    with dt.open(path, verify=True) as f:
        for name, t in tensors.items():
            info = f.info(name)
            if info["nbytes"]:
                assert info["file_offset"] % 64 == 0, name
            assert torch.equal(f.get_tensor(name), t)


# -- packaging --------------------------------------------------------------------------------------


def test_version_and_typing_files():
    assert dt.__version__ == "0.3.0"
    pkg = Path(dt.__file__).parent
    assert (pkg / "_core.pyi").is_file()
    assert (pkg / "py.typed").is_file()
    stub = (pkg / "_core.pyi").read_text()
    for name in ("class Reader", "def save", "def plugins"):
        assert name in stub


def test_public_names():
    for name in ("save", "save_file", "open", "DtFile", "plugins", "expand_path"):
        assert callable(getattr(dt, name))
    for name in (
        "FormatError",
        "EncryptedFileError",
        "ChecksumError",
        "NoChecksumError",
        "PluginError",
        "TensorNotFoundError",
        "InvalidArgumentError",
        "UnsupportedDtypeError",
    ):
        assert issubclass(getattr(dt, name), dt.DeathtensorsError)
    assert issubclass(dt.EncryptedFileError, dt.FormatError)
    assert issubclass(dt.NoChecksumError, dt.ChecksumError)
    assert issubclass(dt.TensorNotFoundError, KeyError)


def test_plugins_lists_codecs_checksums_and_dtypes():
    rows = dt.plugins()
    by_kind = {}
    for row in rows:
        assert set(row) == {"kind", "id", "summary", "crate"}
        assert row["summary"]
        by_kind.setdefault(row["kind"], []).append(row["id"])
    assert {"zstd", "lz4"} <= set(by_kind["codec"])
    assert {"sha256", "blake3"} <= set(by_kind["checksum"])
    assert sorted(by_kind["dtype"]) == sorted(DTYPE_IDS)
    assert len(DTYPE_IDS) == 17
    for ids in by_kind.values():
        assert len(ids) == len(set(ids))


# -- paths -------------------------------------------------------------------------------------------


def test_tilde_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    dt.save("~/home.deathtensors", {"a": torch.arange(3)})
    assert (tmp_path / "home.deathtensors").is_file()
    with dt.open("~/home.deathtensors") as f:
        assert f.get_tensor("a").tolist() == [0, 1, 2]
        assert f.path == str(tmp_path / "home.deathtensors")
    dt.save_file("~/raw.deathtensors", {"r": {"dtype": "U8", "shape": [1], "data": b"\x07"}})
    with dt.DtFile("~/raw.deathtensors") as f:
        assert f.get_bytes("r") == b"\x07"
    assert dt.expand_path("~/x") == str(tmp_path / "x")


def test_env_vars_are_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("DT_TEST_DIR", str(tmp_path))
    monkeypatch.setenv("DT_TEST_NAME", "model")
    dt.save("$DT_TEST_DIR/${DT_TEST_NAME}.deathtensors", {"a": torch.ones(2)})
    assert (tmp_path / "model.deathtensors").is_file()
    with dt.open("${DT_TEST_DIR}/$DT_TEST_NAME.deathtensors") as f:
        assert f.get_tensor("a").tolist() == [1.0, 1.0]


def test_pathlike_and_dt_extension(tmp_path):
    tensors = {"a": torch.arange(4.0), "b": torch.ones(2, dtype=torch.int8)}
    dt.save(tmp_path / "legacy.dt", tensors, compress=True, checksum=True)
    dt.save(str(tmp_path / "new.deathtensors"), tensors, compress=True, checksum=True)
    assert (tmp_path / "legacy.dt").read_bytes() == (tmp_path / "new.deathtensors").read_bytes()
    shutil.copy(tmp_path / "new.deathtensors", tmp_path / "copy.dt")
    shutil.copy(tmp_path / "new.deathtensors", tmp_path / "no_extension")
    for name in ("legacy.dt", "copy.dt", "no_extension"):
        with dt.open(tmp_path / name, verify=True) as f:
            assert f.keys() == ["a", "b"]
            assert torch.equal(f.get_tensor("a"), tensors["a"])


def test_paths_that_are_not_utf8_work_everywhere(tmp_path):
    """Regression: every call raised a bare UnicodeEncodeError for such a path."""
    folder = tmp_path / os.fsdecode(b"caf\xe9")
    folder.mkdir()
    path = folder / os.fsdecode(b"m\xff.deathtensors")
    tensors = {"a": torch.arange(6.0).reshape(2, 3), "b": torch.ones(2, dtype=torch.int8)}
    dt.save(path, tensors, compress=True, checksum=True)
    dt.append(path, {"c": torch.zeros(1)})
    with dt.open(path, verify=True) as f:
        assert f.keys() == ["a", "b", "c"]
        assert torch.equal(f.get_tensor("a"), tensors["a"])
    with dt.open(os.fsencode(path)) as f:  # a bytes path, as os.fspath allows
        assert f.keys() == ["a", "b", "c"]
    with pytest.raises(FileNotFoundError) as missing:
        dt.open(folder / "nope.deathtensors")
    assert missing.value.filename == str(folder / "nope.deathtensors")  # not with U+FFFD for the odd byte
    sidecar = dt.write_manifest(path)
    assert sidecar == str(path) + ".manifest.json" and os.path.isfile(sidecar)
    assert [t["name"] for t in dt.read_manifest(sidecar)["tensors"]] == ["a", "b", "c"]
    foreign = folder / os.fsdecode(b"x\xfe.safetensors")
    dt.to_safetensors(path, foreign)
    back = folder / os.fsdecode(b"y\xfe.deathtensors")
    dt.from_safetensors(foreign, back)
    assert dt.diff(path, back)["identical"]

    # A sharded checkpoint may live in such a folder; its own name goes into
    # the JSON index, so it must be UTF-8, and one that is not is refused.
    written = dt.save_sharded(folder / "sh", tensors, max_shard_bytes=16)
    assert len(written) == 2
    with dt.open_sharded(folder / "sh") as sr:
        assert torch.equal(sr.get_tensor("b"), tensors["b"])
    bad = folder / os.fsdecode(b"sh\xfe")
    with pytest.raises(dt.InvalidArgumentError, match="must be valid UTF-8"):
        dt.save_sharded(bad, tensors, max_shard_bytes=16)
    with pytest.raises(dt.InvalidArgumentError, match="must be valid UTF-8"):
        dt.to_safetensors(folder / "sh", bad)
    assert not [n for n in os.listdir(folder) if n.startswith(os.fsdecode(b"sh\xfe"))]


# -- atomic writes -----------------------------------------------------------------------------------


def _leftovers(directory: Path):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp"))


@pytest.mark.parametrize("compress", [False, True])
def test_saving_over_an_open_file_keeps_the_reader_valid(tmp_path, compress):
    path = tmp_path / "m.deathtensors"
    old = {"w": torch.arange(10_000, dtype=torch.float32), "x": torch.ones(3)}
    new = {"w": -torch.arange(20_000, dtype=torch.float64), "y": torch.zeros(1)}
    dt.save(path, old, compress=compress, checksum=True)
    with dt.open(path) as f:
        dt.save(path, new, compress=not compress)
        assert f.keys() == ["w", "x"]
        assert torch.equal(f.get_tensor("w"), old["w"])
        assert torch.equal(f.get_tensor("x"), old["x"])
        assert f.verify()
        with dt.open(path) as g:
            assert g.keys() == ["w", "y"]
            assert torch.equal(g.get_tensor("w"), new["w"])
    assert _leftovers(tmp_path) == []


def test_no_temp_files_are_left_behind(tmp_path):
    for i in range(5):
        dt.save(tmp_path / "a.deathtensors", {"a": torch.full((100,), float(i))}, compress=i % 2 == 0, checksum=True)
        dt.save_file(tmp_path / "b.deathtensors", {"b": {"dtype": "U8", "shape": [1], "data": bytes([i])}})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.deathtensors", "b.deathtensors"]


@pytest.mark.parametrize(
    "bad_kwargs",
    [
        {"checksum": "nope"},
        {"compress": "nope"},
        {"compress": True, "compress_level": 1000},
        {"metadata": {"ghost": {}}},
        {"global_metadata": {"x": float("nan")}},
    ],
    ids=["checksum", "codec", "level", "metadata", "nan"],
)
def test_a_failing_save_leaves_the_target_unchanged(tmp_path, bad_kwargs):
    path = tmp_path / "keep.deathtensors"
    dt.save(path, {"a": torch.arange(5)}, checksum=True)
    before = path.read_bytes()
    with pytest.raises(dt.DeathtensorsError):
        dt.save(path, {"a": torch.arange(1000)}, **bad_kwargs)
    assert path.read_bytes() == before
    with pytest.raises(dt.InvalidArgumentError):
        dt.save_file(path, {"a": {"dtype": "F64", "shape": [3], "data": b"short"}})
    assert path.read_bytes() == before
    assert _leftovers(tmp_path) == []
    with dt.open(path, verify=True) as f:
        assert f.get_tensor("a").tolist() == [0, 1, 2, 3, 4]


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_unwritable_directory_leaves_nothing(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(PermissionError):
            dt.save(ro / "x.deathtensors", {"a": torch.zeros(1)})
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_saving_over_a_file_keeps_its_permission_bits(tmp_path):
    """Regression: saving over or appending to a 0600 file made it 0644 (world-readable)."""
    path = tmp_path / "private.deathtensors"
    dt.save(path, {"a": torch.zeros(1)})
    path.chmod(0o600)
    dt.append(path, {"b": torch.ones(1)})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    dt.save(path, {"c": torch.ones(2)})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_append_refuses_the_name_of_a_stored_part(tmp_path):
    """Regression: appending "e/__sparse_indices__" with overwrite=True (which the
    first refusal suggested) replaced a sparse tensor's indices and left a file
    that no longer opened."""
    path = tmp_path / "sp.deathtensors"
    dt.save(path, {"e": torch.eye(2).to_sparse()})
    before = path.read_bytes()
    for overwrite in (False, True):
        with pytest.raises(dt.InvalidArgumentError, match="is a stored part of tensor .e."):
            dt.append(path, {"e/__sparse_indices__": torch.zeros(1)}, overwrite=overwrite)
    assert path.read_bytes() == before
    with dt.open(path) as f:
        assert torch.equal(f.get_tensor("e").to_dense(), torch.eye(2))


def test_a_sparse_tensor_whose_part_name_is_taken_names_the_clash(tmp_path):
    """Regression: a dense "s/__sparse_indices__" beside a sparse "s" was
    refused as a name "given twice", which the caller had given once."""
    path = tmp_path / "sp.deathtensors"
    sparse = torch.eye(3).to_sparse()
    clash = "'s/__sparse_indices__' names both a tensor and a stored part of tensor 's'"
    with pytest.raises(dt.InvalidArgumentError, match=clash.replace("'", '"')):
        dt.save_sparse(path, {"s/__sparse_indices__": torch.ones(2), "s": sparse})
    dt.save(path, {"s/__sparse_indices__": torch.ones(2)})
    with pytest.raises(dt.InvalidArgumentError, match=clash.replace("'", '"')):
        dt.append(path, {"s": sparse})


@pytest.mark.parametrize("order", [["new", "a"], ["b", "a"], ["b", "new", "a"]])
def test_append_ties_a_replaced_tensor_to_a_new_one_in_any_order(tmp_path, order):
    """Regression: a replaced name keeps its place, so a tie whose first name
    came later in the file ("new" appended after "a") failed with
    "alias 'a': no earlier tensor named 'new'"."""
    path = tmp_path / "tied.deathtensors"
    dt.save(path, {"a": torch.zeros(3), "b": torch.ones(3), "keep": torch.arange(3.0)})
    z = torch.full((3,), 5.0)
    dt.append(path, dict.fromkeys(order, z), metadata={n: {"i": i} for i, n in enumerate(order)}, overwrite=True)
    with dt.open(path) as f:
        got = f.get_tensors()
        assert f.keys()[:3] == ["a", "b", "keep"]
        assert all(torch.equal(got[n], z) for n in order)
        assert len({got[n].data_ptr() for n in order}) == 1, "stored once, read back tied"
        assert [f.info(n)["metadata"] for n in order] == [{"i": i} for i in range(len(order))]
        assert torch.equal(got["keep"], torch.arange(3.0))
        if "b" not in order:
            assert torch.equal(got["b"], torch.ones(3))


def test_a_header_over_the_readers_limit_is_refused_when_saving(tmp_path):
    """Regression: save and append wrote files with a header over 100 MB, which
    every open then refused."""
    path = tmp_path / "big_header.deathtensors"
    with pytest.raises(dt.InvalidArgumentError, match="header would be .* bytes, over"):
        dt.save(path, {"w": torch.zeros(1)}, global_metadata={"notes": "x" * 100_000_000})
    assert not path.exists()
    dt.save(path, {"w": torch.zeros(1)})
    with pytest.raises(dt.InvalidArgumentError, match="header would be"):
        dt.append(path, {"v": torch.zeros(1)}, extra_global_metadata={"notes": "x" * 100_000_000})
    with dt.open(path) as f:
        assert f.keys() == ["w"]


def test_subclasses_of_tensors_and_arrays_are_saved(tmp_path):
    """Regression: a torch.Tensor or numpy.ndarray subclass was refused as
    "a MyTensor; expected a torch.Tensor", by its module name."""

    class MyTensor(torch.Tensor):
        pass

    class MyArray(np.ndarray):
        pass

    path = tmp_path / "sub.deathtensors"
    tensors = {
        "t": torch.arange(4.0).as_subclass(MyTensor),
        "p": torch.nn.Parameter(torch.ones(2)),
        "a": np.arange(3, dtype=np.int16).view(MyArray),
        "s": np.float32(2.5),
    }
    dt.save(path, tensors)
    with dt.open(path) as f:
        assert f.get_tensor("t").tolist() == [0.0, 1.0, 2.0, 3.0]
        assert f.get_tensor("p").tolist() == [1.0, 1.0]
        assert f.get_tensor("a", framework="numpy").tolist() == [0, 1, 2]
        assert float(f.get_tensor("s")) == 2.5
    # A masked array is an ndarray subclass whose mask would be dropped: refused.
    with pytest.raises(dt.InvalidArgumentError, match="masked array"):
        dt.save(tmp_path / "m.deathtensors", {"m": np.ma.masked_array([1, 2, 3], mask=[0, 1, 0])})


def test_saving_through_a_symbolic_link_writes_the_file_it_points_to(tmp_path):
    """Regression: append and save replaced the link by a file and left its
    target unchanged (the Hugging Face cache is made of such links)."""
    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots"
    blobs.mkdir()
    snapshot.mkdir()
    real = blobs / "abc123"
    dt.save(real, {"a": torch.zeros(1)})
    link = snapshot / "model.deathtensors"
    link.symlink_to(Path("..") / "blobs" / "abc123")
    dt.append(link, {"b": torch.ones(1)})
    assert link.is_symlink() and link.resolve() == real.resolve()
    with dt.open(real) as f:
        assert f.keys() == ["a", "b"]
    dt.save(link, {"c": torch.full((2,), 7.0)})
    assert link.is_symlink()
    with dt.open(real) as f:
        assert f.keys() == ["c"] and f.get_tensor("c").tolist() == [7.0, 7.0]
    assert sorted(p.name for p in blobs.iterdir()) == ["abc123"]  # no temp file left beside it


def test_saved_file_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "perm.deathtensors"
        dt.save(path, {"a": torch.zeros(1)})
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    finally:
        os.umask(old)


# -- device= ------------------------------------------------------------------------------------------
# The meta device moves a tensor without a GPU (shape and dtype kept, no data),
# so these run everywhere; tests/python/test_gpu.py does the same on CUDA.


def test_device_moves_what_is_read(tmp_path):
    w = torch.randn(40, 8)
    path = tmp_path / "d.deathtensors"
    dt.save(path, {"w": w, "tied": w, "i": torch.arange(5)}, compress=True)
    with dt.open(path) as f:
        one = f.get_tensor("w", device="meta")
        assert one.device.type == "meta" and one.shape == (40, 8) and one.dtype == torch.float32
        rows = f.get_tensor_slice("w", 10, 5, device=torch.device("meta"))
        assert rows.device.type == "meta" and rows.shape == (5, 8)
        lazy = f.get_slice("w", device="meta")
        assert lazy[2].shape == (8,) and lazy[1:7:2, :3].shape == (3, 3) and lazy[4].device.type == "meta"
        every = f.get_tensors(device="meta")
        assert list(every) == ["w", "tied", "i"]
        assert all(t.device.type == "meta" for t in every.values())
        assert every["tied"] is every["w"]  # moved once, still tied
        for cpu in ("cpu", torch.device("cpu"), None):
            assert torch.equal(f.get_tensor("w", device=cpu), w)
            host = f.get_tensors(device=cpu)
            assert host["tied"].device.type == "cpu" and host["tied"].data_ptr() == host["w"].data_ptr()
    shards = tmp_path / "s.deathtensors"
    dt.save_sharded(shards, {"a": w, "b": torch.ones(3)}, max_shard_bytes=64)
    with dt.open_sharded(shards) as sr:
        assert sr.get_tensor("b", device="meta").device.type == "meta"
        assert sr.get_tensor_slice("a", 0, 2, device="meta").shape == (2, 8)
        assert {t.device.type for t in sr.get_tensors(device="meta").values()} == {"meta"}


def test_device_arguments_are_checked_before_reading(tmp_path, monkeypatch):
    path = tmp_path / "d.deathtensors"
    dt.save(path, {"w": torch.ones(4)})
    with dt.open(path) as f:
        reads: list = []
        monkeypatch.setattr(f, "_reader", _CountingReader(f._reader, reads))
        bad = [
            ("framework='torch'", lambda: f.get_tensor("w", framework="numpy", device="meta")),
            ("framework='torch'", lambda: f.get_tensors(framework="numpy", device="meta")),
            ("not a torch device", lambda: f.get_tensor("w", device="no-such-device")),
            ("not a torch device", lambda: f.get_tensor_slice("w", 0, 1, device=3.5)),
            ("not a torch device", lambda: f.get_slice("w", device="no-such-device")),
        ]
        if not torch.cuda.is_available():
            bad.append(("cannot be used", lambda: f.get_tensors(device="cuda")))
        for message, call in bad:
            with pytest.raises(dt.InvalidArgumentError, match=message):
                call()
        assert reads == []
        # numpy arrays are host arrays: the CPU is a device they may name
        assert f.get_tensor("w", framework="numpy", device="cpu").tolist() == [1.0] * 4
        assert f.get_tensors(framework="np", device=torch.device("cpu"))["w"].tolist() == [1.0] * 4
    shards = tmp_path / "s.deathtensors"
    dt.save_sharded(shards, {"a": torch.ones(2)}, max_shard_bytes=64)
    with dt.open_sharded(shards) as sr:
        opened: list = []
        real = sr._open_shard
        monkeypatch.setattr(sr, "_open_shard", lambda shard, verify: opened.append(shard) or real(shard, verify))
        for call in (sr.get_tensors, lambda device: sr.get_tensor("a", device=device)):
            with pytest.raises(dt.InvalidArgumentError, match="not a torch device"):
                call(device="no-such-device")
        with pytest.raises(dt.InvalidArgumentError, match="not a torch device"):
            sr.get_tensor_slice("a", 0, 1, device="no-such-device")
        with pytest.raises(dt.InvalidArgumentError, match="not a torch device"):
            sr.get_slice("a", device="no-such-device")
        assert opened == []
        assert sr.get_slice("a", device="meta")[0:1].device.type == "meta"
        assert opened == [sr.which_shard("a")]


class _CountingReader:
    def __init__(self, inner, calls):
        self._inner, self._calls = inner, calls

    def __getattr__(self, name):
        self._calls.append(name)
        return getattr(self._inner, name)


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak RSS reset")
def test_get_tensors_to_a_device_holds_one_tensor_at_a_time_in_host_memory(tmp_path):
    count, mib = 8, 12
    path = tmp_path / "big.deathtensors"
    dt.save(path, {f"t{i}": torch.randn(mib * 1024 * 1024 // 4) for i in range(count)})
    load = "with dt.open(argv[0]) as f: kept = f.get_tensors({})"
    host = peak_growth_mib(load.format(""), str(path), setup="import torch")
    assert host > count * mib * 0.9, f"the probe saw only {host:.0f} MiB for loading everything"
    moved = peak_growth_mib(load.format("device='meta'"), str(path), setup="import torch")
    assert moved < 3 * mib, f"get_tensors(device=...) grew host memory by {moved:.0f} MiB for {count * mib} MiB"


# -- optional frameworks -------------------------------------------------------------------------------


def _run_python(code: str, tmp_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )


def test_import_does_not_import_frameworks(tmp_path):
    code = """
        import sys
        import deathtensors as dt
        heavy = [m for m in ("torch", "numpy", "huggingface_hub", "safetensors") if m in sys.modules]
        assert heavy == [], heavy
        one = b"\\0\\0\\x80\\x3f"
        dt.save_file("a.deathtensors", {"x": {"dtype": "F32", "shape": [1], "data": one}}, checksum=True)
        with dt.open("a.deathtensors", verify=True) as f:
            assert f.get_bytes("x") == one
            f.info("x"); f.metadata(); f.get_buffer("x")
        dt.plugins()
        heavy = [m for m in ("torch", "numpy", "huggingface_hub", "safetensors") if m in sys.modules]
        assert heavy == [], heavy
        print("OK")
    """
    result = _run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"


def test_works_without_torch_and_numpy(tmp_path):
    code = """
        import sys
        sys.modules["torch"] = None
        sys.modules["numpy"] = None
        import deathtensors as dt
        assert dt.__version__ == "0.3.0"
        data = bytes(range(12))
        dt.save_file(
            "raw.deathtensors",
            {
                "u8": {"dtype": "U8", "shape": [3, 4], "data": data},
                "bf": {"dtype": "BF16", "shape": [1], "data": b"\\x80\\x3f"},
            },
            metadata={"u8": {"k": [1, None]}},
            global_metadata={"g": True},
            compress=True,
            checksum="blake3",
        )
        with dt.open("raw.deathtensors", verify=True) as f:
            assert f.keys() == ["u8", "bf"]
            assert f.get_bytes("u8") == data
            assert bytes(f.get_buffer("bf")) == b"\\x80\\x3f"
            assert f.info("u8")["shape"] == [3, 4]
            assert f.info("u8")["metadata"] == {"k": [1, None]}
            assert f.metadata() == {"g": True}
            for fw in ("torch", "numpy"):
                try:
                    f.get_tensor("u8", framework=fw)
                except ImportError:
                    pass
                else:
                    raise AssertionError("get_tensor without " + fw + " should raise ImportError")
        try:
            dt.save("x.deathtensors", {"a": [1, 2]})
        except dt.InvalidArgumentError:
            pass
        else:
            raise AssertionError("a list is not a tensor")
        print("OK")
    """
    result = _run_python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "OK"


# -- odd inputs and resources --------------------------------------------------------------------------


def test_unusual_names_and_unaligned_input(tmp_path):
    raw = np.arange(5, dtype="<f4").tobytes()
    unaligned = np.frombuffer(b"\0" + raw, dtype="<f4", offset=1)
    assert not unaligned.flags.aligned
    tensors = {
        "unaligned": unaligned,
        "nul\x00inside": np.ones(1, dtype=np.int8),
        'tab\tnewline\nquote"backslash\\': np.zeros(2, dtype=np.uint16),
        "a/b/../c": np.ones(1),
        "x" * 10_000: np.arange(3),
    }
    path = tmp_path / "odd.deathtensors"
    dt.save(path, tensors)
    with dt.open(path) as f:
        assert f.keys() == list(tensors)
        assert f.get_tensor("unaligned", framework="numpy").tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
        for name, arr in tensors.items():
            assert f.get_bytes(name) == np.ascontiguousarray(arr).tobytes(), name[:20]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="needs /proc")
def test_no_file_descriptor_leaks(tmp_path):
    good = tmp_path / "g.deathtensors"
    dt.save(good, {"a": torch.ones(100)}, checksum=True)
    bad = tmp_path / "b.deathtensors"
    raw = bytearray(good.read_bytes())
    raw[-40] ^= 1
    bad.write_bytes(bytes(raw))
    garbage = tmp_path / "x.deathtensors"
    garbage.write_bytes(b"DTLEGION" + b"\xff" * 40)
    before = _open_fds()
    for _ in range(100):
        with pytest.raises(dt.ChecksumError):
            dt.open(bad, verify=True)
        with pytest.raises(dt.FormatError):
            dt.open(garbage)
        with dt.open(good) as f:
            f.get_tensor("a")
        g = dt.open(good)
        g.close()
    assert _open_fds() <= before + 2


def test_reader_survives_the_file_being_deleted(tmp_path):
    path = tmp_path / "gone.deathtensors"
    dt.save(path, {"a": torch.arange(1000)}, compress=True, checksum=True)
    with dt.open(path) as f:
        path.unlink()
        assert f.get_tensor("a").tolist() == list(range(1000))
        assert f.verify()


# -- arguments that cannot be honoured -------------------------------------------------------------------


def test_a_bad_compression_level_is_refused_before_anything_is_written(tmp_path):
    """Regression: with no tensor to compress, level 99 was accepted and written
    to the header, and every later append failed."""
    path = tmp_path / "l.deathtensors"
    for tensors in ({}, {"empty": torch.zeros(0)}, {"a": torch.zeros(4)}):
        with pytest.raises(dt.InvalidArgumentError, match="compression level 99 for zstd"):
            dt.save(path, tensors, compress=True, compress_level=99)
        assert not path.exists()
    dt.save(path, {}, compress=True, compress_level=19)
    dt.append(path, {"r": torch.randn(4)})
    with dt.open(path) as f:
        assert f.keys() == ["r"]


def test_save_file_checks_shapes_and_bool_bytes(tmp_path):
    path = tmp_path / "raw.deathtensors"
    for shape, needle in (([1.7], "1.7"), ("2", "list of ints"), ([-1], "negative"), ([True], "bool")):
        with pytest.raises(dt.InvalidArgumentError, match=needle):
            dt.save_file(path, {"a": {"dtype": "U8", "shape": shape, "data": b"xx"}})
    # Format spec §8: BOOL bytes are 0x00 or 0x01.
    with pytest.raises(dt.InvalidArgumentError, match="byte 0 is 0x02"):
        dt.save_file(path, {"b": {"dtype": "BOOL", "shape": [3], "data": b"\x02\x01\x00"}})
    assert not path.exists()
    with pytest.raises(dt.InvalidArgumentError, match="bytes-like"):
        dt.save_file(path, {"a": {"dtype": "U8", "shape": [2], "data": [1, 2]}})
    # A non-contiguous buffer is saved in C order (it used to be an "internal" error).
    grid = np.arange(12, dtype=np.int32).reshape(3, 4)
    dt.save_file(
        path,
        {
            "t": {"dtype": "I32", "shape": [4, 3], "data": grid.T},
            "n": {"dtype": "I64", "shape": (np.int64(2),), "data": np.arange(2)},
        },
    )
    with dt.open(path) as f:
        assert f.get_tensor("t", framework="numpy").tolist() == grid.T.tolist()
        assert f.get_tensor("n", framework="numpy").tolist() == [0, 1]


def test_wrong_argument_types_raise_the_library_errors(tmp_path):
    path = tmp_path / "a.deathtensors"
    with pytest.raises(dt.InvalidArgumentError, match="metadata must be a dict"):
        dt.save(path, {"a": torch.zeros(1)}, metadata=[1])
    with pytest.raises(dt.InvalidArgumentError, match="'a' is on the meta device"):
        dt.save(path, {"a": torch.empty(2, device="meta")})
    with pytest.raises(dt.InvalidArgumentError, match='"" is not a file path'):
        dt.save("", {"a": torch.zeros(1)})
    for level in (True, 3.5, "3"):
        with pytest.raises(dt.InvalidArgumentError, match="compress_level must be an int(eger)? or None"):
            dt.save(path, {"a": torch.zeros(1)}, compress=True, compress_level=level)
    dt.save(os.fsencode(path), {"a": torch.zeros(1)})  # bytes paths, as os.fspath allows
    with dt.open(os.fsencode(path)) as f:
        with pytest.raises(dt.InvalidArgumentError, match="framework must be 'torch' or 'numpy', not None"):
            f.get_tensor("a", framework=None)
    # Regression: a sparse tensor raised AttributeError ('NoneType' object has no attribute 'lower').
    sparse = torch.sparse_coo_tensor(torch.tensor([[0]]), torch.tensor([1.0]), (2,))
    dt.save(path, {"s": sparse})
    with dt.open(path) as f:
        with pytest.raises(dt.InvalidArgumentError, match="framework must be 'torch' or 'numpy', not None"):
            f.get_tensor("s", framework=None)
