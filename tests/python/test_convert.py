"""Conversion to and from safetensors, checked against the real ``safetensors`` package.

Files we export must load with ``safetensors.torch.load_file`` into identical
tensors; files ``safetensors.torch.save_file`` writes must import exactly;
metadata of every JSON type must come back; Hugging Face sharded checkpoints
convert both ways; the CLI's ``convert`` commands work and fail cleanly.
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from _dtutil import DTYPES, cli_commands, peak_growth_mib, random_bytes, run_cli, torch_bytes, torch_from_bytes

import deathtensors as dt

torch = pytest.importorskip("torch")
st_torch = pytest.importorskip("safetensors.torch")
safe_open = pytest.importorskip("safetensors").safe_open

SHARED = [d for d in DTYPES if d[0] != "C128"]
SHAPES = [(), (0, 3), (37,), (2, 3, 5)]


def _tensors_of_every_dtype(seed: int = 0) -> dict:
    out = {}
    for i, (dtype_id, torch_name, _np, size) in enumerate(SHARED):
        for j, shape in enumerate(SHAPES):
            n = 1
            for d in shape:
                n *= d
            raw = random_bytes(n * size, seed + 10 * i + j, bool_like=dtype_id == "BOOL")
            out[f"t{j}.{dtype_id}"] = torch_from_bytes(raw, torch_name, shape)
    return out


def _same(a, b) -> bool:
    """Same dtype, shape and bytes (NaN-safe)."""
    return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape) and torch_bytes(a) == torch_bytes(b)


# -- single files ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True, "lz4"])
def test_exported_files_load_in_safetensors_with_identical_tensors(tmp_path, compress):
    tensors = _tensors_of_every_dtype()
    src = tmp_path / "all.deathtensors"
    dt.save(src, tensors, compress=compress, checksum=True)
    out = dt.to_safetensors(src)
    assert out == str(tmp_path / "all.safetensors")
    loaded = st_torch.load_file(out)
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert _same(loaded[name], t), name


def test_torch_equal_on_finite_values_of_float_dtypes(tmp_path):
    base = torch.linspace(-4, 4, 64)
    tensors = {
        "bf16": base.to(torch.bfloat16),
        "f16": base.to(torch.float16),
        "f32": base,
        "f64": base.double(),
        "e4m3": base.to(torch.float8_e4m3fn),
        "e5m2": base.to(torch.float8_e5m2),
        "bool": base > 0,
        "i64": torch.arange(-5, 5),
    }
    src = tmp_path / "f.deathtensors"
    dt.save(src, tensors, compress=True)
    loaded = st_torch.load_file(dt.to_safetensors(src, tmp_path / "f.safetensors"))
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype, name
        assert torch.equal(loaded[name], t), name


def test_an_export_is_laid_out_as_safetensors_writes_and_gives_the_same_bytes_every_time(tmp_path):
    """Regression: the `__metadata__` keys came out in hash-map order, so two
    exports of one file differed byte for byte."""
    tensors = _tensors_of_every_dtype(seed=3)
    src = tmp_path / "m.deathtensors"
    global_md = {f"key{i}": f"value {i}" for i in range(12)}
    dt.save(src, tensors, global_metadata={**global_md, "json": [1, 2]}, metadata={"t0.F32": {"k": 1}})
    first = dt.to_safetensors(src, tmp_path / "a.safetensors")
    again = dt.to_safetensors(src, tmp_path / "b.safetensors")
    with open(first, "rb") as fa, open(again, "rb") as fb:
        assert fa.read() == fb.read()
    # The same tensors in the same places as safetensors' own writer puts them.
    reference = tmp_path / "reference.safetensors"
    st_torch.save_file(tensors, str(reference))
    ours = _header_and_data(first)
    theirs = _header_and_data(reference)
    assert ours[1] == theirs[1]
    meta = ours[0].pop("__metadata__")
    assert ours[0] == theirs[0]
    assert list(meta) == sorted(meta)
    assert {k: meta[k] for k in global_md} == global_md


def _header_and_data(path) -> tuple:
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    assert n % 8 == 0
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def test_an_export_gets_the_mode_of_the_file_it_replaces(tmp_path):
    """Regression: exports were always mode 0600 (the safetensors crate's own
    temporary file was renamed over ours, after our chmod and fsync)."""
    src = tmp_path / "m.deathtensors"
    dt.save(src, {"a": torch.ones(3)})
    umask = os.umask(0o022)
    try:
        out = dt.to_safetensors(src)
        assert os.stat(out).st_mode & 0o777 == 0o644
        os.chmod(out, 0o640)
        dt.to_safetensors(src)
        assert os.stat(out).st_mode & 0o777 == 0o640
    finally:
        os.umask(umask)
    assert sorted(os.listdir(tmp_path)) == ["m.deathtensors", "m.safetensors"]


@pytest.mark.parametrize(
    "names", [["a", "z", "y"], ["z", "y", "a"], ["a", "y", "z"]], ids=["dtype-desc", "empties-first", "sorted"]
)
def test_empty_tensors_of_different_dtypes_keep_their_order_through_safetensors(tmp_path, names):
    """Regression: the order key was left out when the deathtensors order was
    the order safetensors stores tensors in (dtype, then name), but an import
    orders empty tensors, which share an offset, by name: a F32 "z" and an I8
    "y", both empty, came back as y, z."""
    made = {"a": torch.ones(2), "z": torch.zeros(0), "y": torch.zeros(0, dtype=torch.int8)}
    src = tmp_path / "m.deathtensors"
    dt.save(src, {n: made[n] for n in names})
    back = dt.from_safetensors(dt.to_safetensors(src), tmp_path / "back.deathtensors")
    with dt.open(back) as f:
        assert f.keys() == names
        assert all(_same(f.get_tensor(n), made[n]) for n in names)


def test_files_written_by_safetensors_import_exactly(tmp_path):
    tensors = _tensors_of_every_dtype(seed=7)
    tensors["big"] = torch.randn(300, 257)
    src = tmp_path / "hf.safetensors"
    st_torch.save_file(tensors, str(src), metadata={"format": "pt", "note": "{not json}"})
    out = dt.from_safetensors(src)
    assert out == str(tmp_path / "hf.deathtensors")
    with dt.open(out, verify=True) as f:  # checksum=True by default
        assert f.checksum_algorithm() == "sha256"
        assert not f.is_compressed()
        assert f.metadata() == {"format": "pt", "note": "{not json}"}
        assert set(f.keys()) == set(tensors)
        for name, t in tensors.items():
            got = f.get_tensor(name)
            assert _same(got, t), name
            assert f.info(name)["metadata"] == {}
    # Compressed, another checksum: same tensors.
    out2 = dt.from_safetensors(src, tmp_path / "hf2.deathtensors", checksum="blake3", compress="zstd")
    with dt.open(out2, verify=True) as f:
        assert f.codec() == "zstd" and f.checksum_algorithm() == "blake3"
        for name, t in tensors.items():
            assert _same(f.get_tensor(name), t), name
    out3 = dt.from_safetensors(src, tmp_path / "hf3.deathtensors", checksum=False)
    with dt.open(out3) as f:
        assert not f.has_checksum()


def test_round_trip_through_safetensors_is_bit_exact_and_keeps_order(tmp_path):
    tensors = _tensors_of_every_dtype(seed=3)
    names = list(tensors)[::-1]
    tensors = {n: tensors[n] for n in names}
    src = tmp_path / "a.deathtensors"
    dt.save(src, tensors, compress=True, checksum=True)
    st = dt.to_safetensors(src, tmp_path / "a.safetensors")
    back = dt.from_safetensors(st, tmp_path / "b.deathtensors", compress=True)
    with dt.open(back, verify=True) as f:
        assert f.keys() == names
        for name, t in tensors.items():
            assert _same(f.get_tensor(name), t), name


METADATA = {
    "model": "mlp-tiny",
    "epoch": 12,
    "lr": 3e-4,
    "neg": -1,
    "big": 2**64 - 1,
    "flag": True,
    "nothing": None,
    "layers": [64, "gelu", [1.5, None], {"deep": {"er": False}}],
    "cfg": {"a": 1, "b": [True]},
    "json_looking": '{"x": 1}',
    "empty": "",
    "unicode": "ε → ∞",
}


def test_metadata_of_every_json_type_round_trips(tmp_path):
    tensors = {"w": torch.randn(3, 3), "b": torch.zeros(3), "z": torch.ones(2, dtype=torch.int8)}
    per = {"w": {"layer": 1, "init": "kaiming", "scale": [0.5, None]}, "b": {"note": "bias"}}
    src = tmp_path / "m.deathtensors"
    dt.save(src, tensors, metadata=per, global_metadata=METADATA)
    st = dt.to_safetensors(src)
    with safe_open(st, framework="pt") as f:
        raw = f.metadata()
    # safetensors sees strings only: strings as is, other values as JSON text.
    assert all(isinstance(v, str) for v in raw.values())
    assert raw["model"] == "mlp-tiny" and raw["epoch"] == "12" and raw["json_looking"] == '{"x": 1}'
    assert json.loads(raw["cfg"]) == METADATA["cfg"]
    assert set(json.loads(raw["__deathtensors_json__"])) == {k for k, v in METADATA.items() if not isinstance(v, str)}
    assert json.loads(raw["__deathtensors_tensor_metadata__"]) == per
    assert json.loads(raw["__deathtensors_tensor_order__"]) == ["w", "b", "z"]

    back = dt.from_safetensors(st, tmp_path / "m2.deathtensors")
    with dt.open(back) as f:
        assert f.metadata() == METADATA
        assert f.keys() == ["w", "b", "z"]
        for name in tensors:
            assert f.info(name)["metadata"] == per.get(name, {})


def test_c64_converts_both_ways(tmp_path):
    """Regression: safetensors has had C64 since 0.6, but the converter's crate
    (0.6.2) did not, so a C64 safetensors file was "not a valid safetensors file"."""
    c = torch.complex(torch.randn(3, 4), torch.randn(3, 4))
    src = tmp_path / "c.safetensors"
    st_torch.save_file({"c": c, "r": torch.ones(2)}, src)
    mid = tmp_path / "c.deathtensors"
    dt.from_safetensors(src, mid)
    with dt.open(mid) as f:
        assert f.info("c")["dtype"] == "C64"
        assert torch.equal(f.get_tensor("c"), c)
    back = tmp_path / "back.safetensors"
    dt.to_safetensors(mid, back)
    assert torch.equal(st_torch.load_file(back)["c"], c)


def test_c128_is_refused_with_a_clear_error(tmp_path):
    for dtype in (torch.complex128,):
        src = tmp_path / "c.deathtensors"
        dt.save(src, {"ok": torch.ones(2), "spectrum": torch.ones(3, dtype=dtype)})
        dst = tmp_path / "c.safetensors"
        with pytest.raises(dt.InvalidArgumentError) as e:
            dt.to_safetensors(src, dst)
        msg = str(e.value)
        assert "'spectrum'" in msg or '"spectrum"' in msg
        assert "C128" in msg
        assert not dst.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_sparse_is_refused_and_tied_weights_are_copied(tmp_path):
    sp = torch.sparse_coo_tensor([[0, 1], [1, 0]], [1.0, 2.0], (2, 2), check_invariants=True)
    src = tmp_path / "s.deathtensors"
    dt.save_sparse(src, {"sp": sp, "dense": torch.ones(2)})
    with pytest.raises(dt.InvalidArgumentError, match="sparse"):
        dt.to_safetensors(src)
    assert not (tmp_path / "s.safetensors").exists()

    w = torch.randn(4, 4)
    tied = tmp_path / "tied.deathtensors"
    dt.save(tied, {"embed": w, "lm_head": w})
    loaded = st_torch.load_file(dt.to_safetensors(tied))
    assert torch.equal(loaded["embed"], w) and torch.equal(loaded["lm_head"], w)


def test_bad_safetensors_files_raise_format_error_and_write_nothing(tmp_path):
    good = tmp_path / "good.safetensors"
    st_torch.save_file({"a": torch.ones(4)}, str(good))
    raw = good.read_bytes()
    cases = {
        "empty": b"",
        "short": b"\x01\x02",
        "truncated": raw[:-1],
        "garbage": b"\xff" * 64,
        "deathtensors": b"DTLEGION" + b"\0" * 40,
    }
    for what, content in cases.items():
        src = tmp_path / f"{what}.safetensors"
        src.write_bytes(content)
        with pytest.raises(dt.FormatError) as e:
            dt.from_safetensors(src)
        assert f"{what}.safetensors" in str(e.value), what
        assert not (tmp_path / f"{what}.deathtensors").exists(), what
    with pytest.raises(FileNotFoundError):
        dt.from_safetensors(tmp_path / "missing.safetensors")
    with pytest.raises(FileNotFoundError):
        dt.to_safetensors(tmp_path / "missing.deathtensors")


def _handmade_safetensors(path, header, data: bytes):
    """Write a safetensors file by hand (u64 header length, JSON header padded to 8, data)."""
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(len(text).to_bytes(8, "little") + text + data)
    return path


def test_a_valid_file_with_a_dtype_we_lack_is_unsupported_not_corrupt(tmp_path, cli):
    """Regression: safetensors' F8_E8M0 (and F4...) was reported as a corrupt
    file (FormatError, CLI exit 1); it is an unsupported dtype (exit 2)."""
    src = _handmade_safetensors(
        tmp_path / "e8m0.safetensors", {"a": {"dtype": "F8_E8M0", "shape": [2], "data_offsets": [0, 2]}}, b"\x7f\x80"
    )
    with pytest.raises(dt.UnsupportedDtypeError, match='tensor "a" has the safetensors dtype F8_E8M0'):
        dt.from_safetensors(src)
    r = cli("convert", "from-safetensors", str(src), str(tmp_path / "x.deathtensors"))
    assert r.returncode == 2 and b"F8_E8M0" in r.stderr, r.stderr
    assert not (tmp_path / "e8m0.deathtensors").exists() and not (tmp_path / "x.deathtensors").exists()


def test_converting_a_file_onto_itself_is_refused(tmp_path, cli):
    """Regression: ``from_safetensors(p, p)`` replaced the safetensors file with
    its deathtensors copy under the same name (and ``to_safetensors`` likewise)."""
    st = tmp_path / "m.safetensors"
    st_torch.save_file({"a": torch.arange(4.0)}, str(st))
    original = st.read_bytes()
    link = tmp_path / "link.safetensors"
    link.symlink_to(st)
    for dst in (st, link):
        with pytest.raises(dt.InvalidArgumentError, match="same file"):
            dt.from_safetensors(st, dst)
        r = cli("convert", "from-safetensors", str(st), str(dst))
        assert r.returncode == 2 and b"same file" in r.stderr, r.stderr
    assert st.read_bytes() == original
    ours = tmp_path / "m.deathtensors"
    dt.from_safetensors(st, ours)
    before = ours.read_bytes()
    with pytest.raises(dt.InvalidArgumentError, match="same file"):
        dt.to_safetensors(ours, ours)
    assert cli("convert", "to-safetensors", str(ours), str(ours)).returncode == 2
    assert ours.read_bytes() == before


def test_metadata_nested_past_the_header_limit_is_the_source_files_fault(tmp_path, cli):
    """Regression: a safetensors file whose reserved per-tensor metadata nests
    124 levels deep was refused as InvalidArgumentError (a usage error, CLI
    exit 2); the file is bad: FormatError naming it, exit 1."""
    deep = "[" * 124 + "]" * 124  # parses (serde_json stops at 128), too deep for a header
    meta = {"__deathtensors_tensor_metadata__": json.dumps({"a": {"k": json.loads(deep)}})}
    header = {"__metadata__": meta, "a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]}}
    src = _handmade_safetensors(tmp_path / "deep.safetensors", header, b"\x01\x02")
    with pytest.raises(dt.FormatError, match="deep.safetensors.*nested too deeply"):
        dt.from_safetensors(src)
    r = cli("convert", "from-safetensors", str(src), str(tmp_path / "x.deathtensors"))
    assert r.returncode == 1 and b"nested too deeply" in r.stderr, r.stderr
    assert not (tmp_path / "deep.deathtensors").exists() and not (tmp_path / "x.deathtensors").exists()


def test_paths_expand_home_and_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DT_CONVERT_DIR", str(tmp_path / "sub"))
    (tmp_path / "sub").mkdir()
    st_torch.save_file({"a": torch.arange(3)}, str(tmp_path / "m.safetensors"))
    out = dt.from_safetensors("~/m.safetensors", "$DT_CONVERT_DIR/m.deathtensors")
    assert out == str(tmp_path / "sub" / "m.deathtensors")
    assert os.path.isfile(out)
    back = dt.to_safetensors("${DT_CONVERT_DIR}/m.deathtensors")
    assert back == str(tmp_path / "sub" / "m.safetensors")
    assert torch.equal(st_torch.load_file(back)["a"], torch.arange(3))


def test_bad_arguments(tmp_path):
    st_torch.save_file({"a": torch.ones(1)}, str(tmp_path / "a.safetensors"))
    with pytest.raises(dt.InvalidArgumentError):
        dt.from_safetensors(tmp_path / "a.safetensors", compress=3)
    with pytest.raises(dt.InvalidArgumentError):
        dt.from_safetensors(tmp_path / "a.safetensors", compress=True, compress_level="high")
    with pytest.raises(dt.PluginError):
        dt.from_safetensors(tmp_path / "a.safetensors", compress="nope")
    with pytest.raises(dt.PluginError):
        dt.from_safetensors(tmp_path / "a.safetensors", checksum="crc")
    assert not (tmp_path / "a.deathtensors").exists()


# -- Hugging Face sharded checkpoints -------------------------------------------------------------


def _hf_checkpoint(folder, stem="model"):
    """Three shards written by safetensors plus an index written by hand; tensors in index order."""
    shards = [
        {"layers.0.weight": torch.randn(8, 4), "embed": torch.randn(10, 4).to(torch.bfloat16)},
        {"layers.1.weight": torch.randn(8, 8), "layers.1.bias": torch.zeros(8, dtype=torch.float16)},
        {"head": torch.randn(4, 2).to(torch.float8_e4m3fn), "step": torch.tensor(7)},
    ]
    weight_map = {}
    total = 0
    for i, group in enumerate(shards):
        name = f"{stem}-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        st_torch.save_file(group, str(folder / name), metadata={"format": "pt"})
        for t, v in group.items():
            weight_map[t] = name
            total += v.numel() * v.element_size()
    order = ["embed", "layers.0.weight", "layers.1.weight", "layers.1.bias", "head", "step"]
    index = {"metadata": {"total_size": total}, "weight_map": {t: weight_map[t] for t in order}}
    (folder / f"{stem}.safetensors.index.json").write_text(json.dumps(index))
    tensors = {t: v for group in shards for t, v in group.items()}
    return tensors, order, total


def test_a_sharded_conversion_never_writes_over_its_own_inputs(tmp_path):
    """Regression: an input shard (or index) named like an output was
    overwritten halfway through the conversion and then removed by the cleanup."""
    a = {"a": torch.arange(4.0)}
    b = {"b": torch.ones(3)}
    st_torch.save_file(a, str(tmp_path / "a.safetensors"))
    clash = tmp_path / "m-00001-of-00002.deathtensors"  # what shard 1 of the output is called
    st_torch.save_file(b, str(clash))
    index = tmp_path / "m.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"a": "a.safetensors", "b": clash.name}}))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    with pytest.raises(dt.InvalidArgumentError, match="over its own input"):
        dt.from_safetensors(index)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    # An input index named like the output index is not removed first either.
    own = tmp_path / "n.deathtensors.index.json"
    own.write_text(json.dumps({"weight_map": {"a": "a.safetensors"}}))
    with pytest.raises(dt.InvalidArgumentError, match="over its own input"):
        dt.from_safetensors(own)
    assert own.exists()

    # Elsewhere it converts, and a dst naming the other format gives the same stem.
    (tmp_path / "out").mkdir()
    out = dt.from_safetensors(index, tmp_path / "out" / "model.safetensors")
    assert out == str(tmp_path / "out" / "model.deathtensors.index.json")
    with dt.open_sharded(out) as sr:
        assert torch.equal(sr.get_tensor("b"), b["b"])


def test_the_cleanup_after_a_sharded_conversion_keeps_its_inputs(tmp_path):
    """Regression: input shards named like shards of the output with another
    count (m-0000k-of-00005.deathtensors, for an output of 2) were removed by
    the cleanup of stale shards once the conversion had committed."""
    inputs = {}
    for k, t in ((1, {"a": torch.arange(4.0)}), (2, {"b": torch.ones(3)})):
        shard = tmp_path / f"m-0000{k}-of-00005.deathtensors"  # safetensors bytes, a misleading name
        st_torch.save_file(t, str(shard))
        inputs[shard.name] = shard.read_bytes()
    index = tmp_path / "m.safetensors.index.json"
    index.write_text(
        json.dumps({"weight_map": {"a": "m-00001-of-00005.deathtensors", "b": "m-00002-of-00005.deathtensors"}})
    )
    out = dt.from_safetensors(index)
    assert {n: (tmp_path / n).read_bytes() for n in inputs} == inputs
    with dt.open_sharded(out) as sr:
        assert sr.shards() == ["m-00001-of-00002.deathtensors", "m-00002-of-00002.deathtensors"]
        assert torch.equal(sr.get_tensor("b"), torch.ones(3))
    # A stale shard of an earlier conversion (not an input) is still removed.
    stale = tmp_path / "m-00003-of-00003.deathtensors"
    stale.write_bytes(b"old")
    dt.from_safetensors(index)
    assert not stale.exists() and all((tmp_path / n).exists() for n in inputs)


def test_a_hard_link_is_another_name_and_may_be_converted_onto(tmp_path):
    st = tmp_path / "m.safetensors"
    st_torch.save_file({"a": torch.arange(4.0)}, str(st))
    original = st.read_bytes()
    link = tmp_path / "h.deathtensors"
    os.link(st, link)
    dt.from_safetensors(st, link)  # the atomic write replaces the name h.deathtensors only
    assert st.read_bytes() == original
    with dt.open(link) as f:
        assert torch.equal(f.get_tensor("a"), torch.arange(4.0))


def test_hf_sharded_checkpoint_round_trip(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    tensors, order, total = _hf_checkpoint(hf)
    index = dt.from_safetensors(hf / "model.safetensors.index.json", compress=True)
    assert index == str(hf / "model.deathtensors.index.json")
    names = sorted(p.name for p in hf.glob("*.deathtensors"))
    assert names == [f"model-0000{i}-of-00003.deathtensors" for i in (1, 2, 3)]
    doc = json.loads((hf / "model.deathtensors.index.json").read_text())
    assert doc["metadata"]["total_size"] == total
    assert doc["metadata"]["global_metadata"] == {"format": "pt"}
    with dt.open_sharded(index) as sr:
        assert sr.keys() == order
        assert sr.which_shard("head") == "model-00003-of-00003.deathtensors"
        assert sr.verify()  # checksum=True by default, and total_size matches
        for name, t in tensors.items():
            assert _same(sr.get_tensor(name), t), name
        assert sr.metadata() == {"format": "pt"}

    out = tmp_path / "out"
    out.mkdir()
    hf_index = dt.to_safetensors(index, out / "model")
    assert hf_index == str(out / "model.safetensors.index.json")
    doc = json.loads((out / "model.safetensors.index.json").read_text())
    assert list(doc["weight_map"]) == order
    assert doc["metadata"]["total_size"] == total
    assert sorted(p.name for p in out.iterdir()) == [
        "model-00001-of-00003.safetensors",
        "model-00002-of-00003.safetensors",
        "model-00003-of-00003.safetensors",
        "model.safetensors.index.json",
    ]
    for name, shard in doc["weight_map"].items():
        loaded = st_torch.load_file(str(out / shard))
        assert _same(loaded[name], tensors[name]), name
        with safe_open(str(out / shard), framework="pt") as f:
            assert f.metadata()["format"] == "pt"


def test_sharded_checkpoints_are_found_from_their_base_path(tmp_path):
    tensors, order, _ = _hf_checkpoint(tmp_path, stem="big")
    # No big.safetensors exists: the base path finds big.safetensors.index.json.
    index = dt.from_safetensors(tmp_path / "big.safetensors")
    assert index == str(tmp_path / "big.deathtensors.index.json")
    index2 = dt.from_safetensors(str(tmp_path / "big"), tmp_path / "again.deathtensors")
    assert index2 == str(tmp_path / "again.deathtensors.index.json")
    assert (tmp_path / "again-00002-of-00003.deathtensors").is_file()
    # to_safetensors from a deathtensors base path (save_sharded's convention).
    hf_index = dt.to_safetensors(tmp_path / "again.deathtensors", tmp_path / "back.safetensors")
    assert hf_index == str(tmp_path / "back.safetensors.index.json")
    doc = json.loads(open(hf_index).read())
    assert list(doc["weight_map"]) == order
    loaded = {}
    for shard in set(doc["weight_map"].values()):
        loaded.update(st_torch.load_file(str(tmp_path / shard)))
    assert set(loaded) == set(tensors)
    for name, t in tensors.items():
        assert _same(loaded[name], t), name


def test_save_sharded_checkpoint_exports_to_hf_and_back(tmp_path):
    tensors = {f"layer.{i}": torch.randn(16, 16) for i in range(5)}
    dt.save_sharded(
        tmp_path / "ck.deathtensors",
        tensors,
        max_shard_bytes=2 * 16 * 16 * 4,
        metadata={"layer.3": {"frozen": True}},
        global_metadata={"epoch": 2},
        compress=True,
    )
    hf_index = dt.to_safetensors(tmp_path / "ck.deathtensors.index.json")
    assert hf_index == str(tmp_path / "ck.safetensors.index.json")
    assert len(list(tmp_path.glob("ck-*-of-00003.safetensors"))) == 3
    back = dt.from_safetensors(hf_index, tmp_path / "re.deathtensors")
    with dt.open_sharded(back) as sr:
        assert sr.keys() == list(tensors)
        assert sr.metadata() == {"epoch": 2}
        assert sr.info("layer.3")["metadata"] == {"frozen": True}
        for name, t in tensors.items():
            assert torch.equal(sr.get_tensor(name), t)


def test_sharded_errors_leave_no_half_written_checkpoint(tmp_path):
    _hf_checkpoint(tmp_path)
    (tmp_path / "model-00003-of-00003.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model-00003-of-00003.safetensors"):
        dt.from_safetensors(tmp_path / "model.safetensors.index.json")
    assert not list(tmp_path.glob("*.deathtensors*"))

    # A shard that lacks a tensor the index places there.
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    st_torch.save_file({"head": torch.zeros(1)}, str(tmp_path / "model-00003-of-00003.safetensors"))
    with pytest.raises(dt.FormatError, match="step"):
        dt.from_safetensors(tmp_path / "model.safetensors.index.json")
    assert not list(tmp_path.glob("*.deathtensors*"))

    # An index that points outside its folder.
    index["weight_map"]["head"] = "../evil.safetensors"
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(dt.FormatError, match="separator"):
        dt.from_safetensors(tmp_path / "model.safetensors.index.json")
    (tmp_path / "model.safetensors.index.json").write_text("{not json")
    with pytest.raises(dt.FormatError):
        dt.from_safetensors(tmp_path / "model.safetensors.index.json")


def test_a_failed_sharded_reconversion_keeps_the_earlier_one(tmp_path):
    # It removed the old index first and wrote shards over the old names: a corrupt
    # source shard left no checkpoint at all, and an orphan shard.
    _hf_checkpoint(tmp_path)
    out = dt.from_safetensors(tmp_path / "model.safetensors.index.json")
    before = {p.name: p.read_bytes() for p in tmp_path.glob("*.deathtensors*")}
    with dt.open_sharded(out) as sr:
        keys, values = sr.keys(), {k: sr.get_tensor(k) for k in sr.keys()}
    (tmp_path / "model-00002-of-00003.safetensors").write_bytes(b"garbage, not a safetensors file")
    with pytest.raises(dt.FormatError, match="model-00002-of-00003.safetensors"):
        dt.from_safetensors(tmp_path / "model.safetensors.index.json")
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.deathtensors*")} == before
    with dt.open_sharded(out, verify=True) as sr:
        assert sr.keys() == keys
        assert all(torch.equal(sr.get_tensor(k), v) for k, v in values.items())
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_a_failed_sharded_export_keeps_the_earlier_one(tmp_path):
    # The export removed the old safetensors index first and wrote over the old shards.
    tensors = {f"layer.{i}": torch.randn(16, 16) for i in range(4)}
    dt.save_sharded(tmp_path / "ck.deathtensors", tensors, max_shard_bytes=2 * 16 * 16 * 4)
    hf_index = dt.to_safetensors(tmp_path / "ck.deathtensors.index.json")
    before = {p.name: p.read_bytes() for p in tmp_path.glob("ck*.safetensors*")}
    assert len(before) == 3  # two shards and the index
    second = tmp_path / "ck-00002-of-00002.deathtensors"
    second.write_bytes(second.read_bytes()[:-100])  # damaged: it no longer opens
    with pytest.raises(dt.FormatError):
        dt.to_safetensors(tmp_path / "ck.deathtensors.index.json")
    assert {p.name: p.read_bytes() for p in tmp_path.glob("ck*.safetensors*")} == before
    index = json.loads(open(hf_index).read())
    assert sorted(set(index["weight_map"].values())) == [
        "ck-00001-of-00002.safetensors",
        "ck-00002-of-00002.safetensors",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# -- memory -----------------------------------------------------------------------------------------


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux's peak RSS reset")
@pytest.mark.parametrize("compress", [True, False])
def test_export_holds_one_tensor_at_a_time(tmp_path, compress):
    """Peak resident memory of an export grows by about the largest tensor, not by the file's size."""
    count, mib = 8, 12
    tensors = {f"t{i}": torch.randn(mib * 1024 * 1024 // 4) for i in range(count)}
    src = tmp_path / "big.deathtensors"
    dt.save(src, tensors, compress=compress)
    del tensors
    whole = peak_growth_mib("with dt.open(argv[0]) as f: kept = f.get_tensors('numpy')", str(src))
    assert whole > count * mib * 0.9, f"the probe saw only {whole:.0f} MiB for loading everything"
    grown = peak_growth_mib("dt.to_safetensors(argv[0], argv[1])", str(src), str(tmp_path / "big.safetensors"))
    assert grown < 3 * mib, f"export grew peak memory by {grown:.0f} MiB for a {count * mib} MiB file"
    assert os.path.getsize(tmp_path / "big.safetensors") > count * mib * 1024 * 1024


# -- CLI ----------------------------------------------------------------------------------------------

COMMANDS = cli_commands()


@pytest.fixture(params=list(COMMANDS), ids=list(COMMANDS))
def cli(request):
    prefix = COMMANDS[request.param]
    return lambda *args, **kw: run_cli(prefix, *args, **kw)


def test_cli_from_and_to_safetensors(tmp_path, cli):
    tensors = {"w": torch.randn(4, 4).to(torch.bfloat16), "n": torch.arange(5)}
    src = tmp_path / "in.safetensors"
    st_torch.save_file(tensors, str(src), metadata={"format": "pt"})
    dst = tmp_path / "out.deathtensors"
    r = cli("convert", "from-safetensors", str(src), str(dst), "--compress", "--checksum", "blake3", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["tensors"] == 2
    assert summary["bytes_in"] == src.stat().st_size
    assert summary["bytes_out"] == dst.stat().st_size
    assert summary["converter"] == "safetensors" and summary["direction"] == "import"
    with dt.open(dst, verify=True) as f:
        assert f.codec() == "zstd" and f.checksum_algorithm() == "blake3"
        for name, t in tensors.items():
            assert _same(f.get_tensor(name), t)

    back = tmp_path / "back.safetensors"
    r = cli("convert", "to-safetensors", str(dst), str(back))
    assert r.returncode == 0, r.stderr
    assert b"2 tensors" in r.stdout
    loaded = st_torch.load_file(str(back))
    for name, t in tensors.items():
        assert torch.equal(loaded[name], t)

    r = cli("convert", "from-safetensors", str(src), str(tmp_path / "lz.deathtensors"), "--compress=lz4")
    assert r.returncode == 0, r.stderr
    with dt.open(tmp_path / "lz.deathtensors") as f:
        assert f.codec() == "lz4" and f.checksum_algorithm() == "sha256"


def test_cli_generic_convert_picks_the_converter(tmp_path, cli):
    t = {"a": torch.randn(3)}
    dt.save(tmp_path / "a.deathtensors", t)
    r = cli("convert", str(tmp_path / "a.deathtensors"), str(tmp_path / "a.safetensors"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["direction"] == "export"
    assert torch.equal(st_torch.load_file(str(tmp_path / "a.safetensors"))["a"], t["a"])

    r = cli("convert", str(tmp_path / "a.deathtensors"), str(tmp_path / "a.bin"), "--to", "safetensors")
    assert r.returncode == 0, r.stderr
    r = cli(
        "convert", str(tmp_path / "a.bin"), str(tmp_path / "b.dat"), "--to", "deathtensors", "--from", "safetensors"
    )
    assert r.returncode == 0, r.stderr
    with dt.open(tmp_path / "b.dat", verify=True) as f:
        assert torch.equal(f.get_tensor("a"), t["a"])
    r = cli("convert", str(tmp_path / "a.safetensors"), str(tmp_path / "c.deathtensors"), "--checksum", "none")
    assert r.returncode == 0, r.stderr
    with dt.open(tmp_path / "c.deathtensors") as f:
        assert not f.has_checksum()


def test_cli_converts_sharded_checkpoints_both_ways(tmp_path, cli):
    """Regression: `convert` of an index read it as a tensor file ("the magic is '{...'",
    "unknown converter json") or, given a base path, found no such file."""
    hf = tmp_path / "hf"
    hf.mkdir()
    tensors, order, _ = _hf_checkpoint(hf)
    index = hf / "model.safetensors.index.json"
    r = cli("convert", "from-safetensors", str(index), str(tmp_path / "a.deathtensors"), "--compress", "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["index"] == str(tmp_path / "a.deathtensors.index.json")
    assert (summary["shards"], summary["tensors"], summary["direction"]) == (3, 6, "import")
    assert summary["codec"] == "zstd" and summary["checksum"] == "sha256"
    assert summary["bytes_in"] == index.stat().st_size + sum(p.stat().st_size for p in hf.glob("*.safetensors"))
    with dt.open_sharded(tmp_path / "a.deathtensors", verify=True) as sr:
        assert sr.keys() == order
        assert all(_same(sr.get_tensor(n), t) for n, t in tensors.items())
    # The generic form tells the format from the index's name, and a base path finds it.
    r = cli("convert", str(index), str(tmp_path / "b.deathtensors"), "--checksum", "none")
    assert r.returncode == 0, r.stderr
    assert b"(safetensors import, 3 shards): 6 tensors" in r.stdout
    r = cli("convert", str(hf / "model"), str(tmp_path / "c.deathtensors"), "--from", "safetensors")
    assert r.returncode == 0, r.stderr

    out = tmp_path / "out"
    out.mkdir()
    r = cli("convert", "to-safetensors", str(tmp_path / "a.deathtensors"), str(out / "back.safetensors"))
    assert r.returncode == 0, r.stderr
    assert b"(safetensors export, 3 shards): 6 tensors" in r.stdout
    doc = json.loads((out / "back.safetensors.index.json").read_text())
    assert list(doc["weight_map"]) == order
    for name, shard in doc["weight_map"].items():
        assert _same(st_torch.load_file(str(out / shard))[name], tensors[name]), name
    r = cli("convert", str(tmp_path / "b.deathtensors.index.json"), str(out / "g.safetensors"), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["shards"] == 3

    # A home folder whose name is not UTF-8 (reached through ~) prints as U+FFFD in the JSON.
    home = tmp_path / os.fsdecode(b"h\xe9")
    home.mkdir()
    for p in hf.iterdir():
        shutil.copy(p, home / p.name)
    r = cli("convert", "--json", "~/model.safetensors.index.json", "~/o.deathtensors", env={"HOME": str(home)})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["index"] == str(tmp_path / "h\ufffd" / "o.deathtensors.index.json")
    assert (home / "o.deathtensors.index.json").is_file()

    # Any other .json name says nothing of the format (it was "unknown converter json").
    shutil.copy(index, hf / "weights.json")
    r = cli("convert", str(hf / "weights.json"), str(tmp_path / "w.deathtensors"))
    assert r.returncode == 2 and b"--from" in r.stderr, r.stderr
    r = cli("convert", str(hf / "weights.json"), str(tmp_path / "w.deathtensors"), "--from", "safetensors")
    assert r.returncode == 0, r.stderr

    # Output that cannot be written is one error line and exit 2, as for a single file.
    with open("/dev/full", "wb") as full:
        r = run_cli(COMMANDS["module"], "convert", str(index), str(tmp_path / "f.deathtensors"), "--json", stdout=full)
    assert r.returncode == 2, r.stderr
    error = "deathtensors: error: cannot write the output: [Errno 28] No space left on device"
    assert r.stderr.decode().splitlines() == [error]

    # Errors keep the CLI's exit codes: 2 for a refused argument, 1 for a bad file.
    r = cli("convert", "from-safetensors", str(index), str(tmp_path / "e.deathtensors"), "--compress=nope")
    assert r.returncode == 2 and r.stderr.startswith(b"deathtensors: error: "), r.stderr
    assert b"nope" in r.stderr and not list(tmp_path.glob("e*"))
    (hf / "model-00002-of-00003.safetensors").write_bytes(b"\x08" + b"\0" * 7 + b"{broken}")
    r = cli("convert", "from-safetensors", str(index), str(tmp_path / "d.deathtensors"))
    assert r.returncode == 1 and b"model-00002-of-00003.safetensors" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and b"Traceback" not in r.stderr
    assert not list(tmp_path.glob("d*"))
    # An export names the bad shard too (it said only "truncated file: ...").
    shard = tmp_path / "a-00002-of-00003.deathtensors"
    shard.write_bytes(shard.read_bytes()[:100])
    r = cli("convert", "to-safetensors", str(tmp_path / "a.deathtensors"), str(tmp_path / "t.safetensors"))
    assert r.returncode == 1 and b"shard 'a-00002-of-00003.deathtensors'" in r.stderr, r.stderr
    # A destination folder that does not exist is named, not a temporary file in it.
    r = cli("convert", str(index), str(tmp_path / "no" / "such" / "x.deathtensors"))
    assert r.returncode == 1, r.stderr
    assert r.stderr.decode().strip().endswith(f"{tmp_path / 'no' / 'such'}: No such file or directory (os error 2)")


def test_cli_convert_errors(tmp_path, cli):
    dt.save(tmp_path / "a.deathtensors", {"c": torch.ones(2, dtype=torch.complex128)})
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10" + b"\0" * 7 + b"{garbage}")
    usage = [
        ("convert", str(tmp_path / "a.deathtensors"), str(tmp_path / "x.npz")),  # unknown format
        ("convert", str(tmp_path / "a.deathtensors")),  # missing DST
        ("convert", "from-safetensors", str(bad), str(tmp_path / "x.deathtensors"), "--compress=nope"),
        ("convert", str(tmp_path / "a.deathtensors"), str(tmp_path / "x.safetensors"), "--compress"),
        ("convert", "to-safetensors", str(tmp_path / "a.deathtensors"), str(tmp_path / "x.safetensors")),  # C128
    ]
    for args in usage:
        r = cli(*args)
        assert r.returncode == 2, (args, r.stderr)
    r = cli("convert", "to-safetensors", str(tmp_path / "a.deathtensors"), str(tmp_path / "x.safetensors"))
    assert b"C128" in r.stderr and b"'c'" not in r.stderr and b'"c"' in r.stderr
    bad_file = [
        ("convert", "from-safetensors", str(bad), str(tmp_path / "x.deathtensors")),
        ("convert", "to-safetensors", str(bad), str(tmp_path / "x.safetensors")),
        ("convert", "to-safetensors", str(tmp_path / "missing.deathtensors"), str(tmp_path / "x.safetensors")),
    ]
    for args in bad_file:
        r = cli(*args)
        assert r.returncode == 1, (args, r.stderr)
        err = r.stderr.decode()
        assert "panicked" not in err and "Traceback" not in err
    assert not (tmp_path / "x.deathtensors").exists() and not (tmp_path / "x.safetensors").exists()
    # A sharded export into a folder that does not exist words the error as
    # every other I/O error (it was Python's "[Errno 2] ...: 'out'").
    dt.save_sharded(tmp_path / "ck.deathtensors", {"a": torch.ones(4), "b": torch.ones(4)}, max_shard_bytes=16)
    r = cli("convert", "to-safetensors", str(tmp_path / "ck.deathtensors"), str(tmp_path / "out" / "model"))
    assert r.returncode == 1, r.stderr
    assert r.stderr.decode() == f"deathtensors: error: {tmp_path / 'out'}: No such file or directory (os error 2)\n"
    # ...and once only where the core's own OSError says it already.
    shard = tmp_path / "ck-00002-of-00002.deathtensors"
    shard.unlink()
    shard.mkdir()
    r = cli("convert", "to-safetensors", str(tmp_path / "ck.deathtensors"), str(tmp_path / "model"))
    assert r.returncode == 1, r.stderr
    err = r.stderr.decode()
    assert err.startswith(f"deathtensors: error: {shard}: ") and err.endswith(" (os error 21)\n"), err
    assert err.count("os error") == 1, err


def test_bools_whose_bytes_are_not_0_or_1_import_as_true(tmp_path):
    """Regression: safetensors writes and reads a bool byte of 2 (True to torch),
    but from_safetensors refused the file; it imports as 0x01."""
    mask = torch.tensor([2, 0, 255], dtype=torch.uint8).view(torch.bool)
    src = tmp_path / "m.safetensors"
    st_torch.save_file({"mask": mask, "w": torch.ones(2)}, src)
    dst = tmp_path / "m.deathtensors"
    dt.from_safetensors(src, dst)
    with dt.open(dst) as f:
        assert f.get_bytes("mask") == bytes([1, 0, 1])
        assert torch.equal(f.get_tensor("mask"), torch.tensor([True, False, True]))
