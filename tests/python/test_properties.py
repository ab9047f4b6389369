"""Property tests (hypothesis) of save/open/get_tensor, and of damaged files.

Random tensors of every dtype (BF16 and the F8 types through torch, the rest
through torch or numpy), shapes with zero-size dimensions and 0-d scalars,
any Unicode names, any JSON metadata, every codec, level and checksum, and
chunk sizes small enough to cut tensors into many chunks, are saved, opened
and compared bit for bit. A changed byte or a cut anywhere in a valid file
gives a ``DeathtensorsError`` subclass, never another exception.

Example counts are bounded so the file runs in well under a minute; the
examples that found bugs are pinned with ``@example``.
"""

from __future__ import annotations

import json
import math
from typing import Any, Dict, List, Optional, Tuple

import pytest
from _dtutil import CHECKSUM_OPTIONS, COMPRESS_OPTIONS, DTYPES, torch_bytes, torch_from_bytes
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import deathtensors as dt
from deathtensors import _core

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

#: Depth limit of the header's JSON (docs/format_spec.md §3.1): the top-level object is level 1.
MAX_HEADER_DEPTH = 127

SETTINGS = {
    "deadline": None,
    "database": None,  # failures are pinned with @example instead
    "suppress_health_check": [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
}

# -- strategies ------------------------------------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
#: What save(metadata=...) takes per tensor and global_metadata= takes: str -> any JSON value.
metadata_dicts = st.dictionaries(st.text(), json_values, max_size=4)

shapes = st.lists(st.integers(0, 6), max_size=4).filter(lambda s: math.prod(s) <= 256)


@st.composite
def tensor_specs(draw: Any) -> Tuple[Tuple[str, str, Optional[str], int], List[int], bytes, str]:
    """``(dtype row of DTYPES, shape, raw bytes, framework)``; BOOL bytes are 0 or 1."""
    dtype = draw(st.sampled_from(DTYPES))
    shape = draw(shapes)
    n = math.prod(shape) * dtype[3]
    if dtype[0] == "BOOL":
        raw = bytes(draw(st.lists(st.integers(0, 1), min_size=n, max_size=n)))
    else:
        raw = draw(st.binary(min_size=n, max_size=n) | st.integers(0, 255).map(lambda b: bytes([b]) * n))
    framework = draw(st.sampled_from(["torch", "numpy"])) if dtype[2] is not None else "torch"
    return dtype, shape, raw, framework


#: Tensors with distinct names (any Unicode, the empty string included), in drawn order.
tensor_lists = st.lists(st.tuples(st.text(), tensor_specs(), metadata_dicts), max_size=4, unique_by=lambda t: t[0])
codecs = st.sampled_from(COMPRESS_OPTIONS)
checksums = st.sampled_from(CHECKSUM_OPTIONS)
levels = st.none() | st.integers(-5, 19)
#: None: the public save(); a number: the same writer with that chunk size.
chunk_sizes = st.none() | st.integers(1, 300)


def _value(spec: Any) -> Any:
    (dtype_id, torch_name, numpy_name, _item), shape, raw, framework = spec
    if framework == "numpy":
        return np.frombuffer(raw, dtype=np.dtype(numpy_name)).reshape(tuple(shape)).copy()
    return torch_from_bytes(raw, torch_name, shape)


def _save(
    path: Any, tensors: List[Any], global_md: Dict[str, Any], compress: Any, level: Any, checksum: Any, chunk: Any
):
    values = {name: _value(spec) for name, spec, _md in tensors}
    per_tensor = {name: md for name, _spec, md in tensors}
    if chunk is None:
        dt.save(
            path,
            values,
            metadata=per_tensor,
            global_metadata=global_md,
            compress=compress,
            compress_level=level,
            checksum=checksum,
        )
        return
    # save() does not take a chunk size; its writer does, through the same argument checks.
    rows = dt._rows(dt._entries(values), per_tensor)
    _core.save(
        str(path),
        rows,
        global_metadata=dt._dumps(global_md, "global_metadata"),
        codec=dt._choose(compress, dt.DEFAULT_CODEC, "compress"),
        level=level if compress else None,
        checksum=dt._choose(checksum, dt.DEFAULT_CHECKSUM, "checksum"),
        chunk_bytes=chunk,
        durable=False,
    )


def _same_json(got: Any, want: Any) -> None:
    """Equal as values and as JSON text: key order and every float's exact value count."""
    assert got == want
    assert json.dumps(got, ensure_ascii=False) == json.dumps(want, ensure_ascii=False)


# -- round trips -----------------------------------------------------------------------------------


@settings(max_examples=150, **SETTINGS)
@given(
    tensors=tensor_lists, global_md=metadata_dicts, codec=codecs, level=levels, checksum=checksums, chunk=chunk_sizes
)
@example(  # serde_json without float_roundtrip read this float back one ULP off
    tensors=[],
    global_md={"x": 2.1341401438197558e17},
    codec=(False, None),
    level=None,
    checksum=(False, None),
    chunk=None,
)
def test_saved_tensors_read_back_bit_exact(tmp_path, tensors, global_md, codec, level, checksum, chunk):
    path = tmp_path / "p.deathtensors"
    _save(path, tensors, global_md, codec[0], level, checksum[0], chunk)
    with dt.open(path, verify=checksum[1] is not None) as f:
        assert f.keys() == [name for name, _spec, _md in tensors]
        _same_json(f.metadata(), global_md)
        assert f.codec() == codec[1]
        assert f.is_compressed() == (codec[1] is not None)
        assert f.checksum_algorithm() == checksum[1]
        for name, spec, md in tensors:
            (dtype_id, torch_name, numpy_name, item), shape, raw, _framework = spec
            info = f.info(name)
            assert (info["dtype"], info["shape"], info["nbytes"]) == (dtype_id, shape, len(raw))
            _same_json(info["metadata"], md)
            if chunk is not None and codec[1] is not None:
                assert info["chunks"] >= -(-len(raw) // max(chunk, item)), "chunks hold at most chunk_bytes"
            assert f.get_bytes(name) == raw
            t = f.get_tensor(name)
            assert t.dtype == getattr(torch, torch_name) and list(t.shape) == shape
            assert torch_bytes(t) == raw
            if numpy_name is not None:
                a = f.get_tensor(name, framework="numpy")
                assert a.dtype == np.dtype(numpy_name) and list(a.shape) == shape
                assert a.tobytes() == raw
        if checksum[1] is not None:
            assert f.verify() is True


@settings(max_examples=60, **SETTINGS)
@given(name=st.text(), dtype=st.sampled_from(DTYPES))
def test_a_name_is_any_unicode_string(tmp_path, name, dtype):
    path = tmp_path / "n.deathtensors"
    dt.save_file(path, {name: {"dtype": dtype[0], "shape": [], "data": bytes(dtype[3])}})
    with dt.open(path) as f:
        assert f.keys() == [name]
        assert f.get_bytes(name) == bytes(dtype[3])


# -- what the API refuses --------------------------------------------------------------------------


@settings(max_examples=40, **SETTINGS)
@given(depth=st.integers(100, 140), per_tensor=st.booleans())
@example(depth=126, per_tensor=False)  # was written, then refused by open
@example(depth=124, per_tensor=True)  # was written, then refused by open
def test_metadata_too_deep_for_the_header_is_refused_when_saved(tmp_path, depth, per_tensor):
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    md = {"deep": value}
    # Containers around the value: the header object (and `tensors` and the entry), then the metadata object.
    header_depth = (3 if per_tensor else 1) + 1 + depth
    path = tmp_path / "d.deathtensors"
    path.unlink(missing_ok=True)  # tmp_path is shared by all examples
    kwargs = {"metadata": {"t": md}} if per_tensor else {"global_metadata": md}
    if header_depth > MAX_HEADER_DEPTH:
        # the Rust writer's check, or (deeper still) the JSON parser's own limit on the way in
        with pytest.raises(dt.InvalidArgumentError, match="nested too deeply|recursion limit"):
            dt.save(path, {"t": np.zeros(2, dtype=np.uint8)}, **kwargs)
        assert not path.exists()
        return
    dt.save(path, {"t": np.zeros(2, dtype=np.uint8)}, **kwargs)
    with dt.open(path) as f:
        _same_json(f.info("t")["metadata"] if per_tensor else f.metadata(), md)


not_json = st.sampled_from([math.nan, math.inf, -math.inf, 2**64, -(2**63) - 1, 10**30, b"bytes", {1, 2}, object()])


@settings(max_examples=60, **SETTINGS)
@given(bad=not_json, where=st.sampled_from(["global", "tensor"]), nest=st.booleans())
def test_metadata_json_cannot_carry_exactly_is_refused(tmp_path, bad, where, nest):
    value = [{"x": bad}] if nest else bad
    path = tmp_path / "j.deathtensors"
    path.unlink(missing_ok=True)  # tmp_path is shared by all examples
    kwargs = {"metadata": {"t": {"k": value}}} if where == "tensor" else {"global_metadata": {"k": value}}
    with pytest.raises(dt.InvalidArgumentError):
        dt.save(path, {"t": np.zeros(2)}, **kwargs)
    assert not path.exists()


lone_surrogates = st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), min_size=1, max_size=2)


@settings(max_examples=40, **SETTINGS)
@given(prefix=st.text(max_size=3), bad=lone_surrogates, where=st.sampled_from(["name", "key", "value"]))
def test_strings_that_are_not_unicode_are_refused(tmp_path, prefix, bad, where):
    text = prefix + bad
    path = tmp_path / "s.deathtensors"
    path.unlink(missing_ok=True)  # tmp_path is shared by all examples
    name = text if where == "name" else "t"
    md = {text: 1} if where == "key" else {"k": text}
    with pytest.raises(dt.InvalidArgumentError):
        dt.save(path, {name: np.zeros(2)}, global_metadata=md if where != "name" else None)
    assert not path.exists()


# -- damaged files ---------------------------------------------------------------------------------

small_tensor_lists = st.lists(
    st.tuples(st.text(max_size=4), tensor_specs(), metadata_dicts), min_size=1, max_size=3, unique_by=lambda t: t[0]
)


def _read_everything(path: Any) -> None:
    with dt.open(path) as f:
        for name in f.keys():
            assert len(f.get_bytes(name)) == f.info(name)["nbytes"]
            f.get_tensor(name)
        if f.has_checksum():
            f.verify()


@settings(max_examples=60, **SETTINGS)
@given(
    tensors=small_tensor_lists,
    global_md=metadata_dicts,
    codec=codecs,
    checksum=checksums,
    chunk=chunk_sizes,
    flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=6),
)
def test_a_changed_byte_gives_a_deathtensors_error_or_other_values(
    tmp_path, tensors, global_md, codec, checksum, chunk, flips
):
    path = tmp_path / "f.deathtensors"
    _save(path, tensors, global_md, codec[0], None, checksum[0], chunk)
    good = path.read_bytes()
    damaged = tmp_path / "damaged.deathtensors"
    for where, xor in flips:
        at = int(where * len(good))
        data = bytearray(good)
        data[at] ^= xor
        damaged.write_bytes(bytes(data))
        try:
            _read_everything(damaged)
        except dt.DeathtensorsError as e:
            assert str(e)
        else:
            # Only bytes no footer covers may change silently: the preamble, or anything without a footer.
            assert checksum[1] is None or at < 24, f"a change at {at} passed verification"


@settings(max_examples=40, **SETTINGS)
@given(
    tensors=small_tensor_lists,
    global_md=metadata_dicts,
    codec=codecs,
    checksum=checksums,
    cuts=st.lists(st.floats(0, 1, exclude_max=True), min_size=1, max_size=6),
)
def test_a_cut_file_is_refused_at_open(tmp_path, tensors, global_md, codec, checksum, cuts):
    path = tmp_path / "c.deathtensors"
    _save(path, tensors, global_md, codec[0], None, checksum[0], None)
    good = path.read_bytes()
    cut_path = tmp_path / "cut.deathtensors"
    for where in cuts:
        cut_path.write_bytes(good[: int(where * len(good))])
        with pytest.raises(dt.FormatError) as exc:
            dt.open(cut_path)
        assert type(exc.value) is dt.FormatError, "a cut is a format error, not a more specific one"
