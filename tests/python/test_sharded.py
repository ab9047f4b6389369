"""Sharded save/open: the spec's example, splitting rules, laziness, verification, hostile indexes."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from _dtutil import cli_commands, layout, open_file_limit, run_cli

import deathtensors as dt
from deathtensors import _sharded

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

SPEC_SHARDS = [f"big_model-{i:05d}-of-00010.deathtensors" for i in range(1, 11)]


def _index(folder: Path, stem: str = "big_model") -> dict:
    return json.loads((folder / f"{stem}.deathtensors.index.json").read_text(encoding="utf-8"))


def _f32(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, generator=g)


# -- the spec README's example, run as written -------------------------------------------------------


@pytest.fixture(scope="module")
def spec_checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("spec")
    old = os.getcwd()
    os.chdir(folder)
    try:
        # The README's "Sharded save for huge models" example, verbatim.
        tensors = {f"layer.{i}.weight": torch.randn(500, 500) for i in range(100)}
        shards = dt.save_sharded(
            "big_model.deathtensors",
            tensors,
            max_shard_bytes=10 * 1024 * 1024,  # 10 MiB per shard
            compress=True,
            checksum=True,
        )
        with dt.open_sharded("big_model.deathtensors") as sr:
            shown = sr.which_shard("layer.42.weight")
            w = sr.get_tensor("layer.42.weight")  # only opens that one shard
            opened = sr.opened_shards()
    finally:
        os.chdir(old)
    return folder, tensors, shards, shown, w, opened


def test_spec_example_writes_ten_shards(spec_checkpoint):
    folder, tensors, shards, shown, w, opened = spec_checkpoint
    assert len(shards) == 10
    # 500*500*4 = 1_000_000 bytes per tensor: ten fit in 10 MiB (10_485_760), eleven do not.
    assert [os.path.basename(p) for p in shards] == SPEC_SHARDS
    assert all(os.path.isfile(folder / name) for name in SPEC_SHARDS)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*SPEC_SHARDS, "big_model.deathtensors.index.json"])
    assert shown == "big_model-00005-of-00010.deathtensors"
    assert torch.equal(w, tensors["layer.42.weight"])
    assert opened == ["big_model-00005-of-00010.deathtensors"]
    for name in SPEC_SHARDS:
        with dt.open(folder / name) as f:
            assert f.is_compressed() and f.has_checksum()
            assert len(f) == 10


def test_spec_example_index_schema(spec_checkpoint):
    folder, tensors, *_ = spec_checkpoint
    index = _index(folder)
    assert index["metadata"] == {"total_size": 100 * 500 * 500 * 4, "format": "deathtensors"}
    assert list(index["weight_map"]) == list(tensors)
    assert index["weight_map"]["layer.0.weight"] == SPEC_SHARDS[0]
    assert index["weight_map"]["layer.99.weight"] == SPEC_SHARDS[9]
    assert set(index) == {"metadata", "weight_map"}


def test_spec_example_every_name_reads_back(spec_checkpoint):
    folder, tensors, *_ = spec_checkpoint
    with dt.open_sharded(folder / "big_model.deathtensors.index.json") as sr:
        assert len(sr) == 100
        assert sr.keys() == list(tensors)
        assert sr.shards() == SPEC_SHARDS
        assert sr.total_size == 100_000_000
        for i, (name, t) in enumerate(tensors.items()):
            assert sr.which_shard(name) == SPEC_SHARDS[i // 10]
            got = sr.get_tensor(name)
            assert got.dtype == torch.float32 and got.shape == (500, 500)
            assert torch.equal(got, t), name
        assert sr.opened_shards() == SPEC_SHARDS
        assert sr.verify() is True


# -- splitting ---------------------------------------------------------------------------------------


def test_tensor_bigger_than_limit_gets_its_own_shard(tmp_path):
    tensors = {
        "a": _f32(10, 1),  # 40 bytes
        "b": _f32(10, 2),  # 40
        "big": _f32(50, 3),  # 200 > limit of 100
        "c": _f32(10, 4),
        "d": _f32(15, 5),  # 60: c + d = 100 = the limit, still one shard
        "e": _f32(1, 6),  # 4: 104 would overflow
    }
    shards = dt.save_sharded(tmp_path / "m.deathtensors", tensors, max_shard_bytes=100)
    names = [os.path.basename(p) for p in shards]
    assert names == [f"m-0000{i}-of-00004.deathtensors" for i in range(1, 5)]
    groups = []
    for p in shards:
        with dt.open(p) as f:
            groups.append(f.keys())
    assert groups == [["a", "b"], ["big"], ["c", "d"], ["e"]]
    with dt.open_sharded(tmp_path / "m.deathtensors") as sr:
        assert sr.which_shard("big") == "m-00002-of-00004.deathtensors"
        for name, t in tensors.items():
            assert torch.equal(sr.get_tensor(name), t)


def test_big_first_tensor_and_no_empty_shard(tmp_path):
    tensors = {"big": _f32(100), "small": _f32(1), "big2": _f32(100), "big3": _f32(100)}
    shards = dt.save_sharded(tmp_path / "m", tensors, max_shard_bytes=8)
    keys = []
    for p in shards:
        with dt.open(p) as f:
            keys.append(f.keys())
    assert keys == [["big"], ["small"], ["big2"], ["big3"]]


def test_one_byte_limit_puts_each_nonempty_tensor_alone(tmp_path):
    tensors = {"a": torch.zeros(2, dtype=torch.uint8), "empty": torch.zeros(0), "b": torch.ones(1, dtype=torch.uint8)}
    shards = dt.save_sharded(tmp_path / "m", tensors, max_shard_bytes=1)
    keys = []
    for p in shards:
        with dt.open(p) as f:
            keys.append(f.keys())
    assert keys == [["a"], ["empty", "b"]]
    with dt.open_sharded(tmp_path / "m") as sr:
        assert sr.get_tensor("empty").shape == (0,)
        assert sr.total_size == 3


def test_order_and_mixed_frameworks_preserved(tmp_path):
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    tensors = {
        "zeta": base.t(),  # non-contiguous
        "alpha": np.arange(7, dtype=np.int16),
        "mid": torch.tensor([True, False, True]),
        "beta": torch.tensor([1.5, 2.5], dtype=torch.bfloat16),
        "aa": np.array([[1, 2], [3, 4]], dtype=">i4"),  # big-endian input
    }
    dt.save_sharded(tmp_path / "o.deathtensors", tensors, max_shard_bytes=64)
    with dt.open_sharded(tmp_path / "o.deathtensors") as sr:
        assert sr.keys() == ["zeta", "alpha", "mid", "beta", "aa"]
        assert list(sr) == sr.keys()
        everything = sr.get_tensors()
        assert list(everything) == sr.keys()
        assert torch.equal(everything["zeta"], base.t().contiguous())
        assert torch.equal(everything["alpha"], torch.arange(7, dtype=torch.int16))
        assert torch.equal(everything["mid"], tensors["mid"])
        assert torch.equal(everything["beta"], tensors["beta"])
        assert np.array_equal(sr.get_tensor("aa", framework="numpy"), [[1, 2], [3, 4]])
        with pytest.raises(dt.UnsupportedDtypeError):  # numpy has no BF16
            sr.get_tensors(framework="numpy")
        assert sr.get_tensor("alpha", framework="numpy").dtype == np.int16
        assert sr.total_size == 24 * 8 + 7 * 2 + 3 + 2 * 2 + 4 * 4
    assert list(_index(tmp_path, "o")["weight_map"]) == ["zeta", "alpha", "mid", "beta", "aa"]


def test_metadata_round_trip(tmp_path):
    tensors = {"a": _f32(4, 1), "b": _f32(4, 2), "c": _f32(4, 3)}
    gm = {"model": "tiny", "step": 12, "nested": {"lr": 0.5, "tags": ["x", "é"]}}
    shards = dt.save_sharded(
        tmp_path / "m.deathtensors",
        tensors,
        max_shard_bytes=16,
        metadata={"a": {"layer": 0}, "c": {"layer": 2, "tied": None}},
        global_metadata=gm,
    )
    assert len(shards) == 3
    assert _index(tmp_path, "m")["metadata"] == {"total_size": 48, "format": "deathtensors", "global_metadata": gm}
    with dt.open_sharded(tmp_path / "m.deathtensors") as sr:
        assert sr.metadata() == gm
        assert sr.index_metadata()["global_metadata"] == gm
        assert sr.info("a")["metadata"] == {"layer": 0}
        assert sr.info("b")["metadata"] in ({}, None)
        info = sr.info("c")
        assert info["metadata"] == {"layer": 2, "tied": None}
        assert info["shard"] == "m-00003-of-00003.deathtensors"
        assert info["dtype"] == "F32" and info["shape"] == [4] and info["nbytes"] == 16
        sr.metadata()["model"] = "mutated"
        assert sr.metadata()["model"] == "tiny"
    for p in shards:  # every shard carries the global metadata too
        with dt.open(p) as f:
            assert f.metadata() == gm


def test_no_global_metadata_reads_as_empty(tmp_path):
    dt.save_sharded(tmp_path / "m", {"a": _f32(2)})
    with dt.open_sharded(tmp_path / "m") as sr:
        assert sr.metadata() == {}
        assert "global_metadata" not in sr.index_metadata()


def test_empty_dict_writes_no_shard(tmp_path):
    assert dt.save_sharded(tmp_path / "m.deathtensors", {}) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.deathtensors.index.json"]
    with dt.open_sharded(tmp_path / "m.deathtensors") as sr:
        assert len(sr) == 0 and sr.shards() == [] and sr.get_tensors() == {}
        assert sr.verify() is True


# -- paths -------------------------------------------------------------------------------------------


def test_open_by_index_path_base_path_and_dt_extension(tmp_path):
    tensors = {"a": _f32(3, 1), "b": _f32(3, 2)}
    dt.save_sharded(str(tmp_path / "m.dt"), tensors, max_shard_bytes=12)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m-00001-of-00002.deathtensors",
        "m-00002-of-00002.deathtensors",
        "m.deathtensors.index.json",
    ]
    for arg in (
        tmp_path / "m.deathtensors.index.json",
        str(tmp_path / "m.deathtensors.index.json"),
        tmp_path / "m.deathtensors",
        tmp_path / "m.dt",
        tmp_path / "m",
    ):
        with dt.open_sharded(arg) as sr:
            assert sr.path == str(tmp_path / "m.deathtensors.index.json")
            assert torch.equal(sr.get_tensor("b"), tensors["b"])


def test_paths_expand_home_and_vars(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DT_SHARD_DIR", str(tmp_path / "sub"))
    (tmp_path / "sub").mkdir()
    shards = dt.save_sharded("~/m.deathtensors", {"a": _f32(2)})
    assert shards == [str(tmp_path / "m-00001-of-00001.deathtensors")]
    dt.save_sharded("$DT_SHARD_DIR/n.deathtensors", {"a": _f32(2)})
    assert (tmp_path / "sub" / "n.deathtensors.index.json").is_file()
    with dt.open_sharded("~/m.deathtensors") as a, dt.open_sharded("$DT_SHARD_DIR/n.deathtensors.index.json") as b:
        assert torch.equal(a.get_tensor("a"), b.get_tensor("a"))


def test_missing_index_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="no sharded index"):
        dt.open_sharded(tmp_path / "nothing.deathtensors")
    dt.save(tmp_path / "single.deathtensors", {"a": _f32(2)})  # a plain file is not a sharded checkpoint
    with pytest.raises(FileNotFoundError):
        dt.open_sharded(tmp_path / "single.deathtensors")
    with pytest.raises(FileNotFoundError):
        dt.open_sharded(tmp_path / "nothing.deathtensors.index.json")


def test_resave_with_fewer_shards_removes_stale_ones(tmp_path):
    dt.save_sharded(tmp_path / "m.deathtensors", {f"t{i}": _f32(4, i) for i in range(3)}, max_shard_bytes=16)
    (tmp_path / "other-00001-of-00003.deathtensors").write_bytes(b"not ours")
    (tmp_path / "m-notes.txt").write_bytes(b"keep")
    new = {"x": _f32(4, 7), "y": _f32(4, 8)}
    dt.save_sharded(tmp_path / "m.deathtensors", new, max_shard_bytes=16, checksum=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "m-00001-of-00002.deathtensors",
        "m-00002-of-00002.deathtensors",
        "m-notes.txt",
        "m.deathtensors.index.json",
        "other-00001-of-00003.deathtensors",
    ]
    with dt.open_sharded(tmp_path / "m.deathtensors") as sr:
        assert sr.keys() == ["x", "y"]
        assert sr.verify() is True
        assert torch.equal(sr.get_tensor("y"), new["y"])


def test_failed_save_keeps_the_old_checkpoint_and_leaves_no_partial_shards(tmp_path, monkeypatch):
    old = {f"t{i}": _f32(4, i) for i in range(3)}
    dt.save_sharded(tmp_path / "m.deathtensors", old, max_shard_bytes=16, checksum=True)
    before = sorted(p.name for p in tmp_path.iterdir())
    real_save = dt.save
    calls = []

    def failing_save(path, *args, **kwargs):
        calls.append(os.path.basename(path))
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_save(path, *args, **kwargs)

    monkeypatch.setattr(dt, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        dt.save_sharded(tmp_path / "m.deathtensors", {f"n{i}": _f32(4, i) for i in range(3)}, max_shard_bytes=16)
    # The new shards go to pending names, never over the shards the old index names.
    assert len(calls) == 2
    assert all(re.fullmatch(r"m-0000[12]-of-00003\.\w+\.deathtensors", c) for c in calls), calls
    # The old checkpoint is untouched and nothing of the failed save is left.
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    with dt.open_sharded(tmp_path / "m.deathtensors") as sr:
        assert sr.verify() is True
        assert sr.keys() == list(old)
        for name, t in old.items():
            assert torch.equal(sr.get_tensor(name), t)


def test_a_single_file_at_the_base_path_is_refused_and_kept(tmp_path):
    """Regression: save then save_sharded to one path left the single file,
    which the CLI, dt.diff and Schema took for the path, hiding the checkpoint.
    It is refused, and nothing is removed (another checkpoint's shard, or the
    file the tensors came from, may be what is there)."""
    base = tmp_path / "m.deathtensors"
    dt.save(base, {"old": _f32(2, 0)})
    before = base.read_bytes()
    new = {f"t{i}": _f32(4, i) for i in range(3)}
    with pytest.raises(dt.InvalidArgumentError, match="is a single .deathtensors file"):
        dt.save_sharded(base, new, max_shard_bytes=16)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.deathtensors"] and base.read_bytes() == before
    # Another base path whose index and shards sit beside it: the file stays, both read.
    dt.save_sharded(tmp_path / "m", new, max_shard_bytes=16)
    with dt.open(base) as f:
        assert f.keys() == ["old"]
    with dt.open_sharded(tmp_path / "m") as sr:
        assert sr.keys() == list(new)
    # A shard of another checkpoint is a single file too: never removed.
    shard = tmp_path / "m-00001-of-00003.deathtensors"
    with pytest.raises(dt.InvalidArgumentError):
        dt.save_sharded(shard, new, max_shard_bytes=16)
    with dt.open_sharded(tmp_path / "m") as sr:
        assert all(torch.equal(sr.get_tensor(k), v) for k, v in new.items())


def test_a_safetensors_index_is_refused_when_opened_with_the_way_to_convert_it(tmp_path):
    """Regression: open_sharded took a Hugging Face index and failed only when
    a tensor was read, with "not a deathtensors file" of its first shard."""
    st = pytest.importorskip("safetensors.torch")
    st.save_file({"a": _f32(3)}, str(tmp_path / "model-00001-of-00001.safetensors"))
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"metadata": {}, "weight_map": {"a": "model-00001-of-00001.safetensors"}}))
    with pytest.raises(dt.FormatError, match="safetensors index .*from_safetensors"):
        dt.open_sharded(index)
    for prefix in cli_commands().values():
        result = run_cli(prefix, "info", str(index))
        assert result.returncode == 1 and b"safetensors index" in result.stderr, result.stderr
    # The way out it names works.
    converted = dt.from_safetensors(index, tmp_path / "model.deathtensors")
    with dt.open_sharded(converted) as sr:
        assert torch.equal(sr.get_tensor("a"), _f32(3))


@pytest.mark.parametrize("name", ["ck.json", "ck.index.json", "ck.dt.index.json"])
def test_a_json_path_other_than_the_index_name_is_refused(tmp_path, name):
    """Regression: save_sharded("ck.json") wrote ck.json.deathtensors.index.json,
    and open_sharded("ck.json") then looked for the index ck.json."""
    with pytest.raises(dt.InvalidArgumentError, match=r"ends in \.json.*ck\.deathtensors\.index\.json"):
        dt.save_sharded(tmp_path / name, {"a": _f32(2)})
    assert list(tmp_path.iterdir()) == []
    # The index name itself is a path both take.
    dt.save_sharded(tmp_path / "ck.deathtensors.index.json", {"a": _f32(2)})
    with dt.open_sharded(tmp_path / "ck.deathtensors.index.json") as sr:
        assert sr.keys() == ["a"]


def test_global_metadata_nested_to_the_limit_opens(tmp_path):
    """Regression: the index holds the global metadata one level deeper than
    a header does, and its reader applied the header's depth limit, so
    open_sharded refused a checkpoint save_sharded had just written."""
    levels = 130
    while True:  # the deepest global metadata that save_sharded accepts
        deep: object = 1
        for _ in range(levels):
            deep = [deep]
        try:
            dt.save_sharded(tmp_path / "m.deathtensors", {"a": _f32(4)}, global_metadata={"deep": deep})
            break
        except dt.InvalidArgumentError as e:
            assert "nested too deeply" in str(e)
            levels -= 1
    assert levels > 100
    with dt.open_sharded(tmp_path / "m.deathtensors") as sr:
        assert sr.metadata() == {"deep": deep}
        assert torch.equal(sr.get_tensor("a"), _f32(4))


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_an_index_nested_past_the_limit_is_refused_without_recursing(tmp_path, opener):
    """The depth bound is the strict walk's own (serde_json's limit is off), so
    it must refuse hostile nesting before it recurses into it."""
    index = tmp_path / "m.deathtensors.index.json"
    for depth in (100_000, 128):  # 128 inside the top-level object: one level past an index's 128
        index.write_text('{"metadata": ' + opener * depth)
        with pytest.raises(dt.FormatError, match="recursion limit exceeded"):
            dt.open_sharded(index)


def test_verify_finds_a_shard_holding_tensors_the_index_does_not_name(tmp_path):
    """Regression: a shard with an extra tensor (a shard of another
    checkpoint, or tampering) verified, with total_size or without."""
    tensors = {f"t{i}": _f32(4, i) for i in range(4)}
    dt.save_sharded(tmp_path / "m.deathtensors", tensors, max_shard_bytes=32, checksum=True)
    shard = tmp_path / "m-00001-of-00002.deathtensors"
    with dt.open(shard) as f:
        kept = {k: f.get_tensor(k) for k in f.keys()}
    dt.save(shard, {**kept, "stowaway": _f32(4, 9)}, checksum=True)
    with dt.open_sharded(tmp_path / "m.deathtensors") as sr:
        with pytest.raises(dt.FormatError, match="stowaway.*the index does not place it in this shard"):
            sr.verify()
    for prefix in cli_commands().values():
        result = run_cli(prefix, "verify", str(tmp_path / "m.deathtensors"))
        assert result.returncode == 1 and b"stowaway" in result.stderr, result.stderr


def test_cli_stats_of_an_unknown_name_says_where_it_looked(tmp_path):
    """Regression: stats of a checkpoint said 'no tensor named "nope" in the file'."""
    dt.save_sharded(tmp_path / "m.deathtensors", {"a": _f32(4), "b": _f32(4)}, max_shard_bytes=16)
    shard = tmp_path / "m-00001-of-00002.deathtensors"
    for prefix in cli_commands().values():
        for path, named in ((tmp_path / "m.deathtensors", "m.deathtensors.index.json"), (shard, shard.name)):
            result = run_cli(prefix, "stats", str(path), "nope")
            err = result.stderr.decode()
            assert result.returncode == 2, err
            assert f'{named}: no tensor named "nope"' in err and "in the file" not in err, err


def test_shard_names_are_file_names_not_paths_to_expand(tmp_path, monkeypatch):
    """Regression: a shard named "s$HOME.deathtensors" by the index was opened
    as "s/root.deathtensors" ($HOME expanded), unlike the CLI."""
    monkeypatch.setenv("DT_SHARD_VAR", "elsewhere")
    dt.save(tmp_path / "x.deathtensors", {"a": _f32(3)}, checksum=True)
    os.rename(tmp_path / "x.deathtensors", tmp_path / "s$DT_SHARD_VAR.deathtensors")
    index = tmp_path / "m.deathtensors.index.json"
    doc = {"metadata": {"format": "deathtensors"}, "weight_map": {"a": "s$DT_SHARD_VAR.deathtensors"}}
    index.write_text(json.dumps(doc))
    with dt.open_sharded(index) as sr:
        assert torch.equal(sr.get_tensor("a"), _f32(3))
        assert sr.verify() is True
    assert dt.Schema().expect("a", shape=[3]).validate(index)
    out = dt.to_safetensors(index, tmp_path / "out")
    assert os.path.exists(out)


def test_a_damaged_chunk_read_through_a_checkpoint_names_its_shard(tmp_path):
    """Regression: get_tensor of a damaged shard said 'tensor "b": chunk 0 ...
    is corrupt' without saying which shard."""
    half = torch.full((100_000,), 0.5)
    dt.save_sharded(tmp_path / "m.deathtensors", {"a": half, "b": half + 1}, max_shard_bytes=1 << 19, compress=True)
    shard = tmp_path / "m-00002-of-00002.deathtensors"
    lay = layout(shard)
    offset, _, _, planes = lay.tensor("b")["chunks"][0]
    raw = bytearray(lay.raw)
    raw[lay.data_start + offset + sum(planes[:-1]) + planes[-1] // 2] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with dt.open_sharded(tmp_path / "m.deathtensors") as sr:
        for read in (lambda: sr.get_tensor("b"), lambda: sr.stats("b"), sr.get_tensors, sr.all_stats):
            with pytest.raises(dt.FormatError, match="^shard 'm-00002-of-00002.deathtensors': .*corrupt"):
                read()
        assert torch.equal(sr.get_tensor("a"), half)  # the other shard reads


def test_a_bad_shard_header_names_the_shard_once(tmp_path):
    """The core names the file of a bad header now; the shard's error does not
    repeat its path after its name (it read "shard 'x': /path/x: invalid header")."""
    dt.save_sharded(tmp_path / "m.deathtensors", {"a": _f32(4), "b": _f32(4)}, max_shard_bytes=16)
    shard = tmp_path / "m-00001-of-00002.deathtensors"
    shard.write_bytes(shard.read_bytes().replace(b'"tensors"', b'"tensorz"', 1))
    with dt.open_sharded(tmp_path / "m.deathtensors") as sr:
        with pytest.raises(dt.FormatError) as caught:
            sr.get_tensor("a")
    assert str(caught.value).startswith("shard 'm-00001-of-00002.deathtensors': invalid header"), caught.value
    assert str(tmp_path) not in str(caught.value)


def _compact_index_size(index: Path) -> int:
    return len(json.dumps(json.loads(index.read_text()), ensure_ascii=False, separators=(",", ":")).encode()) + 1


def test_an_index_is_written_compact_when_indented_it_would_pass_the_read_limit(tmp_path, monkeypatch):
    """Regression: save_sharded wrote an indented index past MAX_INDEX_BYTES,
    which open_sharded (and the CLI) then refused. Here the file system has no
    hard links, so the index that stays is the one naming the pending shards
    (each name 9 characters longer than its final one)."""
    tensors = {f"layer.{i}.weight": _f32(1, i) for i in range(300)}
    (tmp_path / "probe").mkdir()
    dt.save_sharded(tmp_path / "probe" / "m.deathtensors", tensors, max_shard_bytes=400)
    final_compact = _compact_index_size(tmp_path / "probe" / "m.deathtensors.index.json")
    # Compact, the pending index (9 more bytes an entry) fits; indented (6 more again) it does not.
    limit = final_compact + 12 * len(tensors)
    monkeypatch.setattr(_sharded, "MAX_INDEX_BYTES", limit)

    def no_hard_links(src, dst):
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(_sharded, "_link_over", no_hard_links)
    dt.save_sharded(tmp_path / "m.deathtensors", tensors, max_shard_bytes=400)
    index = tmp_path / "m.deathtensors.index.json"
    assert final_compact < index.stat().st_size <= limit
    with dt.open_sharded(tmp_path / "m.deathtensors") as sr:
        assert sr.keys() == list(tensors)
        assert torch.equal(sr.get_tensor("layer.299.weight"), tensors["layer.299.weight"])


def test_an_index_over_the_read_limit_even_compact_is_refused_and_nothing_changes(tmp_path, monkeypatch):
    old = {"a": _f32(2, 0)}
    dt.save_sharded(tmp_path / "m.deathtensors", old, max_shard_bytes=8)
    before = sorted(p.name for p in tmp_path.iterdir())
    index = tmp_path / "m.deathtensors.index.json"
    tensors = {f"layer.{i}.weight": _f32(1, i) for i in range(100)}
    monkeypatch.setattr(_sharded, "MAX_INDEX_BYTES", 2000)
    with pytest.raises(dt.InvalidArgumentError, match="over the 2000 an index may have"):
        dt.save_sharded(tmp_path / "m.deathtensors", tensors, max_shard_bytes=400)
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert index.stat().st_size <= 2000
    with dt.open_sharded(tmp_path / "m.deathtensors") as sr:
        assert sr.keys() == ["a"]


# -- arguments ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [0, -1, 1.5, 1e9, "10", None, True])
def test_bad_max_shard_bytes(tmp_path, limit):
    with pytest.raises(dt.InvalidArgumentError, match="max_shard_bytes"):
        dt.save_sharded(tmp_path / "m", {"a": _f32(2)}, max_shard_bytes=limit)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"tensors": [("a", 1)]},
        {"tensors": {"a": [1.0, 2.0]}},
        {"tensors": {1: torch.zeros(1)}},
        {"metadata": {"nope": {"x": 1}}},
        {"metadata": {"a": {"x": float("nan")}}},
        {"global_metadata": ["not", "a", "dict"]},
        {"compress": 3},
        # Sparse COO is saved (test_sparse_tensors_are_sharded_with_their_indices); CSR is not.
        {"tensors": {"a": torch.zeros(2), "s": torch.eye(2).to_sparse_csr()}},
    ],
)
def test_bad_arguments_write_nothing(tmp_path, kwargs):
    args = {"tensors": {"a": _f32(2), "b": _f32(2)}, **kwargs}
    with pytest.raises(dt.InvalidArgumentError):
        dt.save_sharded(tmp_path / "m.deathtensors", args.pop("tensors"), max_shard_bytes=8, **args)
    assert list(tmp_path.iterdir()) == []


# -- reading -----------------------------------------------------------------------------------------


@pytest.fixture
def small(tmp_path):
    tensors = {f"t{i}": _f32(8, i) for i in range(6)}  # 32 bytes each, two per 64-byte shard
    shards = dt.save_sharded(tmp_path / "s.deathtensors", tensors, max_shard_bytes=64, checksum=True, compress=True)
    assert len(shards) == 3
    return tmp_path, tensors, [os.path.basename(p) for p in shards]


@pytest.mark.parametrize("compress", [False, True])
def test_rows_bytes_stats_and_mmap_come_from_the_one_shard(tmp_path, compress):
    """The DtFile readers beyond get_tensor work on a checkpoint too, each opening only its shard."""
    tensors = {f"w{i}": torch.randn(40, 6, generator=torch.Generator().manual_seed(i)) for i in range(4)}
    tensors["ids"] = torch.arange(10, dtype=torch.int64)
    dt.save_sharded(tmp_path / "c.deathtensors", tensors, max_shard_bytes=1000, compress=compress)
    with dt.open_sharded(tmp_path / "c.deathtensors") as sr:
        assert len(sr.shards()) > 2
        assert torch.equal(sr.get_tensor_slice("w2", 5, 3), tensors["w2"][5:8])
        assert sr.opened_shards() == [sr.which_shard("w2")]
        assert torch.equal(sr.get_slice("w2")[np.int64(-1)], tensors["w2"][-1])
        assert torch.equal(sr.get_slice("w3")[::7, 1:3], tensors["w3"][::7, 1:3])
        assert sr.get_bytes("ids") == tensors["ids"].numpy().tobytes()
        assert sr.is_sparse("ids") is False
        st = sr.stats("w1")
        assert st["count"] == 240 and st["max"] == pytest.approx(float(tensors["w1"].max()))
        every = sr.all_stats()
        assert list(every) == list(tensors) and every["ids"]["max"] == 9
        if compress:
            with pytest.raises(dt.InvalidArgumentError):
                sr.get_tensor_mmap("w0")
        else:
            assert torch.equal(sr.get_tensor_mmap("w0"), tensors["w0"])
        with pytest.raises(dt.TensorNotFoundError):
            sr.stats("nope")


def test_all_stats_takes_each_tensor_from_the_shard_the_index_names(tmp_path):
    """Regression: a shard that also held a stale copy of a tensor the index
    places elsewhere gave all_stats() that copy (stats() and get_tensors() did not)."""
    dt.save(tmp_path / "s1.deathtensors", {"a": torch.tensor([0.0, 1.0, 2.0])})
    dt.save(tmp_path / "s2.deathtensors", {"c": torch.ones(2), "a": torch.full((3,), 7.0)})
    index = tmp_path / "m.deathtensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "s1.deathtensors", "c": "s2.deathtensors"}}))
    with dt.open_sharded(index) as sr:
        assert sr.stats("a")["mean"] == 1.0
        every = sr.all_stats()
        assert list(every) == ["a", "c"] and every["a"]["mean"] == 1.0


def test_whole_checkpoint_reads_work_under_a_low_open_file_limit(tmp_path):
    """get_tensors, all_stats and verify visit the shards not open yet one at a
    time: 120 shards under a limit of 48 open files (get_tensors used to keep
    every shard open and fail with EMFILE). Shards already open stay cached."""
    import subprocess
    import sys

    low_limit = open_file_limit(48)
    tensors = {f"t{i}": torch.full((16,), float(i)) for i in range(120)}
    dt.save_sharded(tmp_path / "m.deathtensors", tensors, max_shard_bytes=64, checksum=True)
    script = f"""
import deathtensors as dt
with dt.open_sharded({str(tmp_path / "m.deathtensors")!r}, verify=True) as sr:
    kept = sr.get_tensor("t7")
    every = sr.get_tensors()
    assert list(every) == [f"t{{i}}" for i in range(120)]
    assert all(float(t[0]) == i and t.shape == (16,) for i, t in enumerate(every.values()))
    stats = sr.all_stats()
    assert [s["mean"] for s in stats.values()] == [float(i) for i in range(120)]
    assert sr.verify() is True
    assert sr.opened_shards() == [sr.which_shard("t7")]
    every["t3"] += 1  # the tensors outlive their closed shards
    print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, preexec_fn=low_limit, timeout=120)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.strip() == b"ok"


def test_a_verifying_reader_hashes_each_shard_once(small, monkeypatch):
    """verify=True checks a shard's footer when the reader first opens it; the
    whole-checkpoint reads close the shards they open, and opening one again
    does not hash it again. An explicit verify() always does."""
    folder, tensors, names = small
    hashed: list = []
    real = dt.DtFile.verify

    def counting(self):
        hashed.append(os.path.basename(self.path))
        return real(self)

    monkeypatch.setattr(dt.DtFile, "verify", counting)
    with dt.open_sharded(folder / "s.deathtensors", verify=True) as sr:
        sr.get_tensors()
        sr.all_stats()
        sr.get_tensors()
        for name in tensors:
            sr.get_tensor(name)
        assert sorted(hashed) == names
        sr.verify()
        assert sorted(hashed) == sorted(names * 2)


def test_lazy_opening(small):
    folder, tensors, names = small
    with dt.open_sharded(folder / "s.deathtensors") as sr:
        assert sr.opened_shards() == []
        assert sr.keys() == list(tensors) and sr.shards() == names  # the index alone answers these
        assert sr.which_shard("t5") == names[2]
        assert sr.opened_shards() == []
        assert torch.equal(sr.get_tensor("t3"), tensors["t3"])
        assert sr.opened_shards() == [names[1]]
        first = sr._open[names[1]]
        assert torch.equal(sr.get_tensor("t2"), tensors["t2"])
        assert sr._open[names[1]] is first  # cached, not reopened
        assert sr.opened_shards() == [names[1]]
    assert sr.closed and first.closed
    assert sr.opened_shards() == []
    with pytest.raises(ValueError, match="closed"):
        sr.get_tensor("t0")


def test_open_shard_by_name(small):
    folder, tensors, names = small
    with dt.open_sharded(folder / "s.deathtensors") as sr:
        f = sr.open_shard(names[2])
        assert sr.opened_shards() == [names[2]] and sr.open_shard(names[2]) is f
        assert torch.equal(f.get_tensor("t4"), tensors["t4"])
        with pytest.raises(dt.InvalidArgumentError, match="not a shard"):
            sr.open_shard("elsewhere.deathtensors")
    assert f.closed


def test_other_shards_are_never_touched(small):
    folder, tensors, names = small
    os.remove(folder / names[0])
    os.remove(folder / names[2])
    with dt.open_sharded(folder / "s.deathtensors") as sr:
        assert torch.equal(sr.get_tensor("t2"), tensors["t2"])
        assert torch.equal(sr.get_tensor("t3"), tensors["t3"])
        with pytest.raises(FileNotFoundError, match=names[0]) as exc:
            sr.get_tensor("t0")
        assert exc.value.filename == str(folder / names[0])
        with pytest.raises(FileNotFoundError, match=names[0]):
            sr.verify()
        assert sr.opened_shards() == [names[1]]


def test_resave_while_open_never_mixes_versions(small):
    """Regression: a reader opened before a re-save with the same shard names
    used to open the new save's shard lazily and return new tensors beside old ones."""
    folder, tensors, names = small
    newer = {k: v + 100 for k, v in tensors.items()}
    with dt.open_sharded(folder / "s.deathtensors") as sr:
        assert torch.equal(sr.get_tensor("t2"), tensors["t2"])  # opens shard 2 of the first save
        dt.save_sharded(folder / "s.deathtensors", newer, max_shard_bytes=64, checksum=True, compress=True)
        assert sorted(os.listdir(folder)) == sorted(names + ["s.deathtensors.index.json"])  # same names
        # The open shard keeps reading the version the index described...
        assert torch.equal(sr.get_tensor("t3"), tensors["t3"])
        # ...and a shard the new save replaced is refused, not read.
        for name in ("t0", "t5"):
            with pytest.raises(dt.FormatError, match="replaced after .* was opened"):
                sr.get_tensor(name)
        assert sr.opened_shards() == [names[1]]
    with dt.open_sharded(folder / "s.deathtensors") as sr:  # reopened: the new version throughout
        assert all(torch.equal(sr.get_tensor(k), v) for k, v in newer.items())


def test_shard_created_after_open_is_refused(small):
    folder, tensors, names = small
    os.remove(folder / names[0])
    with dt.open_sharded(folder / "s.deathtensors") as sr:
        dt.save(folder / names[0], {"t0": tensors["t0"] * 2, "t1": tensors["t1"]})
        with pytest.raises(dt.FormatError, match="replaced"):
            sr.get_tensor("t0")


def test_index_replaced_while_opening_is_reread(small, monkeypatch):
    """The shards' identities are taken while the index stays the same file."""
    folder, tensors, names = small
    real = _sharded._read_index
    calls = []

    def read_then_resave(path, **kwargs):
        doc = real(path, **kwargs)
        calls.append(path)
        if len(calls) == 1:  # a save lands between reading the index and looking at the shards
            dt.save_sharded(folder / "s.deathtensors", {"n": _f32(8, 9)}, max_shard_bytes=64)
        return doc

    monkeypatch.setattr(_sharded, "_read_index", read_then_resave)
    with dt.open_sharded(folder / "s.deathtensors") as sr:
        assert len(calls) == 2 and sr.keys() == ["n"]
        assert torch.equal(sr.get_tensor("n"), _f32(8, 9))


def test_unknown_names(small):
    folder, tensors, _ = small
    with dt.open_sharded(folder / "s.deathtensors.index.json") as sr:
        assert "t1" in sr and "nope" not in sr and 3 not in sr
        assert len(sr) == 6
        for call in (sr.get_tensor, sr.which_shard, sr.info):
            with pytest.raises(dt.TensorNotFoundError, match="nope"):
                call("nope")
        with pytest.raises(KeyError):
            sr.get_tensor("nope")
        assert sr.opened_shards() == []


def test_verify_passes_then_names_the_flipped_shard(small):
    folder, tensors, names = small
    with dt.open_sharded(folder / "s.deathtensors", verify=True) as sr:
        assert sr.verify() is True
        assert torch.equal(sr.get_tensor("t4"), tensors["t4"])
    data = bytearray((folder / names[1]).read_bytes())
    data[-40] ^= 0x01  # inside the compressed data, before the 32-byte footer
    (folder / names[1]).write_bytes(bytes(data))
    with dt.open_sharded(folder / "s.deathtensors") as sr:
        with pytest.raises(dt.ChecksumError, match=names[1]):
            sr.verify()
    with dt.open_sharded(folder / "s.deathtensors", verify=True) as sr:
        assert torch.equal(sr.get_tensor("t0"), tensors["t0"])  # an intact shard reads
        with pytest.raises(dt.ChecksumError, match=names[1]):
            sr.get_tensor("t2")
        assert sr.opened_shards() == [names[0]]  # the bad shard is not cached


def test_verify_without_checksum_names_the_shard(tmp_path):
    dt.save_sharded(tmp_path / "m", {"a": _f32(2), "b": _f32(2)}, max_shard_bytes=8)
    with dt.open_sharded(tmp_path / "m") as sr:
        with pytest.raises(dt.NoChecksumError, match="m-00001-of-00002"):
            sr.verify()
        assert torch.equal(sr.get_tensor("b"), _f32(2))


def test_verify_checks_index_against_shards(small):
    folder, _, names = small
    idx = _index(folder, "s")
    idx["metadata"]["total_size"] = 1
    (folder / "s.deathtensors.index.json").write_text(json.dumps(idx))
    with dt.open_sharded(folder / "s.deathtensors") as sr:
        with pytest.raises(dt.FormatError, match="total_size"):
            sr.verify()
    idx = _index(folder, "s")
    idx["weight_map"]["t0"] = names[2]  # t0 actually lives in the first shard
    (folder / "s.deathtensors.index.json").write_text(json.dumps(idx))
    with dt.open_sharded(folder / "s.deathtensors") as sr:
        with pytest.raises(dt.FormatError, match="t0"):
            sr.get_tensor("t0")


def test_corrupt_shard_header_is_format_error_naming_shard(small):
    folder, _, names = small
    (folder / names[2]).write_bytes(b"garbage")
    with dt.open_sharded(folder / "s.deathtensors") as sr:
        with pytest.raises(dt.FormatError, match=names[2]):
            sr.get_tensor("t4")


def test_threads_share_a_reader(small):
    from concurrent.futures import ThreadPoolExecutor

    folder, tensors, names = small
    with dt.open_sharded(folder / "s.deathtensors") as sr:
        with ThreadPoolExecutor(8) as pool:
            got = list(pool.map(sr.get_tensor, [n for n in tensors for _ in range(5)]))
        assert all(torch.equal(g, tensors[n]) for g, n in zip(got, [n for n in tensors for _ in range(5)]))
        assert sr.opened_shards() == names


# -- hostile indexes ---------------------------------------------------------------------------------


@pytest.fixture
def hostile(tmp_path, monkeypatch):
    """A checkpoint folder plus a valid deathtensors file just outside it; records every DtFile opened."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    dt.save_sharded(folder / "m.deathtensors", {"ok": _f32(2)})
    dt.save(tmp_path / "secret.deathtensors", {"ok": _f32(2, 9), "secret": _f32(2, 9)})
    (folder / "sub").mkdir()
    shutil.copy(tmp_path / "secret.deathtensors", folder / "sub" / "dir.deathtensors")
    opened = []
    real = dt.DtFile

    class Recording(real):
        def _open(self, path, verify):  # every way of opening one goes through here
            opened.append(os.path.abspath(path))
            super()._open(path, verify)

    monkeypatch.setattr(dt, "DtFile", Recording)

    def write(doc) -> Path:
        index = folder / "m.deathtensors.index.json"
        if isinstance(doc, (bytes, str)):
            index.write_bytes(doc.encode("utf-8") if isinstance(doc, str) else doc)
        else:
            index.write_text(json.dumps(doc), encoding="utf-8")
        return index

    return folder, write, opened


BAD_SHARD_NAMES = [
    "../../etc/passwd",
    "/etc/passwd",
    "../secret.deathtensors",
    "sub/dir.deathtensors",
    "sub\\dir.deathtensors",
    "..",
    ".",
    "",
    "m-00001-of-00001.deathtensors\x00.txt",
    "C:\\Windows\\system.ini",
    "C:secret.deathtensors",
    "\\\\server\\share\\x.deathtensors",
]


@pytest.mark.parametrize("bad", BAD_SHARD_NAMES)
def test_hostile_shard_names_are_refused(hostile, bad):
    folder, write, opened = hostile
    index = write(
        {"metadata": {"total_size": 16}, "weight_map": {"ok": "m-00001-of-00001.deathtensors", "secret": bad}}
    )
    with pytest.raises(dt.FormatError) as exc:
        dt.open_sharded(index)
    # The name as JSON quotes it (controls escaped), so the message is one safe line.
    assert "secret" in str(exc.value) and json.dumps(bad, ensure_ascii=False) in str(exc.value)
    assert opened == []


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ({"weight_map": ["ok", "m-00001-of-00001.deathtensors"]}, "weight_map"),
        ({"weight_map": "m-00001-of-00001.deathtensors"}, "weight_map"),
        ({"weight_map": None}, "weight_map"),
        ({"metadata": {"total_size": 8}}, "weight_map"),
        ({"weight_map": {"ok": 1}}, "ok"),
        ({"weight_map": {"ok": None}}, "ok"),
        ({"weight_map": {"ok": ["m-00001-of-00001.deathtensors"]}}, "ok"),
        ({"weight_map": {"ok": {"path": "x"}}}, "ok"),
        ([{"weight_map": {}}], "JSON object"),
        ("null", "JSON object"),
        ('"weight_map"', "JSON object"),
        ("{not json", "JSON"),
        ("", "JSON"),
        (b"\xff\xfe{}", "UTF-8"),
        ('{"weight_map": {"ok": "a.deathtensors", "ok": "../secret.deathtensors"}}', "duplicate"),
        ("[" * 100_000 + "]" * 100_000, "JSON"),
        ({"metadata": [], "weight_map": {}}, "metadata"),
        ({"metadata": {"total_size": -1}, "weight_map": {}}, "total_size"),
        ({"metadata": {"total_size": "8"}, "weight_map": {}}, "total_size"),
        ({"metadata": {"format": "safetensors"}, "weight_map": {}}, "format"),
        ({"metadata": {"global_metadata": 3}, "weight_map": {}}, "global_metadata"),
    ],
)
def test_malformed_indexes_are_format_errors(hostile, doc, match):
    _, write, opened = hostile
    index = write(doc)
    with pytest.raises(dt.FormatError, match=match):
        dt.open_sharded(index)
    assert opened == []


def test_oversized_index_is_refused_before_parsing(hostile, monkeypatch):
    folder, write, opened = hostile
    index = write({"weight_map": {"ok": "m-00001-of-00001.deathtensors"}, "metadata": {"pad": "x" * 5000}})
    monkeypatch.setattr(_sharded, "MAX_INDEX_BYTES", 4096)
    with pytest.raises(dt.FormatError, match="4096"):
        dt.open_sharded(index)
    monkeypatch.setattr(_sharded, "MAX_INDEX_BYTES", 100 * 1024 * 1024)
    with dt.open_sharded(index) as sr:
        assert torch.equal(sr.get_tensor("ok"), _f32(2))
    assert opened == [str(folder / "m-00001-of-00001.deathtensors")]


def test_index_that_is_a_folder_is_refused(hostile):
    folder, _, _ = hostile
    (folder / "dir.index.json").mkdir()
    with pytest.raises((dt.FormatError, IsADirectoryError)):
        dt.open_sharded(folder / "dir.index.json")


def test_hf_style_index_without_format_key_opens(hostile):
    folder, write, opened = hostile
    index = write({"metadata": {"total_size": 8}, "weight_map": {"ok": "m-00001-of-00001.deathtensors"}})
    with dt.open_sharded(index) as sr:
        assert sr.verify is not None and sr.keys() == ["ok"]
        assert torch.equal(sr.get_tensor("ok"), _f32(2))
    assert opened == [str(folder / "m-00001-of-00001.deathtensors")]


def test_public_api_names():
    for name in ("save_sharded", "open_sharded", "ShardedReader"):
        assert name in dt.__all__ and hasattr(dt, name)
    assert dt.open_sharded.__doc__ and dt.save_sharded.__doc__ and dt.ShardedReader.verify.__doc__


def test_open_sharded_takes_index_path_by_keyword(tmp_path):
    """The spec's signature: open_sharded(index_path, verify=False)."""
    base = tmp_path / "kw.deathtensors"
    dt.save_sharded(base, {"w": _f32(8)}, max_shard_bytes=1 << 20, checksum=True)
    with dt.open_sharded(index_path=tmp_path / "kw.deathtensors.index.json", verify=True) as sr:
        assert torch.equal(sr.get_tensor("w"), _f32(8))


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_the_index_is_as_readable_as_its_shards(tmp_path, umask):
    """The index used to be written 0600 (mkstemp's mode) beside 0644 shards,
    so other users could read the shards but not open the checkpoint."""
    old = os.umask(umask)
    try:
        dt.save_sharded(tmp_path / "m.deathtensors", {"a": _f32(300), "b": _f32(300, 1)}, max_shard_bytes=1000)
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert len(modes) == 3, modes
    assert set(modes.values()) == {0o666 & ~umask}, {k: oct(v) for k, v in modes.items()}
    # Saving again over a file keeps that file's bits, index included.
    index = tmp_path / "m.deathtensors.index.json"
    index.chmod(0o640)
    dt.save_sharded(tmp_path / "m.deathtensors", {"a": _f32(300), "b": _f32(300, 1)}, max_shard_bytes=1000)
    assert index.stat().st_mode & 0o777 == 0o640


def test_opening_a_checkpoint_as_one_file_points_to_open_sharded(tmp_path):
    dt.save_sharded(tmp_path / "ck.deathtensors", {"w": _f32(8)})
    with pytest.raises(FileNotFoundError, match="open_sharded") as e:
        dt.open(tmp_path / "ck.deathtensors")
    assert e.value.errno == 2
    with pytest.raises(dt.FormatError, match="the magic is.*open_sharded"):
        dt.open(tmp_path / "ck.deathtensors.index.json")
    # Not a checkpoint: the plain error, no hint.
    with pytest.raises(FileNotFoundError) as e:
        dt.open(tmp_path / "other.deathtensors")
    assert "open_sharded" not in str(e.value)


@pytest.mark.parametrize("limit", [10**7, 300_000, 1])
def test_tied_weights_are_stored_once_in_their_targets_shard(tmp_path, limit):
    # The planner counted a tie's bytes again and could put it in another shard,
    # where it was stored twice and read back untied.
    embed = torch.randn(1000, 64)
    tensors = {"embed": embed, "l0": torch.randn(64, 64), "l1": torch.randn(64, 64), "lm_head": embed}
    paths = dt.save_sharded(tmp_path / "m", tensors, max_shard_bytes=limit)
    with dt.open_sharded(tmp_path / "m") as sr:
        assert sr.which_shard("lm_head") == sr.which_shard("embed")
        got = sr.get_tensors()
        assert got["lm_head"].data_ptr() == got["embed"].data_ptr()
        assert torch.equal(got["lm_head"], embed) and list(got) == list(tensors)
    stored = sum(os.path.getsize(p) for p in paths)
    assert stored < embed.numel() * 4 + 2 * 64 * 64 * 4 + 64 * 1024, stored


def test_sparse_tensors_are_sharded_with_their_indices(tmp_path):
    # save and append took sparse COO tensors; save_sharded refused them ("only dense").
    dense = {f"w{i}": torch.randn(32, 32) for i in range(3)}
    sp = torch.sparse_coo_tensor([[0, 5, 9], [1, 2, 3]], [1.0, -2.0, 3.0], (10, 4), check_invariants=True)
    uncoalesced = torch.sparse_coo_tensor([[1, 1], [0, 0]], [2.0, 3.0], (2, 2), check_invariants=True)
    tensors = {"w0": dense["w0"], "sp": sp, "w1": dense["w1"], "un": uncoalesced, "w2": dense["w2"]}
    dt.save_sharded(tmp_path / "m", tensors, max_shard_bytes=32 * 32 * 4)
    with dt.open_sharded(tmp_path / "m") as sr:
        assert sr.keys() == list(tensors)
        assert sr.is_sparse("sp") and not sr.is_sparse("w1")
        assert torch.equal(sr.get_tensor("sp").to_dense(), sp.to_dense())
        assert torch.equal(sr.get_tensor("un").to_dense(), uncoalesced.to_dense())
        got = sr.get_tensors()
        assert all(torch.equal(got[n], t) for n, t in dense.items())
        assert torch.equal(got["sp"].to_dense(), sp.to_dense())


def test_a_checkpoint_with_tied_and_sparse_tensors_verifies(tmp_path):
    """Regression: verify counted a tied name's bytes twice and left out sparse indices,
    so a checkpoint save_sharded had just written failed with a total_size mismatch."""
    w = torch.randn(16, 4)
    sp = torch.sparse_coo_tensor([[0, 5, 9], [1, 2, 3]], [1.0, -2.0, 3.0], (10, 4), check_invariants=True)
    tensors = {"w": w, "head": w, "sp": sp, "b": torch.ones(3)}
    dt.save_sharded(tmp_path / "m", tensors, max_shard_bytes=256, checksum=True)
    with dt.open_sharded(tmp_path / "m") as sr:
        assert sr.total_size == 16 * 4 * 4 + 3 * 4 + 3 * 2 * 8 + 3 * 4
        assert sr.verify()
    result = run_cli(cli_commands()["module"], "verify", str(tmp_path / "m"))
    assert result.returncode == 0, result.stderr
    # A total_size that is off by the tied copy is still caught.
    index = tmp_path / "m.deathtensors.index.json"
    doc = json.loads(index.read_text())
    doc["metadata"]["total_size"] += 16 * 4 * 4
    index.write_text(json.dumps(doc))
    with dt.open_sharded(tmp_path / "m") as sr, pytest.raises(dt.FormatError, match="total_size"):
        sr.verify()
    assert run_cli(cli_commands()["module"], "verify", str(tmp_path / "m")).returncode == 1


def test_checkpoint_names_that_are_folders_or_empty_are_refused(tmp_path, monkeypatch):
    """Regression: '.', '..' and 'c/.' were taken as checkpoint names (writing hidden
    '.-00001-of-00001.deathtensors' and '..deathtensors.index.json'), and an empty
    destination was reported with the source's default name."""
    monkeypatch.chdir(tmp_path)
    tensors = {"a": torch.ones(2)}
    for name in (".", "..", "c/.", str(tmp_path) + "/"):
        with pytest.raises(dt.InvalidArgumentError, match="names a folder"):
            dt.save_sharded(name, tensors)
    with pytest.raises(dt.InvalidArgumentError, match="is empty"):
        dt.save_sharded("", tensors)
    dt.save_sharded("m", tensors)
    with pytest.raises(dt.InvalidArgumentError, match="destination '' is empty"):
        dt.to_safetensors("m", "")
    with pytest.raises(dt.InvalidArgumentError, match="destination '..' names a folder"):
        dt.to_safetensors("m", "..")
    assert sorted(os.listdir(tmp_path)) == ["m-00001-of-00001.deathtensors", "m.deathtensors.index.json"]
    # A folder that does not exist is what the error names.
    with pytest.raises(FileNotFoundError) as e:
        dt.save_sharded(tmp_path / "no" / "m", tensors)
    assert e.value.filename == str(tmp_path / "no")


def test_two_saves_of_one_checkpoint_never_leave_an_index_without_its_shards(tmp_path, monkeypatch):
    """Regression: two processes saving one checkpoint with different shard counts
    could both succeed and leave an index whose shards were all gone: each save's
    cleanup removed the final names of another count, the other save's included.
    Here save B pauses between its commit and its cleanup while save A runs."""
    import threading

    path = tmp_path / "m.deathtensors"
    a = {f"t{i}": torch.full((256,), float(i)) for i in range(4)}
    b = {f"t{i}": torch.full((256,), -float(i)) for i in range(4)}
    paused, a_done = threading.Event(), threading.Event()
    real = _sharded._remove_orphans

    def slow_cleanup(*args, **kwargs):
        if threading.current_thread().name == "save-b":
            paused.set()
            a_done.wait(timeout=2)  # with the commit serialized, A waits for B instead
        return real(*args, **kwargs)

    monkeypatch.setattr(_sharded, "_remove_orphans", slow_cleanup)
    errors = []

    def save_b():
        try:
            dt.save_sharded(path, b, max_shard_bytes=1024)  # 4 shards
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    thread = threading.Thread(target=save_b, name="save-b")
    thread.start()
    assert paused.wait(timeout=30)
    dt.save_sharded(path, a, max_shard_bytes=2048)  # 2 shards
    a_done.set()
    thread.join(timeout=30)
    assert not errors
    with dt.open_sharded(path) as sr:
        got = sr.get_tensors()
    assert got.keys() == a.keys()
    assert all(torch.equal(got[n], a[n]) for n in a), "the last save to commit is the one on disk"
