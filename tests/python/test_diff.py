"""``deathtensors.diff`` and ``deathtensors diff``: what differs between two files, and the CLI's exit codes."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from _dtutil import cli_commands, layout, run_cli, run_on_pty

import deathtensors as dt

SPEC_KEYS = {"added", "removed", "shape_changed", "dtype_changed", "value_changed", "metadata_changed"}


def _tensors(seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((64, 300)).astype(np.float32),
        "b": np.arange(300, dtype=np.int64),
        "z": (rng.standard_normal(50) + 1j * rng.standard_normal(50)).astype(np.complex64),
    }


@pytest.fixture
def base(tmp_path):
    path = tmp_path / "a.deathtensors"
    dt.save(path, _tensors(), metadata={"w": {"layer": 1}}, global_metadata={"model": "tiny"})
    return path


def test_identical_files_with_different_compression(base, tmp_path):
    other = tmp_path / "b.deathtensors"
    dt.save(
        other, _tensors(), metadata={"w": {"layer": 1}}, global_metadata={"model": "tiny"}, compress=True, checksum=True
    )
    assert other.read_bytes() != base.read_bytes()
    report = dt.diff(base, other)
    assert SPEC_KEYS <= report.keys()
    assert report["identical"] is True
    assert report["global_metadata_changed"] is False
    for key in SPEC_KEYS:
        assert report[key] == [], key
    assert dt.diff(other, base, rtol=1e-3, atol=1e-6)["identical"] is True


def test_added_and_removed(base, tmp_path):
    tensors = _tensors()
    del tensors["b"]
    tensors["extra"] = np.zeros(3, dtype=np.uint8)
    other = tmp_path / "b.deathtensors"
    dt.save(other, tensors, metadata={"w": {"layer": 1}}, global_metadata={"model": "tiny"}, compress="lz4")
    report = dt.diff(base, other)
    assert report["removed"] == ["b"]
    assert report["added"] == ["extra"]
    assert report["value_changed"] == [] and report["shape_changed"] == [] and report["dtype_changed"] == []
    assert report["identical"] is False


def test_value_changed_names_the_element(base, tmp_path):
    tensors = _tensors()
    original = float(tensors["w"][40, 123])
    tensors["w"][40, 123] += 0.25
    other = tmp_path / "b.deathtensors"
    dt.save(other, tensors, metadata={"w": {"layer": 1}}, global_metadata={"model": "tiny"}, compress=True)
    report = dt.diff(base, other)
    assert [v["name"] for v in report["value_changed"]] == ["w"]
    change = report["value_changed"][0]
    assert change["differing"] == 1
    assert change["numel"] == 64 * 300
    assert change["first_index"] == [40, 123]
    assert change["max_abs_diff"] == pytest.approx(abs(float(tensors["w"][40, 123]) - original), rel=1e-12)
    assert change["part"] is None
    # Within the tolerance, the files are equal; just outside it they are not.
    assert dt.diff(base, other, atol=0.26)["identical"] is True
    assert dt.diff(base, other, atol=0.24)["value_changed"][0]["differing"] == 1


def test_shape_dtype_and_metadata_changes(base, tmp_path):
    tensors = _tensors()
    tensors["w"] = tensors["w"].reshape(300, 64)
    tensors["b"] = tensors["b"].astype(np.int32)
    other = tmp_path / "b.deathtensors"
    dt.save(other, tensors, metadata={"w": {"layer": 2}}, global_metadata={"model": "big"})
    report = dt.diff(base, other)
    assert report["shape_changed"] == [{"name": "w", "a": [64, 300], "b": [300, 64]}]
    assert report["dtype_changed"] == [{"name": "b", "a": "I64", "b": "I32"}]
    assert report["metadata_changed"] == [{"name": "w", "a": {"layer": 1}, "b": {"layer": 2}}]
    assert report["global_metadata_changed"] is True
    assert report["global_metadata"] == {"a": {"model": "tiny"}, "b": {"model": "big"}}
    assert report["value_changed"] == []


def test_infinite_difference_is_a_float(tmp_path):
    a, b = tmp_path / "a.deathtensors", tmp_path / "b.deathtensors"
    dt.save(a, {"x": np.array([1.0, 2.0], dtype=np.float64)})
    dt.save(b, {"x": np.array([1.0, np.inf], dtype=np.float64)})
    change = dt.diff(a, b)["value_changed"][0]
    assert change["max_abs_diff"] == math.inf
    assert change["first_index"] == [1]


def test_checkpoints_compare_with_each_other_and_with_one_file(base, tmp_path):
    """A sharded checkpoint is one side of a diff, however it is sharded:
    its tensors come from their shards, its global metadata from the index."""
    md = {"w": {"layer": 1}}
    one = tmp_path / "one.deathtensors"
    dt.save_sharded(one, _tensors(), metadata=md, global_metadata={"model": "tiny"}, max_shard_bytes=1)
    two = tmp_path / "two.deathtensors"
    dt.save_sharded(two, _tensors(), metadata=md, global_metadata={"model": "tiny"}, compress=True)
    with dt.open_sharded(one) as a, dt.open_sharded(two) as b:
        assert len(a.shards()) == 3 and len(b.shards()) == 1  # differently sharded
    assert dt.diff(base, one)["identical"] is True
    assert dt.diff(one, two.with_suffix(".deathtensors.index.json"))["identical"] is True

    tensors = _tensors()
    tensors["w"][3, 5] += 1.0
    del tensors["b"]
    changed = tmp_path / "changed.deathtensors"
    dt.save_sharded(changed, tensors, metadata=md, global_metadata={"model": "big"}, max_shard_bytes=1)
    report = dt.diff(one, changed)
    assert report["removed"] == ["b"] and report["added"] == []
    assert [(v["name"], v["differing"], v["first_index"]) for v in report["value_changed"]] == [("w", 1, [3, 5])]
    assert report["global_metadata"] == {"a": {"model": "tiny"}, "b": {"model": "big"}}
    assert dt.diff(changed, base)["added"] == ["b"]

    (tmp_path / "changed-00001-of-00002.deathtensors").unlink()
    with pytest.raises(FileNotFoundError):
        dt.diff(one, changed)


def test_paths_are_expanded(base, tmp_path, monkeypatch):
    monkeypatch.setenv("DT_DIFF_DIR", str(tmp_path))
    assert dt.diff("$DT_DIFF_DIR/a.deathtensors", base)["identical"] is True


def test_bad_tolerance_and_missing_file(base, tmp_path):
    with pytest.raises(dt.InvalidArgumentError):
        dt.diff(base, base, rtol=-1.0)
    with pytest.raises(FileNotFoundError):
        dt.diff(base, tmp_path / "missing.deathtensors")


COMMANDS = cli_commands()


def test_a_bad_file_is_named_in_the_error(base, tmp_path):
    """Regression: a format error of either side said "invalid header: ..."
    without saying which file; now dt.open, dt.diff and the CLI name it."""
    bad = tmp_path / "bad.deathtensors"
    bad.write_bytes(base.read_bytes().replace(b'"tensors"', b'"tensorz"', 1))
    short = tmp_path / "short.deathtensors"
    short.write_bytes(base.read_bytes()[:30])
    for broken, reason in ((bad, "unknown field"), (short, "truncated file")):
        for call, args in ((dt.open, (broken,)), (dt.diff, (base, broken)), (dt.diff, (broken, base))):
            with pytest.raises(dt.FormatError, match=reason) as caught:
                call(*args)
            assert str(broken) in str(caught.value)
        for prefix in COMMANDS.values():
            for args in (["info", str(broken)], ["diff", str(base), str(broken)]):
                result = run_cli(prefix, *args)
                assert result.returncode == 1, result
                assert str(broken) in result.stderr.decode() and reason in result.stderr.decode(), result.stderr


def _damage_last_plane(path) -> None:
    """Flip a byte inside the last plane of the first chunk of the file's only tensor (a zstd frame)."""
    lay = layout(path)
    offset, _, _, planes = lay.tensor("w")["chunks"][0]
    at = lay.data_start + offset + sum(planes[:-1]) + planes[-1] // 2
    raw = bytearray(lay.raw)
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_a_damaged_chunk_found_by_diff_names_its_file(tmp_path):
    """Regression: dt.diff(good, bad) raised 'tensor "w": chunk 0 ... is corrupt'
    without saying which of the two files holds it."""
    good, bad = tmp_path / "good.deathtensors", tmp_path / "bad.deathtensors"
    dt.save(good, {"w": np.zeros(300_000, np.float32) + np.float32(0.5)}, compress=True)
    bad.write_bytes(good.read_bytes())
    _damage_last_plane(bad)
    for args in ((good, bad), (bad, good)):
        with pytest.raises(dt.FormatError, match="corrupt") as caught:
            dt.diff(*args)
        assert str(bad) in str(caught.value) and str(good) not in str(caught.value)
    for prefix in COMMANDS.values():
        result = run_cli(prefix, "diff", str(good), str(bad))
        assert result.returncode == 1 and str(bad).encode() in result.stderr, result.stderr


@pytest.fixture(params=list(COMMANDS), ids=list(COMMANDS))
def cli(request):
    prefix = COMMANDS[request.param]
    return lambda *args: run_cli(prefix, *args)


def test_cli_exit_codes_and_json(cli, base, tmp_path):
    same = tmp_path / "same.deathtensors"
    dt.save(same, _tensors(), metadata={"w": {"layer": 1}}, global_metadata={"model": "tiny"}, compress=True)
    tensors = _tensors()
    tensors["b"][7] = -1
    changed = tmp_path / "changed.deathtensors"
    dt.save(changed, tensors, metadata={"w": {"layer": 1}}, global_metadata={"model": "tiny"})

    result = cli("diff", str(base), str(same))
    assert result.returncode == 0, result.stderr
    assert b"identical" in result.stdout

    result = cli("diff", str(base), str(changed))
    assert result.returncode == 1, result.stderr
    assert b"b: values differ: 1 of 300 elements" in result.stdout
    assert b"first at [7]" in result.stdout

    result = cli("diff", str(base), str(changed), "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["identical"] is False
    assert [(v["name"], v["differing"], v["first_index"]) for v in report["value_changed"]] == [("b", 1, [7])]
    assert SPEC_KEYS <= report.keys()

    result = cli("diff", str(base), str(same), "--json", "--rtol", "1e-6", "--atol", "0")
    assert result.returncode == 0
    assert json.loads(result.stdout)["identical"] is True


def test_cli_diff_of_checkpoints(cli, base, tmp_path):
    resharded = tmp_path / "r.deathtensors"
    dt.save_sharded(
        resharded, _tensors(), metadata={"w": {"layer": 1}}, global_metadata={"model": "tiny"}, max_shard_bytes=1
    )
    result = cli("diff", str(base), str(resharded))
    assert result.returncode == 0, result.stderr
    assert b"identical" in result.stdout
    tensors = _tensors()
    tensors["b"][9] = -1
    changed = tmp_path / "c.deathtensors"
    dt.save_sharded(
        changed, tensors, metadata={"w": {"layer": 1}}, global_metadata={"model": "tiny"}, max_shard_bytes=1
    )
    result = cli("diff", str(resharded), str(changed) + ".index.json", "--json")
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert [(v["name"], v["first_index"]) for v in report["value_changed"]] == [("b", [9])]


def test_cli_bad_file_and_usage_errors(cli, base, tmp_path):
    garbage = tmp_path / "garbage.deathtensors"
    garbage.write_bytes(b"not a tensor file at all, really")
    result = cli("diff", str(base), str(garbage))
    assert result.returncode == 1
    assert result.stdout == b""
    assert b"error" in result.stderr
    assert cli("diff", str(base), str(tmp_path / "missing.deathtensors")).returncode == 1
    assert cli("diff", str(base)).returncode == 2
    assert cli("diff", str(base), str(base), "--rtol", "abc").returncode == 2
    assert cli("diff", str(base), str(base), "--atol=-1").returncode == 2


def test_cli_progress_bar_only_on_a_terminal(tmp_path):
    a, b = tmp_path / "a.deathtensors", tmp_path / "b.deathtensors"
    dt.save(a, {"x": np.arange(1 << 20, dtype=np.float32)})
    dt.save(b, {"x": np.arange(1 << 20, dtype=np.float32)}, compress=True)
    args = [sys.executable, "-m", "deathtensors", "diff", str(a), str(b)]
    env = dict(os.environ, DEATHTENSORS_PROGRESS_MIN_BYTES="1")
    proc, tty_err = run_on_pty(args, env)
    assert proc.returncode == 0
    assert "diff" in tty_err and "[" in tty_err, tty_err
    piped = subprocess.run(args, capture_output=True, env=env, timeout=60, check=False)
    assert piped.returncode == 0 and piped.stderr == b""
    assert piped.stdout == proc.stdout
