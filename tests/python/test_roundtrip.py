"""Round trips: every dtype, compression x checksum, shapes, layouts, order, metadata, raw bytes."""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

import pytest
from _dtutil import (
    CHECKSUM_OPTIONS,
    COMPRESS_OPTIONS,
    DTYPES,
    FLAG_CHECKSUM,
    FLAG_COMPRESSED,
    NO_NUMPY_DTYPES,
    NUMPY_DTYPES,
    layout,
    sample_raw,
    torch_bytes,
    torch_from_bytes,
    torch_u8,
)

import deathtensors as dt

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

DTYPE_PARAMS = [pytest.param(d, id=d[0]) for d in DTYPES]
COMPRESS_PARAMS = [pytest.param(c, id=f"compress={c[0]!r}") for c in COMPRESS_OPTIONS]
CHECKSUM_PARAMS = [pytest.param(c, id=f"checksum={c[0]!r}") for c in CHECKSUM_OPTIONS]
SHAPES = [(), (0,), (3, 0), (7,), (5, 3), (2, 3, 4)]


def _all_dtype_tensors(seed: int = 0):
    """One tensor per dtype (several shapes), with the raw bytes each must hold."""
    tensors, raws = {}, {}
    for k, (dtype_id, torch_name, _np, _size) in enumerate(DTYPES):
        for j, shape in enumerate([(33, 3), (), (0, 2)]):
            name = f"{dtype_id}/{j}"
            raw = sample_raw(dtype_id, shape, seed + 100 * k + j)
            tensors[name] = torch_from_bytes(raw, torch_name, shape)
            raws[name] = (raw, torch_name, shape)
    return tensors, raws


# -- every dtype, bit-exact --------------------------------------------------------------


@pytest.mark.parametrize("compress", COMPRESS_PARAMS)
@pytest.mark.parametrize("dtype", DTYPE_PARAMS)
def test_every_dtype_round_trips_bit_exact_in_torch(tmp_path, dtype, compress):
    dtype_id, torch_name, _np_name, item = dtype
    tensors, expected = {}, {}
    for j, shape in enumerate(SHAPES + [(300, 17)]):
        raw = sample_raw(dtype_id, shape, seed=j)
        tensors[f"t{j}"] = torch_from_bytes(raw, torch_name, shape)
        expected[f"t{j}"] = (raw, shape)
    path = tmp_path / "x.deathtensors"
    dt.save(path, tensors, compress=compress[0])
    with dt.open(path) as f:
        assert f.codec() == compress[1]
        for name, (raw, shape) in expected.items():
            got = f.get_tensor(name)
            assert isinstance(got, torch.Tensor)
            assert got.dtype == getattr(torch, torch_name)
            assert tuple(got.shape) == shape
            assert torch.equal(torch_u8(got), torch_u8(torch_from_bytes(raw, torch_name, shape)))
            assert torch_bytes(got) == raw
            assert f.get_bytes(name) == raw
            info = f.info(name)
            assert info["dtype"] == dtype_id
            assert info["shape"] == list(shape)
            assert info["nbytes"] == len(raw) == math.prod(shape) * item


def test_special_float_values_survive(tmp_path):
    values = [0.0, -0.0, float("inf"), float("-inf"), float("nan"), 1e-45, -3.5]
    tensors = {
        name: torch.tensor(values, dtype=getattr(torch, name)) for name in ["float16", "bfloat16", "float32", "float64"]
    }
    # A NaN with a payload, built from its bits.
    tensors["payload_nan"] = (
        torch.tensor([0x7FC00001, 0xFFC12345], dtype=torch.int64).to(torch.int32).view(torch.float32)
    )
    path = tmp_path / "f.deathtensors"
    dt.save(path, tensors, compress=True)
    with dt.open(path) as f:
        for name, t in tensors.items():
            got = f.get_tensor(name)
            assert torch.equal(torch_u8(got), torch_u8(t)), name
    assert torch_bytes(tensors["payload_nan"]) == bytes.fromhex("0100c07f4523c1ff")


@pytest.mark.parametrize("dtype", [pytest.param(d, id=d[0]) for d in NUMPY_DTYPES])
def test_numpy_dtypes_round_trip(tmp_path, dtype):
    dtype_id, torch_name, np_name, _item = dtype
    raw = sample_raw(dtype_id, (6, 5), seed=7)
    arr = np.frombuffer(raw, dtype=np.dtype(np_name)).reshape(6, 5)
    path = tmp_path / "n.deathtensors"
    dt.save(path, {"a": arr, "t": torch_from_bytes(raw, torch_name, (6, 5))})
    with dt.open(path) as f:
        assert f.info("a")["dtype"] == dtype_id
        for name in ("a", "t"):
            got = f.get_tensor(name, framework="numpy")
            assert isinstance(got, np.ndarray)
            assert got.dtype == np.dtype(np_name)
            assert got.shape == (6, 5)
            assert got.tobytes() == raw
        # numpy in, torch out
        t = f.get_tensor("a")
        assert t.dtype == getattr(torch, torch_name)
        assert torch_bytes(t) == raw
        alias = f.get_tensor("a", framework="np")
        assert alias.tobytes() == raw


@pytest.mark.parametrize("dtype", [pytest.param(d, id=d[0]) for d in NO_NUMPY_DTYPES])
def test_numpy_refuses_dtypes_it_lacks_with_a_clear_error(tmp_path, dtype):
    dtype_id, torch_name, _np, _item = dtype
    raw = sample_raw(dtype_id, (4,), seed=3)
    path = tmp_path / "b.deathtensors"
    dt.save(path, {"x": torch_from_bytes(raw, torch_name, (4,))})
    with dt.open(path) as f:
        with pytest.raises(dt.UnsupportedDtypeError) as exc:
            f.get_tensor("x", framework="numpy")
        assert dtype_id in str(exc.value)
        assert "torch" in str(exc.value)
        assert isinstance(exc.value, dt.DeathtensorsError)
        with pytest.raises(dt.UnsupportedDtypeError, match=dtype_id):
            f.get_tensors(framework="numpy")
        # the raw bytes stay reachable, and torch works
        assert f.get_bytes("x") == raw
        assert torch_bytes(f.get_tensor("x")) == raw


# -- compression x checksum ----------------------------------------------------------------


@pytest.mark.parametrize("checksum", CHECKSUM_PARAMS)
@pytest.mark.parametrize("compress", COMPRESS_PARAMS)
def test_compress_checksum_matrix(tmp_path, compress, checksum):
    tensors, raws = _all_dtype_tensors()
    # a compressible tensor, larger than one default chunk (1 MiB)
    big = torch.arange(300_000, dtype=torch.float32).reshape(1000, 300) % 7
    tensors["big"] = big
    raws["big"] = (torch_bytes(big), "float32", (1000, 300))
    path = tmp_path / "m.deathtensors"
    dt.save(path, tensors, checksum=checksum[0], compress=compress[0])

    with dt.open(path, verify=bool(checksum[1])) as f:
        assert f.is_compressed() is (compress[1] is not None)
        assert f.has_checksum() is (checksum[1] is not None)
        assert f.codec() == compress[1]
        assert f.checksum_algorithm() == checksum[1]
        assert f.keys() == list(tensors)
        for name, (raw, torch_name, shape) in raws.items():
            got = f.get_tensor(name)
            assert got.dtype == getattr(torch, torch_name)
            assert tuple(got.shape) == shape
            assert torch_bytes(got) == raw, name
        if checksum[1]:
            assert f.verify() is True
        else:
            with pytest.raises(dt.NoChecksumError):
                f.verify()
        big_info = f.info("big")

    # the file itself, read by the suite's own decoder
    lay = layout(path)
    assert lay.version == 1
    assert bool(lay.flags & FLAG_COMPRESSED) is (compress[1] is not None)
    assert bool(lay.flags & FLAG_CHECKSUM) is (checksum[1] is not None)
    assert set(lay.padding) <= {0}
    assert lay.data_start % 8 == 0
    assert lay.header.get("checksum") == checksum[1]
    if compress[1]:
        assert lay.header["compression"]["codec"] == compress[1]
        # compressible data takes less room, and is chunked in whole rows
        assert big_info["stored_nbytes"] < big_info["nbytes"]
        chunks = lay.tensor("big")["chunks"]
        assert len(chunks) >= 2 and big_info["chunks"] == len(chunks)
        assert sum(c[2] for c in chunks) == 1000 * 300 * 4
        assert all(c[2] % (300 * 4) == 0 for c in chunks), chunks
    else:
        assert "compression" not in lay.header
        assert big_info["chunks"] is None
        assert lay.stored("big") == raws["big"][0]
    if checksum[1] == "sha256":
        # footer = SHA-256(header + padding + data), computed independently
        assert lay.footer == hashlib.sha256(lay.raw[24 : lay.data_end]).digest()
    if checksum[1]:
        assert len(lay.footer) == 32
        with dt.open(path) as f:
            assert f.digest() == lay.footer.hex()


def test_explicit_plugin_ids_equal_the_defaults(tmp_path):
    t = {"w": torch.arange(1000, dtype=torch.int32) % 3}
    dt.save(tmp_path / "a.deathtensors", t, compress=True, checksum=True)
    dt.save(tmp_path / "b.deathtensors", t, compress="zstd", checksum="sha256")
    assert (tmp_path / "a.deathtensors").read_bytes() == (tmp_path / "b.deathtensors").read_bytes()


def test_compress_level_is_honoured(tmp_path):
    rng = np.random.default_rng(5)
    # compressible but not trivially: small alphabet, random order
    arr = rng.integers(0, 16, size=(512, 256), dtype=np.uint8)
    tensors = {"a": torch.from_numpy(arr)}
    paths = {}
    for level in (1, 19):
        paths[level] = tmp_path / f"l{level}.deathtensors"
        dt.save(paths[level], tensors, compress=True, compress_level=level)
        assert layout(paths[level]).header["compression"]["level"] == level
        with dt.open(paths[level]) as f:
            assert f.get_bytes("a") == arr.tobytes()
    assert paths[1].read_bytes() != paths[19].read_bytes()
    assert layout(paths[19]).tensor("a")["offsets"] != layout(paths[1]).tensor("a")["offsets"]
    # level is ignored without compression
    plain = tmp_path / "plain.deathtensors"
    dt.save(plain, tensors, compress=False, compress_level=19)
    assert layout(plain).flags & FLAG_COMPRESSED == 0
    with dt.open(plain) as f:
        assert not f.is_compressed()


@pytest.mark.parametrize("option", ["compress", "checksum"])
def test_unknown_plugin_id_raises_plugin_error_listing_available(tmp_path, option):
    path = tmp_path / "p.deathtensors"
    with pytest.raises(dt.PluginError) as exc:
        dt.save(path, {"a": torch.zeros(3)}, **{option: "nope"})
    message = str(exc.value)
    assert "nope" in message
    expected = ["zstd", "lz4"] if option == "compress" else ["sha256", "blake3"]
    for plugin_id in expected:
        assert plugin_id in message
    assert isinstance(exc.value, dt.DeathtensorsError)
    assert not path.exists()


@pytest.mark.parametrize("bad", [1, 2.0, ["zstd"]])
def test_non_bool_non_str_options_are_rejected(tmp_path, bad):
    with pytest.raises(dt.InvalidArgumentError):
        dt.save(tmp_path / "x.deathtensors", {"a": torch.zeros(1)}, compress=bad)
    with pytest.raises(dt.InvalidArgumentError):
        dt.save(tmp_path / "x.deathtensors", {"a": torch.zeros(1)}, checksum=bad)


def test_out_of_range_zstd_level_is_an_argument_error(tmp_path):
    with pytest.raises(dt.InvalidArgumentError):
        dt.save(tmp_path / "x.deathtensors", {"a": torch.zeros(100)}, compress=True, compress_level=100)
    assert not (tmp_path / "x.deathtensors").exists()


def test_odd_arguments_are_argument_errors_not_raw_python_errors(tmp_path):
    # Each of these used to escape as OverflowError, RecursionError or torch's RuntimeError.
    path = tmp_path / "x.deathtensors"
    x = {"a": torch.zeros(4)}
    for level in (2**31, -(2**31) - 1, 2**64):
        with pytest.raises(dt.InvalidArgumentError, match="out of range"):
            dt.save(path, x, compress=True, compress_level=level)
        with pytest.raises(dt.InvalidArgumentError, match="out of range"):
            dt.from_safetensors(tmp_path / "none.safetensors", path, compress=True, compress_level=level)
    with pytest.raises(dt.InvalidArgumentError, match="over 2\\*\\*64"):
        dt.save_file(path, {"a": {"dtype": "U8", "shape": [2**64], "data": b""}})
    looped: dict = {}
    looped["self"] = looped
    deep: dict = {}
    for _ in range(5000):
        deep = {"d": deep}
    for bad in (looped, deep):
        with pytest.raises(dt.InvalidArgumentError, match="nested too deeply, or contains itself"):
            dt.save(path, x, global_metadata=bad)
    nested = torch.nested.nested_tensor([torch.zeros(2), torch.zeros(3)])
    with pytest.raises(dt.InvalidArgumentError, match="nested tensor"):
        dt.save(path, {"n": nested})
    assert not path.exists()
    # numpy integers are levels like ints.
    dt.save(path, x, compress=True, compress_level=np.int64(5))
    with dt.open(path) as f:
        assert f._desc["level"] == 5


# -- shapes and layouts ---------------------------------------------------------------------


@pytest.mark.parametrize("compress", COMPRESS_PARAMS)
def test_zero_size_and_scalar_tensors(tmp_path, compress):
    tensors = {
        "empty1": torch.empty(0),
        "empty2": torch.empty(3, 0, dtype=torch.int16),
        "empty3": torch.empty(0, 0, 5, dtype=torch.complex128),
        "scalar_f": torch.tensor(2.5),
        "scalar_i": torch.tensor(-7, dtype=torch.int64),
        "scalar_b": torch.tensor(True),
        "after": torch.arange(5, dtype=torch.float64),
    }
    path = tmp_path / "z.deathtensors"
    dt.save(path, tensors, compress=compress[0], checksum=True)
    with dt.open(path, verify=True) as f:
        for name, t in tensors.items():
            got = f.get_tensor(name)
            assert got.shape == t.shape, name
            assert got.dtype == t.dtype, name
            assert torch.equal(got, t), name
        assert f.info("empty2")["nbytes"] == 0
        assert f.get_bytes("empty2") == b""
        assert f.info("scalar_f")["shape"] == []
        assert f.get_tensor("scalar_f").item() == 2.5
        assert f.get_tensor("scalar_i", framework="numpy").shape == ()
        assert f.get_tensor("empty3", framework="numpy").shape == (0, 0, 5)
        assert f.get_tensor("after", framework="numpy").tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_empty_dict_and_empty_name(tmp_path):
    dt.save(tmp_path / "none.deathtensors", {})
    with dt.open(tmp_path / "none.deathtensors") as f:
        assert f.keys() == []
        assert f.metadata() == {}
        assert f.get_tensors() == {}
    dt.save(tmp_path / "blank.deathtensors", {"": torch.ones(2)})
    with dt.open(tmp_path / "blank.deathtensors") as f:
        assert f.keys() == [""]
        assert f.get_tensor("").tolist() == [1.0, 1.0]


def test_non_contiguous_torch_inputs(tmp_path):
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    cplx = torch.complex(torch.arange(4.0), torch.arange(4.0) + 10)
    tensors = {
        "transposed": base.t(),
        "stepped": base[::2, 1::3],
        "offset_view": base[2:, 4:],
        "expanded": torch.arange(3).expand(4, 3),
        "permuted": torch.arange(24, dtype=torch.int16).reshape(2, 3, 4).permute(2, 0, 1),
        "conj_view": cplx.conj(),
        "neg_view": torch.arange(5.0)._neg_view(),
        "with_grad": torch.ones(3, requires_grad=True),
        "parameter": torch.nn.Parameter(torch.full((2, 2), 3.0)),
    }
    expected = {
        "transposed": [[float(r * 10 + c) for r in range(6)] for c in range(10)],
        "stepped": [[float(r * 10 + c) for c in (1, 4, 7)] for r in (0, 2, 4)],
        "offset_view": [[float(r * 10 + c) for c in range(4, 10)] for r in range(2, 6)],
        "expanded": [[0, 1, 2]] * 4,
        "permuted": [[[a * 12 + b * 4 + c for b in range(3)] for a in range(2)] for c in range(4)],
        "conj_view": [complex(i, -(i + 10)) for i in range(4)],
        "neg_view": [-0.0, -1.0, -2.0, -3.0, -4.0],
        "with_grad": [1.0, 1.0, 1.0],
        "parameter": [[3.0, 3.0], [3.0, 3.0]],
    }
    path = tmp_path / "nc.deathtensors"
    dt.save(path, tensors)
    with dt.open(path) as f:
        for name, t in tensors.items():
            got = f.get_tensor(name)
            assert list(got.shape) == list(t.shape), name
            assert got.is_contiguous()
            assert not got.is_conj() and not got.is_neg()
            assert got.tolist() == expected[name], name
            assert not got.requires_grad


@pytest.mark.parametrize("first", ["base", "view"])
def test_conjugate_and_negative_views_are_never_aliases_of_their_base(tmp_path, first):
    # A conj or neg view shares its base's whole storage with the same dtype and
    # shape, like a tied weight, but reads as other values. It used to be saved
    # as an alias of whichever came first, so one of the two read back wrong.
    z = torch.tensor([1 + 2j, 3 - 4j], dtype=torch.complex64)
    x = torch.tensor([1.0, -2.0])
    pairs = {"z": z, "z_conj": z.conj(), "x": x, "x_neg": x._neg_view()}
    order = ["z", "z_conj", "x", "x_neg"] if first == "base" else ["z_conj", "z", "x_neg", "x"]
    tensors = {k: pairs[k] for k in order}
    expected = {
        "z": [1 + 2j, 3 - 4j],
        "z_conj": [1 - 2j, 3 + 4j],
        "x": [1.0, -2.0],
        "x_neg": [-1.0, 2.0],
    }
    saved = tmp_path / "views.deathtensors"
    dt.save(saved, tensors)
    appended = tmp_path / "appended.deathtensors"
    dt.save(appended, {"other": torch.zeros(1)})
    dt.append(appended, tensors)
    dt.save_sharded(tmp_path / "sharded.deathtensors", tensors)
    with dt.open(saved) as f, dt.open(appended) as g, dt.open_sharded(tmp_path / "sharded.deathtensors") as s:
        for name in order:
            assert f.info(name)["alias_of"] is None, name
            for reader in (f, g, s):
                assert reader.get_tensor(name).tolist() == expected[name], name
    # A true tie (the same tensor twice) is still saved once.
    dt.save(saved, {"w": z, "tied": z})
    with dt.open(saved) as f:
        assert f.info("tied")["alias_of"] == "w"


def test_non_contiguous_and_big_endian_numpy_inputs(tmp_path):
    base = np.arange(48, dtype=np.int32).reshape(6, 8)
    arrays = {
        "T": base.T,
        "step": base[::2, ::-3],
        "fortran": np.asfortranarray(base.astype(np.float64)),
        "be_i4": np.arange(10, dtype=">i4") - 5,
        "be_f8": np.array([1.5, -2.25, np.inf], dtype=">f8"),
        "be_c8": np.array([1 + 2j, -3.5j], dtype=">c8"),
        "be_u2_T": np.arange(6, dtype=">u2").reshape(2, 3).T,
        "bool": np.array([[True, False, True]]),
    }
    expected_le = {
        "T": base.T.copy().astype("<i4"),
        "step": base[::2, ::-3].copy().astype("<i4"),
        "fortran": base.astype("<f8"),
        "be_i4": np.arange(10, dtype="<i4") - 5,
        "be_f8": np.array([1.5, -2.25, np.inf], dtype="<f8"),
        "be_c8": np.array([1 + 2j, -3.5j], dtype="<c8"),
        "be_u2_T": np.arange(6, dtype="<u2").reshape(2, 3).T.copy(),
        "bool": np.array([[True, False, True]]),
    }
    path = tmp_path / "np.deathtensors"
    dt.save(path, arrays)
    with dt.open(path) as f:
        for name, want in expected_le.items():
            got = f.get_tensor(name, framework="numpy")
            assert got.shape == want.shape, name
            assert got.dtype == want.dtype, name
            assert np.array_equal(got, want), name
            # stored little-endian, C order
            assert f.get_bytes(name) == want.tobytes(order="C"), name
        assert f.info("be_i4")["dtype"] == "I32"
        assert f.info("be_c8")["dtype"] == "C64"
        assert f.get_tensor("be_i4").tolist() == list(range(-5, 5))


def test_numpy_zero_d_array_keeps_its_shape(tmp_path):
    path = tmp_path / "s.deathtensors"
    dt.save(path, {"s": np.array(3.25)})
    with dt.open(path) as f:
        assert f.info("s")["shape"] == []
        got = f.get_tensor("s", framework="numpy")
        assert got.shape == ()
        assert float(got) == 3.25


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
def test_unsupported_inputs_are_refused(tmp_path):
    path = tmp_path / "u.deathtensors"
    with pytest.raises(dt.UnsupportedDtypeError, match="complex32"):
        dt.save(path, {"c": torch.zeros(2, dtype=torch.float32).to(torch.complex64).to(torch.complex32)})
    with pytest.raises(dt.UnsupportedDtypeError):
        dt.save(path, {"d": np.array(["2020-01-01"], dtype="datetime64[D]")})
    # Sparse COO is supported (save_sparse); other layouts are refused.
    with pytest.raises(dt.InvalidArgumentError, match="layout"):
        dt.save(path, {"sp": torch.eye(3).to_sparse_csr()})
    with pytest.raises(dt.InvalidArgumentError):
        dt.save(path, {"lst": [1, 2, 3]})
    with pytest.raises(dt.InvalidArgumentError):
        dt.save(path, {1: torch.zeros(1)})
    with pytest.raises(dt.InvalidArgumentError):
        dt.save(path, [("a", torch.zeros(1))])
    assert not path.exists()


# -- order and metadata -------------------------------------------------------------------------

NAMES = ["zeta", "Alpha", "alpha", "10", "9", "b.weight", "a.bias", "Ωmega", "é", "日本語", "🙂", "z z", "A"]


@pytest.mark.parametrize("compress", COMPRESS_PARAMS)
def test_keys_keep_insertion_order(tmp_path, compress):
    tensors = {name: torch.full((2,), float(i)) for i, name in enumerate(NAMES)}
    assert NAMES != sorted(NAMES)
    path = tmp_path / "o.deathtensors"
    dt.save(path, tensors, compress=compress[0])
    with dt.open(path) as f:
        assert f.keys() == NAMES
        assert list(f) == NAMES
        assert len(f) == len(NAMES)
        assert list(f.get_tensors()) == NAMES
        assert list(f.get_tensors(framework="numpy")) == NAMES
        for i, name in enumerate(NAMES):
            assert name in f
            assert f.get_tensor(name).tolist() == [float(i), float(i)]
    assert [t["name"] for t in layout(path).header["tensors"]] == NAMES


def test_keys_order_with_many_tensors(tmp_path):
    rng = np.random.default_rng(11)
    names = [f"layer.{i}.w" for i in rng.permutation(300)]
    dt.save(tmp_path / "many.deathtensors", {n: torch.zeros(1) for n in names})
    with dt.open(tmp_path / "many.deathtensors") as f:
        assert f.keys() == names


METADATA_VALUES = {
    "str": "fc1",
    "unicode": "ünïcødé 日本 🙂",
    "nul_in_string": "a\u0000b",
    "int": 42,
    "negative": -7,
    "u64_max": 2**64 - 1,
    "i64_min": -(2**63),
    "float": 0.1,
    "tiny": 5e-324,
    "large": 1.7976931348623157e308,
    "neg_zero": -0.0,
    "true": True,
    "false": False,
    "null": None,
    "list": [1, "two", 3.0, None, [False, {"deep": []}]],
    "empty_list": [],
    "empty_dict": {},
    "nested": {"a": {"b": {"c": [1, 2, {"d": "e"}]}}},
}


@pytest.mark.parametrize("compress", COMPRESS_PARAMS)
def test_metadata_of_any_json_type_round_trips(tmp_path, compress):
    path = tmp_path / "md.deathtensors"
    per_tensor = {"w": dict(METADATA_VALUES), "日本": {"layer": 3, "tags": ["x", "y"]}}
    global_md = {"model": "mlp-tiny", "config": dict(METADATA_VALUES), "license": None}
    dt.save(
        path,
        {"w": torch.zeros(2), "b": torch.ones(1), "日本": torch.ones(3)},
        metadata=per_tensor,
        global_metadata=global_md,
        compress=compress[0],
        checksum=True,
    )
    with dt.open(path, verify=True) as f:
        assert f.metadata() == global_md
        assert f.info("w")["metadata"] == per_tensor["w"]
        assert f.info("日本")["metadata"] == per_tensor["日本"]
        assert f.info("b")["metadata"] == {}
        got = f.info("w")["metadata"]
        for key, want in METADATA_VALUES.items():
            assert type(got[key]) is type(want), key
        assert math.copysign(1.0, got["neg_zero"]) == -1.0
        # the returned dicts are copies: mutating them changes nothing
        f.metadata()["model"] = "changed"
        f.info("w")["metadata"]["str"] = "changed"
        assert f.metadata()["model"] == "mlp-tiny"
        assert f.info("w")["metadata"]["str"] == "fc1"
    # stored as plain JSON in the header
    lay = layout(path)
    assert lay.header["metadata"] == global_md
    assert lay.tensor("w")["metadata"] == per_tensor["w"]


@pytest.mark.parametrize("value", [2**64, 2**70, -(2**63) - 1, 10**30])
def test_huge_integer_metadata_is_exact_or_refused(tmp_path, value):
    path = tmp_path / "big.deathtensors"
    try:
        dt.save(path, {"a": torch.zeros(1)}, global_metadata={"n": value})
    except dt.InvalidArgumentError:
        return
    with dt.open(path) as f:
        got = f.metadata()["n"]
    assert type(got) is int and got == value


def test_metadata_for_unknown_tensor_is_refused(tmp_path):
    path = tmp_path / "x.deathtensors"
    dt.save(path, {"a": torch.zeros(1)})
    before = path.read_bytes()
    with pytest.raises(dt.InvalidArgumentError, match="ghost"):
        dt.save(path, {"a": torch.ones(1)}, metadata={"a": {}, "ghost": {"k": 1}})
    assert path.read_bytes() == before


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", ["global", "tensor", "nested"])
def test_non_finite_metadata_is_refused(tmp_path, bad, where):
    path = tmp_path / "nan.deathtensors"
    kwargs = {
        "global": {"global_metadata": {"x": bad}},
        "tensor": {"metadata": {"a": {"x": bad}}},
        "nested": {"global_metadata": {"x": [{"y": bad}]}},
    }[where]
    with pytest.raises(dt.InvalidArgumentError):
        dt.save(path, {"a": torch.zeros(1)}, **kwargs)
    assert not path.exists()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"global_metadata": ["not", "a", "dict"]},
        {"global_metadata": {"x": object()}},
        {"global_metadata": {"x": b"bytes"}},
        {"metadata": {"a": "not a dict"}},
        {"metadata": {"a": {"x": {1, 2}}}},
    ],
    ids=["global-list", "global-object", "global-bytes", "tensor-str", "tensor-set"],
)
def test_non_json_metadata_is_refused(tmp_path, kwargs):
    with pytest.raises(dt.InvalidArgumentError):
        dt.save(tmp_path / "x.deathtensors", {"a": torch.zeros(1)}, **kwargs)


def test_odd_arguments_raise_the_documented_errors(tmp_path):
    """Regressions: metadata keyed by a non-str next to a str (TypeError from sorted()),
    a sparse meta tensor (NotImplementedError), metadata deeper than a header holds
    ("not JSON-serialisable: recursion limit exceeded"), device="cpu:0" with numpy."""
    path = tmp_path / "x.deathtensors"
    with pytest.raises(dt.InvalidArgumentError, match="not saved: 'zz', 1"):
        dt.save(path, {"a": torch.zeros(1)}, metadata={1: {}, "zz": {}})
    meta_sparse = torch.sparse_coo_tensor([[0]], [1.0], (2,)).to("meta")
    with pytest.raises(dt.InvalidArgumentError, match="meta device"):
        dt.save(path, {"s": meta_sparse})
    deep: Any = 1
    for _ in range(200):
        deep = [deep]
    with pytest.raises(dt.InvalidArgumentError, match="nested too deeply"):
        dt.save(path, {"a": torch.zeros(1)}, global_metadata={"deep": deep})
    assert not path.exists()
    dt.save(path, {"a": torch.arange(3)})
    with dt.open(path) as f:
        assert f.get_tensor("a", framework="numpy", device="cpu:0").tolist() == [0, 1, 2]


@pytest.mark.parametrize(
    "meta", [{1: "a", "1": "b"}, {True: 1, "true": 2}, {None: 1, "null": 2}, {"x": {2.5: 1, "2.5": 2}}]
)
def test_metadata_keys_that_become_one_json_key_are_refused(tmp_path, meta):
    # json.dumps writes 1 as "1": the two values used to collapse into one, silently.
    path = tmp_path / "x.deathtensors"
    with pytest.raises(dt.InvalidArgumentError, match="^global_metadata: keys .* are both the JSON key"):
        dt.save(path, {"a": torch.zeros(1)}, global_metadata=meta)
    with pytest.raises(dt.InvalidArgumentError, match="are both the JSON key"):
        dt.save(path, {"a": torch.zeros(1)}, metadata={"a": meta})
    assert not path.exists()
    # Keys that stay distinct are written as JSON writes them.
    dt.save(path, {"a": torch.zeros(1)}, global_metadata={1: "a", "2": "b", None: "c"})
    with dt.open(path) as f:
        assert f.metadata() == {"1": "a", "2": "b", "null": "c"}


@pytest.mark.parametrize("where", ["name", "metadata"])
def test_unencodable_strings_raise_invalid_argument(tmp_path, where):
    tensors = {"\ud800": torch.zeros(1)} if where == "name" else {"a": torch.zeros(1)}
    kwargs = {"global_metadata": {"x": "\udfff"}} if where == "metadata" else {}
    with pytest.raises(dt.InvalidArgumentError):
        dt.save(tmp_path / "s.deathtensors", tensors, **kwargs)


# -- save_file: raw bytes ---------------------------------------------------------------------


@pytest.mark.parametrize("compress", COMPRESS_PARAMS)
def test_save_file_with_raw_bytes(tmp_path, compress):
    f32 = bytes.fromhex("0000803f000000400000404000008040")  # 1.0 2.0 3.0 4.0 little-endian
    u16 = (513).to_bytes(2, "little") + (65535).to_bytes(2, "little")
    tensors = {
        "f32": {"dtype": "F32", "shape": [2, 2], "data": f32},
        "u16": {"dtype": "U16", "shape": [2], "data": bytearray(u16)},
        "mv": {"dtype": "I64", "shape": [], "data": memoryview((-2).to_bytes(8, "little", signed=True))},
        "cast": {"dtype": "I16", "shape": [2], "data": memoryview(bytearray(b"\x01\x00\xff\xff")).cast("h")},
        "bf16": {"dtype": "BF16", "shape": [1], "data": b"\x80\x3f"},
        "empty": {"dtype": "U8", "shape": [0, 4], "data": b""},
    }
    path = tmp_path / "raw.deathtensors"
    dt.save_file(path, tensors, metadata={"f32": {"k": [1]}}, global_metadata={"g": 1}, compress=compress[0])
    with dt.open(path) as f:
        assert f.keys() == list(tensors)
        assert f.metadata() == {"g": 1}
        assert f.info("f32")["metadata"] == {"k": [1]}
        assert f.get_tensor("f32").tolist() == [[1.0, 2.0], [3.0, 4.0]]
        assert f.get_tensor("u16", framework="numpy").tolist() == [513, 65535]
        assert f.get_tensor("mv").item() == -2
        assert f.get_tensor("cast").tolist() == [1, -1]
        assert f.get_tensor("bf16").item() == 1.0
        assert f.get_tensor("empty").shape == (0, 4)
        for name, spec in tensors.items():
            assert f.get_bytes(name) == bytes(memoryview(spec["data"]).cast("B"))
            assert f.info(name)["dtype"] == spec["dtype"]
            assert f.info(name)["shape"] == list(spec["shape"])


@pytest.mark.parametrize("nbytes", [0, 7, 9, 16])
def test_save_file_wrong_byte_length(tmp_path, nbytes):
    path = tmp_path / "bad.deathtensors"
    with pytest.raises(dt.InvalidArgumentError) as exc:
        dt.save_file(path, {"a": {"dtype": "F32", "shape": [2], "data": b"\0" * nbytes}})
    assert "8" in str(exc.value)
    assert not path.exists()


def test_save_file_bad_specs(tmp_path):
    path = tmp_path / "bad.deathtensors"
    with pytest.raises(dt.PluginError, match="F33"):
        dt.save_file(path, {"a": {"dtype": "F33", "shape": [1], "data": b"1234"}})
    with pytest.raises(dt.InvalidArgumentError):
        dt.save_file(path, {"a": {"dtype": "F32", "shape": [1]}})
    with pytest.raises(dt.InvalidArgumentError):
        dt.save_file(path, {"a": b"1234"})
    assert not path.exists()


def test_header_is_plain_json_without_code(tmp_path):
    path = tmp_path / "h.deathtensors"
    dt.save(path, {"w": torch.zeros(2, 2)}, metadata={"w": {"a": 1}}, global_metadata={"g": "x"}, checksum=True)
    lay = layout(path)
    assert set(lay.header) <= {"metadata", "compression", "checksum", "tensors"}
    assert json.loads(lay.header_text) == lay.header
    entry = lay.tensor("w")
    assert entry["dtype"] == "F32" and entry["shape"] == [2, 2]
    assert entry["offsets"][1] - entry["offsets"][0] == 16


def test_bools_whose_bytes_are_not_0_or_1_are_saved_as_true(tmp_path):
    """Regression: a torch or numpy bool whose byte is 2 or 255 (a byte buffer
    viewed as bool) is True to both, and safetensors saves it, but ``dt.save``
    refused it; it is stored as 0x01, the one byte the format has for true."""
    import torch

    raw = np.array([2, 0, 255, 1], dtype=np.uint8)
    for value in (torch.from_numpy(raw.copy()).view(torch.bool), raw.copy().view(np.bool_)):
        path = tmp_path / "b.deathtensors"
        dt.save(path, {"mask": value, "scalar": value[0]}, compress=True)
        with dt.open(path) as f:
            assert f.get_bytes("mask") == bytes([1, 0, 1, 1])
            assert f.get_bytes("scalar") == b"\x01"
            assert f.get_tensor("mask", framework="numpy").tolist() == [True, False, True, True]
    with pytest.raises(dt.InvalidArgumentError, match="0x02"):  # raw bytes are the caller's to get right
        dt.save_file(tmp_path / "r.deathtensors", {"mask": {"dtype": "BOOL", "shape": [4], "data": raw.tobytes()}})
