"""dt.Schema: declarative checks of a file's tensors, all violations reported at once."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

import deathtensors as dt

torch = pytest.importorskip("torch")


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.deathtensors"
    tensors = {
        "embed.weight": torch.zeros(10, 4),
        "layers.0.weight": torch.zeros(4, 4, dtype=torch.bfloat16),
        "layers.1.weight": torch.zeros(4, 4, dtype=torch.bfloat16),
        "layers.0.bias": torch.zeros(4),
        "head": torch.zeros(3, dtype=torch.int64),
    }
    metadata = {
        "embed.weight": {"init": "normal", "vocab": 10},
        "layers.0.weight": {"layer": 0},
        "layers.1.weight": {"layer": 1},
    }
    dt.save(path, tensors, metadata=metadata, compress=True, checksum=True)
    return path


def full_schema() -> dt.Schema:
    return (
        dt.Schema()
        .expect("embed.weight", dtype="F32", shape=[10, 4], metadata_keys=["init", "vocab"])
        .expect("layers.*.weight", dtype="BF16", shape=(4, 4), metadata_keys=["layer"])
        .expect("layers.0.bias", dtype=torch.float32, shape=[4])
        .expect("head", dtype=np.int64, shape=[None])
    )


def test_a_matching_file_validates(model):
    assert full_schema().validate(model) is True
    assert full_schema().validate(str(model)) is True
    with dt.open(model) as f:
        assert full_schema().validate(f) is True
        assert not f.closed  # a file the caller opened stays open


def test_expect_chains_and_counts_rules():
    s = dt.Schema()
    assert s.expect("a") is s
    assert s.allow_extra() is s
    assert len(s.expect("b", dtype="F32")) == 2
    assert "expect('b', dtype F32)" in repr(s) and "allow_extra()" in repr(s)


def test_every_violation_is_reported_in_one_error(model):
    schema = (
        dt.Schema()
        .expect("embed.weight", dtype="F16", shape=[10, 5], metadata_keys=["init", "license"])
        .expect("layers.*.weight", dtype="BF16", shape=[4, 4])
        .expect("missing.tensor", dtype="F32", shape=[2])
        .expect("decoder.*", dtype="F32")
        .expect("head", shape=[3, 1])
    )
    with pytest.raises(dt.SchemaError) as info:
        schema.validate(model)
    err = info.value
    assert isinstance(err, dt.DeathtensorsError)
    assert err.violations == [
        "tensor 'embed.weight': expected dtype F16, found F32",
        "tensor 'embed.weight': expected shape [10, 5], found [10, 4]",
        "tensor 'embed.weight': missing metadata keys ['license'] "
        "(expected ['init', 'license'], found ['init', 'vocab'])",
        "missing tensor 'missing.tensor' (dtype F32, shape [2])",
        "no tensor matches pattern 'decoder.*' (dtype F32); expected at least one",
        "tensor 'head': expected shape [3, 1], found [3]",
        "unexpected tensor 'layers.0.bias' (dtype F32, shape [4]); the schema does not name it "
        "(call allow_extra() to accept it)",
    ]
    message = str(err)
    assert message.startswith(f"{model}: 7 schema violations:\n")
    for line in err.violations:
        assert f"  - {line}" in message


def test_allow_extra_accepts_unnamed_tensors(model):
    schema = dt.Schema().expect("head", dtype="I64")
    with pytest.raises(dt.SchemaError) as info:
        schema.validate(model)
    assert len(info.value.violations) == 4  # every other tensor is unexpected
    assert all(v.startswith("unexpected tensor") for v in info.value.violations)
    assert schema.allow_extra().validate(model) is True
    # ...but a missing tensor is still a violation.
    with pytest.raises(dt.SchemaError, match="missing tensor 'nope'"):
        dt.Schema().allow_extra().expect("nope").validate(model)


def test_none_in_a_shape_matches_any_size_but_not_another_rank(model):
    ok = dt.Schema().allow_extra().expect("embed.weight", shape=[None, 4]).expect("head", shape=(None,))
    assert ok.validate(model)
    assert dt.Schema().allow_extra().expect("embed.weight", shape=[None, None]).validate(model)
    for wrong in ([None], [None, None, None], [None, 5], []):
        with pytest.raises(dt.SchemaError) as info:
            dt.Schema().allow_extra().expect("embed.weight", shape=wrong).validate(model)
        (line,) = info.value.violations
        assert line.startswith("tensor 'embed.weight': expected shape [") and line.endswith("found [10, 4]")


def test_a_glob_checks_every_tensor_it_matches(model):
    schema = dt.Schema().allow_extra().expect("layers.*.weight", dtype="BF16", metadata_keys="layer")
    assert schema.validate(model)
    with pytest.raises(dt.SchemaError) as info:
        dt.Schema().allow_extra().expect("layers.?.*", dtype="BF16").validate(model)
    # layers.0.bias is F32: the only tensor the pattern matches that does not fit.
    assert info.value.violations == ["tensor 'layers.0.bias': expected dtype BF16, found F32"]
    # A glob is case-sensitive and must match at least one tensor.
    with pytest.raises(dt.SchemaError, match="no tensor matches pattern 'LAYERS.\\*'"):
        dt.Schema().allow_extra().expect("LAYERS.*").validate(model)


def test_a_literal_name_with_glob_characters_matches_itself(tmp_path):
    path = tmp_path / "brackets.deathtensors"
    dt.save(path, {"w[0]": torch.zeros(2), "w0": torch.zeros(3)})
    with pytest.raises(dt.SchemaError) as info:
        dt.Schema().expect("w[0]", shape=[2]).validate(path)
    # "w[0]" matches itself literally and "w0" as a pattern; "w0" has the wrong shape.
    assert info.value.violations == ["tensor 'w0': expected shape [2], found [3]"]


@pytest.mark.parametrize(
    "dtype",
    ["BF16", "bf16", "bfloat16", "torch.bfloat16", torch.bfloat16],
)
def test_dtype_spellings(model, dtype):
    assert dt.Schema().allow_extra().expect("layers.0.weight", dtype=dtype).validate(model)


def test_numpy_and_torch_dtypes_map_to_ids(model):
    schema = dt.Schema().allow_extra().expect("embed.weight", dtype=np.float32).expect("head", dtype=np.dtype("<i8"))
    assert schema.validate(model)
    # Regression: a big-endian dtype (of an array save stores as F32) was "no deathtensors dtype".
    assert dt.Schema().allow_extra().expect("embed.weight", dtype=np.dtype(">f4")).validate(model)
    with pytest.raises(dt.SchemaError, match="expected dtype F64, found F32"):
        dt.Schema().allow_extra().expect("embed.weight", dtype=torch.float64).validate(model)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dtype": "F33"}, "unknown dtype 'F33'"),
        ({"dtype": 3.5}, "dtype must be"),
        ({"shape": "10x4"}, "shape must be"),
        ({"shape": [10, -1]}, "cannot be negative"),
        ({"shape": [10, 4.0]}, "must be an int or None"),
        ({"metadata_keys": [1]}, "metadata_keys must be strings"),
    ],
)
def test_bad_expectations_are_refused_when_declared(kwargs, message):
    with pytest.raises(dt.InvalidArgumentError, match=message):
        dt.Schema().expect("x", **kwargs)


def test_validate_rejects_other_objects():
    with pytest.raises(dt.InvalidArgumentError, match="a path, a DtFile or a ShardedReader"):
        dt.Schema().validate(42)


def test_validation_reads_no_tensor_data(model):
    with dt.open(model) as f:
        with pytest.raises(dt.SchemaError):
            dt.Schema().expect("head", dtype="F32").validate(f)
        assert full_schema().validate(f)
        assert f._reader.decoded_bytes() == 0


def test_a_path_is_opened_and_closed(model):
    fds = os.listdir("/proc/self/fd")
    assert full_schema().validate(model)
    with pytest.raises(dt.SchemaError):
        dt.Schema().validate(model)
    assert len(os.listdir("/proc/self/fd")) == len(fds)


def test_paths_expand_home_and_vars(model, monkeypatch):
    monkeypatch.setenv("DT_SCHEMA_DIR", str(model.parent))
    assert full_schema().validate(f"$DT_SCHEMA_DIR/{model.name}")
    monkeypatch.setenv("HOME", str(model.parent))
    assert full_schema().validate(f"~/{model.name}")


def test_missing_or_bad_files_raise_their_usual_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        dt.Schema().validate(tmp_path / "absent.deathtensors")
    bad = tmp_path / "bad.deathtensors"
    bad.write_bytes(b"not a deathtensors file at all")
    with pytest.raises(dt.FormatError):
        dt.Schema().validate(bad)


def test_sharded_checkpoints_validate_by_reader_or_index_path(tmp_path):
    tensors = {f"layers.{i}.weight": torch.zeros(8, 8) for i in range(4)}
    tensors["head"] = torch.zeros(8, dtype=torch.int32)
    dt.save_sharded(tmp_path / "big.deathtensors", tensors, max_shard_bytes=600)
    index = tmp_path / "big.deathtensors.index.json"
    assert index.exists()
    schema = dt.Schema().expect("layers.*.weight", dtype="F32", shape=[8, 8]).expect("head", dtype="I32")
    assert schema.validate(index)
    # By its base path too, as the CLI names it (it raised FileNotFoundError).
    assert schema.validate(tmp_path / "big.deathtensors")
    with dt.open_sharded(index) as sr:
        assert schema.validate(sr)
    with pytest.raises(dt.SchemaError) as info:
        dt.Schema().expect("layers.*.weight", shape=[8, 9]).validate(str(index))
    assert len(info.value.violations) == 5  # four wrong shapes and the unexpected head
    assert "tensor 'layers.3.weight': expected shape [8, 9], found [8, 8]" in info.value.violations


def test_sparse_tensors_are_checked_by_their_dense_shape(tmp_path):
    path = tmp_path / "sparse.deathtensors"
    sparse = torch.sparse_coo_tensor(torch.tensor([[0, 2], [1, 3]]), torch.tensor([1.0, 2.0]), (5, 6))
    dt.save_sparse(path, {"s": sparse})
    assert dt.Schema().expect("s", dtype="F32", shape=[5, 6]).validate(path)
    with pytest.raises(dt.SchemaError, match=r"expected shape \[2\], found \[5, 6\]"):
        dt.Schema().expect("s", shape=[2]).validate(path)


def test_schema_error_survives_pickling():
    err = dt.SchemaError("f: 1 schema violation:\n  - x", ["x"])
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is dt.SchemaError
    assert back.violations == ["x"] and str(back) == str(err)
    assert dt.SchemaError("plain").violations == []


def test_exact_names_are_looked_up_not_matched_against_every_tensor(tmp_path, monkeypatch):
    """Regression: validate matched every expectation against every tensor, so a
    schema built from a 16k-tensor checkpoint took 16 s (33x opening it)."""
    from deathtensors import _schema

    n = 500
    path = tmp_path / "many.deathtensors"
    dt.save(path, {f"t{i}": np.zeros(1, np.float32) for i in range(n)})
    schema = dt.Schema()
    for i in range(n):
        schema.expect(f"t{i}", dtype="F32", shape=[1])
    schema.expect("t1*", dtype="F32")  # a glob still scans the names
    calls = []
    real = _schema._Expectation.matches
    monkeypatch.setattr(_schema._Expectation, "matches", lambda self, t: calls.append(t) or real(self, t))
    assert schema.validate(path)
    assert len(calls) == n  # the one glob's scan; none for the exact names
    with pytest.raises(dt.SchemaError, match="missing tensor 'absent'"):
        dt.Schema().allow_extra().expect("absent").validate(path)
