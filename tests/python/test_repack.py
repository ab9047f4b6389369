"""``dt.repack`` and ``deathtensors repack``: another codec, level or checksum, everything else kept."""

from __future__ import annotations

import functools
import json
import os

import pytest
from _dtutil import cli_commands, run_cli

import deathtensors as dt

torch = pytest.importorskip("torch")

CODECS = [False, True, "lz4"]
CHECKSUMS = [False, True, "blake3"]


def _level(path) -> int:
    with dt.open(path) as f:
        return json.loads(f._reader.describe())["level"]


def _stored(path, name: str) -> bytes:
    """The stored bytes of tensor ``name`` (its chunks as they lie in the file)."""
    with dt.open(path) as f:
        info = f.info(name)
    with open(path, "rb") as fh:
        fh.seek(info["file_offset"])
        return fh.read(info["stored_nbytes"])


@pytest.fixture
def model(tmp_path):
    """A file of every kind of entry: tied weights, a sparse tensor, metadata, an empty tensor."""
    embed = torch.arange(64 * 300, dtype=torch.float32).reshape(64, 300) / 7
    tensors = {
        "embed": embed,
        "lm_head": embed,  # tied: stored once
        "bias": torch.zeros(300, dtype=torch.bfloat16),
        "ids": torch.arange(1000, dtype=torch.int64),
        "empty": torch.zeros(0, 3),
    }
    path = tmp_path / "model.deathtensors"
    dt.save(path, tensors, metadata={"embed": {"init": "normal"}}, global_metadata={"model": "tiny", "n": [1, 2]})
    return path, tensors


def _check_same(path, tensors):
    with dt.open(path) as f:
        assert f.keys() == list(tensors)
        assert f.metadata() == {"model": "tiny", "n": [1, 2]}
        assert f.info("embed")["metadata"] == {"init": "normal"}
        for name, t in tensors.items():
            assert torch.equal(f.get_tensor(name), t), name
        got = f.get_tensors()
        assert got["lm_head"].data_ptr() == got["embed"].data_ptr()  # still tied


@pytest.mark.parametrize("compress", CODECS, ids=str)
@pytest.mark.parametrize("checksum", CHECKSUMS, ids=str)
def test_every_setting_keeps_the_contents(model, tmp_path, compress, checksum):
    path, tensors = model
    out = tmp_path / "out.deathtensors"
    assert dt.repack(path, out, compress=compress, checksum=checksum) == str(out)
    with dt.open(out, verify=bool(checksum)) as f:
        assert f.codec() == {False: None, True: "zstd"}.get(compress, compress)
        assert f.checksum_algorithm() == {False: None, True: "sha256"}.get(checksum, checksum)
    _check_same(out, tensors)


def test_sparse_tensors_and_a_second_repack_round_trip(tmp_path):
    sparse = torch.sparse_coo_tensor([[0, 2], [1, 0]], [1.5, -2.0], (3, 3), check_invariants=True).coalesce()
    path = tmp_path / "sp.deathtensors"
    dt.save_sparse(path, {"sp": sparse})
    dt.repack(path, compress="lz4", checksum=True)
    dt.repack(path, compress=True, compress_level=9)
    with dt.open(path, verify=True) as f:
        assert f.is_sparse("sp")
        back = dt.get_sparse(f, "sp")
    assert torch.equal(back.to_dense(), sparse.to_dense())
    assert _level(path) == 9


def test_in_place_by_default_and_no_temporary_files_left(model, tmp_path):
    path, tensors = model
    before = path.stat().st_size
    assert dt.repack(str(path), compress=True) == str(path)
    assert path.stat().st_size < before
    _check_same(path, tensors)
    assert sorted(os.listdir(tmp_path)) == ["model.deathtensors"]


def test_settings_not_given_are_kept(tmp_path):
    weights = {"w": (torch.randn(200_000, generator=torch.Generator().manual_seed(5)) * 50).round()}
    path = tmp_path / "w.deathtensors"
    dt.save(path, weights, compress=True, compress_level=7, checksum="blake3")
    out = tmp_path / "kept.deathtensors"
    dt.repack(path, out)
    with dt.open(out) as f:
        assert (f.codec(), f.checksum_algorithm()) == ("zstd", "blake3")
    assert _level(out) == 7
    assert _stored(out, "w") == _stored(path, "w")  # copied as stored
    dt.repack(path, out, checksum=False)
    with dt.open(out) as f:
        assert (f.codec(), f.checksum_algorithm()) == ("zstd", None)
    assert _stored(out, "w") == _stored(path, "w")
    dt.repack(path, out, compress_level=19)  # another level: encoded anew
    assert _level(out) == 19
    assert _stored(out, "w") != _stored(path, "w")
    with dt.open(out) as f:
        assert torch.equal(f.get_tensor("w"), weights["w"])


def test_an_uncompressed_repack_can_be_mapped(tmp_path):
    path = tmp_path / "z.deathtensors"
    t = torch.randn(100, 100)
    dt.save(path, {"t": t}, compress=True)
    with dt.open(path) as f, pytest.raises(dt.InvalidArgumentError):
        f.get_tensor_mmap("t")
    dt.repack(path, compress=False)
    with dt.open(path) as f:
        assert torch.equal(f.get_tensor_mmap("t"), t)


def test_a_damaged_source_is_refused_and_nothing_written(model, tmp_path):
    path, _ = model
    dt.repack(path, compress=True, checksum=True)
    raw = bytearray(path.read_bytes())
    raw[-40] ^= 0xFF  # a data byte (the footer is the last 32)
    path.write_bytes(bytes(raw))
    out = tmp_path / "out.deathtensors"
    with pytest.raises(dt.ChecksumError, match="model.deathtensors"):
        dt.repack(path, out, compress="lz4")
    assert not out.exists()
    with pytest.raises(dt.ChecksumError):
        dt.repack(path)  # in place: the file stays as it was
    assert path.read_bytes() == bytes(raw)


def test_bad_arguments(model, tmp_path):
    path, _ = model  # uncompressed
    with pytest.raises(dt.InvalidArgumentError, match="needs a codec"):
        dt.repack(path, compress_level=3)
    with pytest.raises(dt.InvalidArgumentError, match="needs a codec"):
        dt.repack(path, compress=False, compress_level=3)
    with pytest.raises(dt.InvalidArgumentError):
        dt.repack(path, compress=True, compress_level=99)
    with pytest.raises(dt.InvalidArgumentError, match="compress_level"):
        dt.repack(path, compress=True, compress_level=True)
    with pytest.raises(dt.InvalidArgumentError, match="compress"):
        dt.repack(path, compress=3)
    with pytest.raises(dt.PluginError):
        dt.repack(path, compress="brotli")
    with pytest.raises(dt.PluginError):
        dt.repack(path, checksum="md5")
    with pytest.raises(FileNotFoundError):
        dt.repack(tmp_path / "missing.deathtensors")
    assert sorted(os.listdir(tmp_path)) == ["model.deathtensors"]


def _sharded(tmp_path):
    tensors = {f"layer{i}.weight": torch.full((64, 64), float(i)) for i in range(6)}
    base = tmp_path / "ckpt" / "big.deathtensors"
    base.parent.mkdir()
    shards = dt.save_sharded(base, tensors, max_shard_bytes=40_000, global_metadata={"model": "big"}, checksum=True)
    assert len(shards) > 2
    return base, tensors, shards


def test_a_sharded_checkpoint_repacks_in_place_and_elsewhere(tmp_path):
    base, tensors, shards = _sharded(tmp_path)
    folder = base.parent
    index = dt.repack(base, compress="lz4", checksum="blake3")
    assert index == str(folder / "big.deathtensors.index.json")
    assert sorted(os.listdir(folder)) == sorted([os.path.basename(s) for s in shards] + [os.path.basename(index)])
    for shard in shards:
        with dt.open(shard, verify=True) as f:
            assert (f.codec(), f.checksum_algorithm()) == ("lz4", "blake3")
    with dt.open_sharded(base, verify=True) as sr:
        assert sr.keys() == list(tensors)
        assert sr.metadata() == {"model": "big"}
        for name, t in tensors.items():
            assert torch.equal(sr.get_tensor(name), t)

    (tmp_path / "out").mkdir()
    other = dt.repack(index, tmp_path / "out" / "small", compress=False)
    assert other == str(tmp_path / "out" / "small.deathtensors.index.json")
    with dt.open_sharded(other, verify=True) as sr:
        assert sr.keys() == list(tensors)
        assert all(torch.equal(sr.get_tensor(n), t) for n, t in tensors.items())
        assert {sr.which_shard(n).split("-")[0] for n in tensors} == {"small"}


def test_an_in_place_repack_of_hand_named_shards_leaves_no_old_shard(tmp_path):
    base, tensors, shards = _sharded(tmp_path)
    folder = base.parent
    index = folder / "big.deathtensors.index.json"
    doc = json.loads(index.read_text())
    renamed = {os.path.basename(s): f"part-{i}.deathtensors" for i, s in enumerate(shards)}
    for old, new in renamed.items():
        os.rename(folder / old, folder / new)
    doc["weight_map"] = {t: renamed[s] for t, s in doc["weight_map"].items()}
    index.write_text(json.dumps(doc))
    keep = folder / "notes.deathtensors"  # not named by the index: left alone
    dt.save(keep, {"x": torch.zeros(2)})

    (tmp_path / "copy").mkdir()
    dt.repack(index, tmp_path / "copy" / "big", compress="lz4")  # elsewhere: the source stays
    assert all((folder / n).exists() for n in renamed.values())

    assert dt.repack(index, compress="lz4") == str(index)
    written = sorted(os.path.basename(s) for s in shards)  # the standard names
    assert sorted(os.listdir(folder)) == sorted([*written, index.name, keep.name])
    with dt.open_sharded(index, verify=True) as sr:
        assert sr.keys() == list(tensors)
        assert all(torch.equal(sr.get_tensor(n), t) for n, t in tensors.items())
    for name in written:
        with dt.open(folder / name) as f:
            assert f.codec() == "lz4"


def test_a_repack_elsewhere_never_writes_over_the_source_checkpoint(tmp_path):
    """Regression: a repack to another base whose shard names were the
    source's wrote over the source's shard (with other tensors) and said
    nothing."""
    x, y = torch.arange(4.0), torch.arange(6.0)
    dt.save(tmp_path / "model-00002-of-00002.deathtensors", {"x": x})
    dt.save(tmp_path / "zz.deathtensors", {"y": y})
    index = tmp_path / "foo.deathtensors.index.json"
    weight_map = {"x": "model-00002-of-00002.deathtensors", "y": "zz.deathtensors"}
    index.write_text(json.dumps({"metadata": {"format": "deathtensors"}, "weight_map": weight_map}))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(dt.InvalidArgumentError, match="the repack would write .*model-00002-of-00002.* over its own"):
        dt.repack(index, tmp_path / "model", compress=True)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    with dt.open_sharded(index) as sr:
        assert torch.equal(sr.get_tensor("x"), x) and torch.equal(sr.get_tensor("y"), y)


def test_argument_errors_on_a_checkpoint_do_not_blame_a_shard(tmp_path):
    base, _, shards = _sharded(tmp_path)
    for kwargs, error in [
        ({"compress": "bogus"}, dt.PluginError),
        ({"checksum": "md5"}, dt.PluginError),
        ({"compress": True, "compress_level": 99}, dt.InvalidArgumentError),
        ({"compress_level": 3}, dt.InvalidArgumentError),  # an uncompressed checkpoint
    ]:
        with pytest.raises(error) as raised:
            dt.repack(base, **kwargs)
        assert "shard" not in str(raised.value), (kwargs, raised.value)
    assert all(os.path.exists(s) for s in shards)


def test_a_folder_is_no_base_path(tmp_path):
    base, tensors, _ = _sharded(tmp_path)
    (tmp_path / "out").mkdir()
    with pytest.raises(dt.InvalidArgumentError, match="names a folder.*inside the folder"):
        dt.repack(base, tmp_path / "out")
    with pytest.raises(dt.InvalidArgumentError, match="names a folder"):
        dt.save_sharded(tmp_path / "out", tensors)
    assert os.listdir(tmp_path / "out") == []
    assert not (tmp_path / "out.deathtensors.index.json").exists()


def test_a_checkpoint_saved_again_during_its_repack_is_not_mixed(tmp_path, monkeypatch):
    """Regression: a save of the checkpoint while an in-place repack read it
    left a mix (shards read before the save from the old version, after it
    from the new) and the repack, committing last, undid the save."""
    base, tensors, _ = _sharded(tmp_path)
    newer = {name: t + 100 for name, t in tensors.items()}
    real = dt._core.repack
    calls = []

    def repack_one_shard(*args):
        calls.append(args[0])
        if len(calls) == 2:  # between two shards, another process saves the checkpoint
            dt.save_sharded(base, newer, max_shard_bytes=40_000, checksum=True)
        return real(*args)

    monkeypatch.setattr(dt._core, "repack", repack_one_shard)
    with pytest.raises(dt.FormatError, match="saved again while it was repacked; nothing was written"):
        dt.repack(base, compress=True)
    monkeypatch.undo()
    with dt.open_sharded(base, verify=True) as sr:
        assert all(torch.equal(sr.get_tensor(n), t) for n, t in newer.items())
        files = [*sr.shards(), "big.deathtensors.index.json"]
    assert sorted(os.listdir(base.parent)) == sorted(files)  # no pending shard left


def test_a_shard_gone_with_a_new_save_is_reported_as_the_save(tmp_path, monkeypatch):
    """A save with another shard count removes the shards the repack was
    about to read: that is the save, not a missing shard."""
    base, tensors, shards = _sharded(tmp_path)
    real = dt._core.repack
    calls = []

    def repack_one_shard(*args):
        calls.append(args[0])
        if len(calls) == 1:
            dt.save_sharded(base, tensors)  # one shard now: the others go
        return real(*args)

    monkeypatch.setattr(dt._core, "repack", repack_one_shard)
    with pytest.raises(dt.FormatError, match="saved again while it was repacked"):
        dt.repack(base, compress=True)
    assert len(calls) == 1


def test_a_sharded_repack_with_a_damaged_shard_changes_nothing(tmp_path):
    base, _, shards = _sharded(tmp_path)
    pristine = open(shards[1], "rb").read()
    raw = bytearray(pristine)
    raw[-40] ^= 0xFF
    with open(shards[1], "wb") as fh:
        fh.write(raw)
    before = {p: open(p, "rb").read() for p in [*shards, str(base.parent / "big.deathtensors.index.json")]}
    with pytest.raises(dt.ChecksumError, match="shard 'big-00002-of"):
        dt.repack(base, compress=True)
    assert {p: open(p, "rb").read() for p in before} == before
    assert sorted(os.listdir(base.parent)) == sorted(os.path.basename(p) for p in before)
    with open(shards[1], "wb") as fh:
        fh.write(pristine)
    os.remove(shards[2])
    with pytest.raises(FileNotFoundError, match="big-00003-of"):
        dt.repack(base, base.parent / "other", checksum=False)


# -- CLI -----------------------------------------------------------------------------------------

COMMANDS = cli_commands()


@pytest.fixture(params=list(COMMANDS), ids=list(COMMANDS))
def cli(request):
    return functools.partial(run_cli, COMMANDS[request.param])


def test_cli_repacks_a_file(cli, model, tmp_path):
    path, tensors = model
    out = tmp_path / "out.deathtensors"
    result = cli("repack", str(path), str(out), "--compress=lz4", "--checksum", "blake3", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["compression"] == ["none", "lz4 (level 0)"]
    assert summary["checksum"] == [None, "blake3"]
    assert summary["tensors"] == len(tensors)
    assert summary["bytes_out"] == out.stat().st_size
    _check_same(out, tensors)

    result = cli("repack", str(out), "--compress", "--level", "5", "--checksum", "none")
    assert result.returncode == 0, result.stderr
    line = result.stdout.decode()
    assert "compression lz4 (level 0) -> zstd (level 5)" in line and "checksum blake3 -> none" in line
    with dt.open(out) as f:
        assert (f.codec(), f.checksum_algorithm()) == ("zstd", None)
    assert cli("repack", str(out), "--compress=none").returncode == 0
    with dt.open(out) as f:
        assert f.codec() is None
    _check_same(out, tensors)


def test_cli_errors(cli, model, tmp_path):
    path, _ = model
    for args, code, text in [
        (["--level", "3"], 2, "needs a codec"),
        (["--compress=brotli"], 2, "unknown codec"),
        (["--checksum", "md5"], 2, "unknown checksum"),
    ]:
        result = cli("repack", str(path), *args)
        assert result.returncode == code, (args, result.stderr)
        assert text in result.stderr.decode(), result.stderr
    result = cli("repack", str(tmp_path / "missing.deathtensors"))
    assert result.returncode == 1 and b"No such file" in result.stderr
    result = cli("convert", str(path), str(tmp_path / "b.deathtensors"), "--compress")
    assert result.returncode == 2 and b"deathtensors repack" in result.stderr


def test_cli_repacks_a_sharded_checkpoint(cli, tmp_path):
    base, tensors, shards = _sharded(tmp_path)
    result = cli("repack", str(base), "--compress=lz4", "--checksum", "none", "--json")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["shards"], summary["tensors"]) == (len(shards), len(tensors))
    assert summary["compression"] == ["none", "lz4 (level 0)"]
    assert summary["checksum"] == ["sha256", None]
    for shard in shards:
        with dt.open(shard) as f:
            assert (f.codec(), f.checksum_algorithm()) == ("lz4", None)
    result = cli("repack", str(base), str(tmp_path / "ckpt" / "copy"))
    assert result.returncode == 0, result.stderr
    line = result.stdout.decode()
    assert f"({len(shards)} shards): {len(tensors)} tensors" in line
    assert "compression lz4 (level 0) -> lz4 (level 0), checksum none -> none" in line
    # Shards stored differently (appended to by hand) show each setting.
    dt.repack(shards[0], compress=True, checksum="blake3")
    line = cli("repack", str(base), "--checksum", "sha256").stdout.decode()
    assert "compression lz4 (level 0) / zstd (level 3) -> lz4 (level 0) / zstd (level 3)" in line
    assert "checksum blake3 / none -> sha256" in line
    with dt.open_sharded(tmp_path / "ckpt" / "copy.deathtensors.index.json") as sr:
        assert all(torch.equal(sr.get_tensor(n), t) for n, t in tensors.items())
