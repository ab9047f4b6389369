"""f.stats / f.all_stats and the CLI's stats command (issue #4 point 1)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import deathtensors as dt


def _reference(t: torch.Tensor) -> dict:
    x = t.detach().to(torch.float64).flatten()
    finite = x[torch.isfinite(x)]
    return {
        "count": x.numel(),
        "min": float(finite.min()) if finite.numel() else None,
        "max": float(finite.max()) if finite.numel() else None,
        "mean": float(finite.mean()) if finite.numel() else None,
        "stddev": float(finite.std(unbiased=False)) if finite.numel() else None,
        "nnz": int((x != 0).sum()),
        "nan_count": int(torch.isnan(x).sum()),
        "inf_count": int(torch.isinf(x).sum()),
    }


@pytest.mark.parametrize("compress", [False, True, "lz4"])
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.float8_e4m3fn, torch.float8_e5m2]
)
def test_float_stats_match_torch(tmp_path, compress, dtype):
    g = torch.Generator().manual_seed(1)
    t = (torch.randn(300, 70, generator=g) * 3).to(dtype)
    if dtype != torch.float8_e4m3fn:  # no infinities in e4m3fn
        t.view(-1)[5] = float("inf")
    t.view(-1)[7] = float("nan")
    t.view(-1)[9] = 0.0
    p = tmp_path / "s.deathtensors"
    dt.save(p, {"t": t}, compress=compress)
    with dt.open(p) as f:
        s = f.stats("t")
    ref = _reference(t)
    assert s["shape"] == [300, 70] and s["nbytes"] == t.numel() * t.element_size()
    for key in ("count", "nnz", "nan_count", "inf_count"):
        assert s[key] == ref[key], key
    for key in ("min", "max", "mean", "stddev"):
        assert math.isclose(s[key], ref[key], rel_tol=1e-12, abs_tol=1e-12), (key, s[key], ref[key])


def test_integer_and_bool_stats_are_exact(tmp_path):
    big = torch.tensor([-(2**63), 2**63 - 1, 0, 5], dtype=torch.int64)
    flags = torch.tensor([True, False, True, True])
    p = tmp_path / "s.deathtensors"
    dt.save(p, {"big": big, "flags": flags, "u8": torch.arange(256, dtype=torch.uint8)}, compress=True)
    with dt.open(p) as f:
        everything = f.all_stats()
    assert list(everything) == ["big", "flags", "u8"]
    assert everything["big"]["min"] == -(2**63) and everything["big"]["max"] == 2**63 - 1
    assert everything["big"]["nnz"] == 3
    assert everything["flags"]["min"] is False and everything["flags"]["max"] is True
    assert everything["flags"]["mean"] == 0.75 and everything["flags"]["nnz"] == 3
    assert everything["u8"]["mean"] == 127.5 and everything["u8"]["max"] == 255


def test_complex_stats_describe_the_magnitude(tmp_path):
    z = torch.tensor([3 + 4j, 0j, 1j], dtype=torch.complex64)
    p = tmp_path / "c.deathtensors"
    dt.save(p, {"z": z})
    with dt.open(p) as f:
        s = f.stats("z")
    assert s["max"] == 5.0 and s["min"] == 0.0 and s["nnz"] == 2
    assert math.isclose(s["mean"], 2.0) and math.isclose(s["mean_real"], 1.0)
    assert math.isclose(s["mean_imag"], 5.0 / 3.0, rel_tol=1e-6)


def test_huge_finite_values_have_a_finite_stddev(tmp_path):
    # Their squared deviations overflow f64; stddev used to come back None.
    path = tmp_path / "huge.deathtensors"
    tensors = {
        "pm": torch.tensor([1e200, -1e200], dtype=torch.float64),
        "same": torch.full((1000,), 1e308, dtype=torch.float64),
        "edge": torch.tensor([1.7e308, -1.7e308], dtype=torch.float64),
    }
    dt.save(path, tensors)
    with dt.open(path) as f:
        pm, same, edge = (f.stats(n) for n in tensors)
    assert (pm["mean"], pm["stddev"]) == (0.0, 1e200)
    assert same["mean"] == pytest.approx(1e308, rel=1e-12)
    assert 0.0 <= same["stddev"] <= 1e-12 * 1e308
    assert (edge["mean"], edge["stddev"]) == (0.0, 1.7e308)


def test_empty_and_missing(tmp_path):
    p = tmp_path / "e.deathtensors"
    dt.save(p, {"e": torch.zeros(0, 3)})
    with dt.open(p) as f:
        s = f.stats("e")
        assert s["count"] == 0 and s["min"] is None and s["mean"] is None
        with pytest.raises(dt.TensorNotFoundError):
            f.stats("nope")


def test_cli_stats(tmp_path):
    p = tmp_path / "s.deathtensors"
    dt.save(p, {"a": torch.tensor([1.0, 2.0, 3.0, float("nan")]), "b": torch.arange(4)}, compress=True)
    out = subprocess.run(
        [sys.executable, "-m", "deathtensors", "stats", str(p), "--json"], capture_output=True, text=True, check=True
    )
    rows = json.loads(out.stdout)
    assert [r["name"] for r in rows] == ["a", "b"]
    assert rows[0]["mean"] == 2.0 and rows[0]["nan_count"] == 1 and rows[1]["max"] == 3
    table = subprocess.run(
        [sys.executable, "-m", "deathtensors", "stats", str(p), "a"], capture_output=True, text=True, check=True
    ).stdout
    assert "a" in table and "nan" in table.splitlines()[0]
    missing = subprocess.run(
        [sys.executable, "-m", "deathtensors", "stats", str(p), "zz"], capture_output=True, text=True
    )
    assert missing.returncode != 0 and "zz" in missing.stderr


@pytest.mark.parametrize("value", [0.1, 1.7e308, -3.3e-7])
def test_a_constant_f64_tensor_has_its_value_as_mean_and_no_spread(tmp_path, value):
    """Regression: np.full(10**6, 0.1) had mean 0.09999999999999977 (under its min) and stddev 2.4e-16."""
    path = tmp_path / "c.deathtensors"
    dt.save(path, {"c": np.full(1_000_003, value), "d": np.array([0.1, 0.2, 0.3] * 1000)})
    with dt.open(path) as f:
        s = f.stats("c")
        assert (s["min"], s["max"], s["mean"], s["stddev"]) == (value, value, value, 0.0)
        d = f.stats("d")
        assert d["min"] <= d["mean"] <= d["max"]
        assert math.isclose(d["mean"], 0.2, rel_tol=1e-15) and math.isclose(d["stddev"], np.std([0.1, 0.2, 0.3]))
