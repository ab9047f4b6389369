"""The JSON manifest sidecar: dt.write_manifest, dt.read_manifest and `deathtensors manifest`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from _dtutil import cli_commands, layout, run_cli

import deathtensors as dt

torch = pytest.importorskip("torch")

COMMANDS = cli_commands()


@pytest.fixture
def model(tmp_path):
    path = tmp_path / "model.deathtensors"
    tensors = {
        "w": torch.arange(12, dtype=torch.float32).reshape(3, 4),
        "b": torch.zeros(4, dtype=torch.bfloat16),
        "ids": torch.arange(5, dtype=torch.int64),
    }
    dt.save(
        path,
        tensors,
        metadata={"w": {"layer": 0, "tags": ["a", "b"]}},
        global_metadata={"model": "tiny", "step": 7},
        compress=True,
        checksum=True,
    )
    return path


def test_write_manifest_writes_the_sidecar_next_to_the_file(model):
    written = dt.write_manifest(model)
    assert written == f"{model}.manifest.json"
    assert sorted(os.listdir(model.parent)) == ["model.deathtensors", "model.deathtensors.manifest.json"]
    with open(written, encoding="utf-8") as fh:
        on_disk = json.load(fh)
    assert dt.read_manifest(written) == on_disk


def test_manifest_describes_the_file(model):
    m = dt.read_manifest(dt.write_manifest(model))
    raw = model.read_bytes()
    lay = layout(model)
    assert m["manifest_version"] == 1
    assert m["generator"] == f"deathtensors {dt.__version__}"
    assert m["file_name"] == "model.deathtensors"
    assert m["file_size"] == len(raw)
    assert m["format_version"] == 1
    assert m["flags"] == lay.flags == 3
    assert m["header_len"] == lay.header_len
    assert m["data_start"] == lay.data_start
    assert m["codec"] == "zstd"
    assert m["compression_level"] == 3
    assert m["checksum"] == "sha256"
    # The digest is the footer, which is SHA-256 of everything after the preamble.
    assert m["digest"] == raw[-32:].hex() == hashlib.sha256(raw[24:-32]).hexdigest()
    assert m["metadata"] == {"model": "tiny", "step": 7}
    # The full header, exactly as the file holds it.
    assert m["header"] == lay.header
    assert m["tensor_count"] == 3
    assert m["total_nbytes"] == 48 + 8 + 40
    rows = [(t["name"], t["dtype"], t["shape"], t["numel"], t["nbytes"]) for t in m["tensors"]]
    assert rows == [("w", "F32", [3, 4], 12, 48), ("b", "BF16", [4], 4, 8), ("ids", "I64", [5], 5, 40)]
    w = m["tensors"][0]
    assert w["metadata"] == {"layer": 0, "tags": ["a", "b"]}
    assert w["stored_nbytes"] == lay.tensor("w")["offsets"][1] - lay.tensor("w")["offsets"][0]
    assert w["chunks"] == len(lay.tensor("w")["chunks"])


def test_uncompressed_file_without_footer(tmp_path):
    path = tmp_path / "plain.dt"
    dt.save(path, {"x": torch.ones(2, 2)})
    m = dt.read_manifest(dt.write_manifest(path))
    assert (m["codec"], m["compression_level"], m["checksum"], m["digest"]) == (None, None, None, None)
    assert m["file_name"] == "plain.dt"
    assert m["tensors"][0]["chunks"] is None
    assert m["tensors"][0]["stored_nbytes"] == 16


def test_blake3_digest(tmp_path):
    path = tmp_path / "b3.deathtensors"
    dt.save(path, {"x": torch.ones(3)}, checksum="blake3")
    m = dt.read_manifest(dt.write_manifest(path))
    assert m["checksum"] == "blake3"
    assert m["digest"] == path.read_bytes()[-32:].hex()


def test_manifest_reads_only_the_header_and_footer(model):
    # Corrupt the tensor data: building the manifest neither decodes nor verifies it.
    raw = bytearray(model.read_bytes())
    lay = layout(model)
    begin = lay.data_start + lay.tensor("w")["offsets"][0]
    for i in range(begin, begin + 16):
        raw[i] ^= 0xFF
    model.write_bytes(bytes(raw))
    with pytest.raises(dt.ChecksumError):
        dt.open(model, verify=True)
    m = dt.read_manifest(dt.write_manifest(model))
    assert m["digest"] == bytes(raw[-32:]).hex()


def test_explicit_path_or_folder(model, tmp_path):
    out = tmp_path / "elsewhere" / "m.json"
    out.parent.mkdir()
    assert dt.write_manifest(model, out) == str(out)
    assert dt.read_manifest(out)["file_name"] == "model.deathtensors"
    folder = tmp_path / "folder"
    folder.mkdir()
    assert dt.write_manifest(model, folder) == str(folder / "model.deathtensors.manifest.json")
    assert dt.read_manifest(folder / "model.deathtensors.manifest.json")["file_size"] == model.stat().st_size


def test_rewriting_replaces_the_sidecar_atomically(model):
    first = dt.write_manifest(model)
    dt.save(model, {"only": torch.zeros(1)})
    assert dt.write_manifest(model) == first
    assert [t["name"] for t in dt.read_manifest(first)["tensors"]] == ["only"]
    # No temporary file is left behind.
    assert sorted(os.listdir(model.parent)) == ["model.deathtensors", "model.deathtensors.manifest.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(first).st_mode & 0o777 == 0o666 & ~umask  # a plain file's mode, not the temp file's 0600


def test_paths_expand_home_and_vars(model, monkeypatch):
    monkeypatch.setenv("DT_MANIFEST_DIR", str(model.parent))
    written = dt.write_manifest("$DT_MANIFEST_DIR/model.deathtensors", "$DT_MANIFEST_DIR/x.json")
    assert written == str(model.parent / "x.json")
    monkeypatch.setenv("HOME", str(model.parent))
    assert dt.read_manifest("~/x.json")["file_name"] == "model.deathtensors"


def test_write_manifest_of_a_bad_file_writes_nothing(tmp_path):
    bad = tmp_path / "bad.deathtensors"
    bad.write_bytes(b"this is not a deathtensors file")
    with pytest.raises(dt.FormatError):
        dt.write_manifest(bad)
    with pytest.raises(FileNotFoundError):
        dt.write_manifest(tmp_path / "absent.deathtensors")
    assert os.listdir(tmp_path) == ["bad.deathtensors"]


@pytest.mark.parametrize(
    "content, reason",
    [
        (None, "not valid JSON"),  # the .deathtensors file itself
        ("[1, 2]", "not a JSON object"),
        ('{"file_name": "x"}', "manifest_version"),
        ('{"manifest_version": 1, "manifest_version": 1}', "duplicate key"),
        ("{", "not valid JSON"),
    ],
)
def test_read_manifest_refuses_what_is_not_a_manifest(model, tmp_path, content, reason):
    path = model if content is None else tmp_path / "x.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(dt.FormatError, match=reason) as info:
        dt.read_manifest(path)
    assert "is not a deathtensors manifest" in str(info.value)


def _nested(levels: int) -> object:
    value: object = 1
    for _ in range(levels):
        value = [value]
    return value


def test_the_manifest_of_a_header_nested_to_the_limit_reads(tmp_path):
    """Regression: the manifest holds the header one level down, and its
    reader applied the header's depth limit, so read_manifest refused the
    manifest write_manifest had just written for a valid file."""
    path = tmp_path / "deep.deathtensors"
    levels = 130
    while True:  # the deepest per-tensor metadata that save accepts
        try:
            dt.save(path, {"w": torch.zeros(2)}, metadata={"w": {"deep": _nested(levels)}})
            break
        except dt.InvalidArgumentError as e:
            assert "nested too deeply" in str(e)
            levels -= 1
    assert levels > 100
    with dt.open(path) as f:
        assert f.info("w")["metadata"]["deep"] == _nested(levels)
    manifest = dt.read_manifest(dt.write_manifest(path))
    assert manifest["header"]["tensors"][0]["metadata"]["deep"] == _nested(levels)


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_a_manifest_nested_past_the_limit_is_refused_without_recursing(tmp_path, opener):
    """The depth bound is the strict walk's own (serde_json's limit is off), so
    it must refuse hostile nesting before it recurses into it."""
    path = tmp_path / "deep.manifest.json"
    path.write_text(opener * 100_000)
    with pytest.raises(dt.FormatError, match="recursion limit exceeded"):
        dt.read_manifest(path)
    path.write_text(opener * 129)  # one level past a manifest's 128
    with pytest.raises(dt.FormatError, match="recursion limit exceeded"):
        dt.read_manifest(path)


def test_read_manifest_checks_version_and_keys(model, tmp_path):
    good = dt.read_manifest(dt.write_manifest(model))
    target = tmp_path / "edited.json"

    def refused(doc, reason):
        target.write_text(json.dumps(doc))
        with pytest.raises(dt.FormatError, match=reason):
            dt.read_manifest(target)

    refused({**good, "manifest_version": 2}, "newer than this reader understands")
    refused({**good, "manifest_version": "1"}, "manifest_version")
    refused({k: v for k, v in good.items() if k != "header"}, '"header" is missing')
    refused({**good, "file_size": -1}, "file_size")
    refused({**good, "tensors": good["tensors"][:1]}, "rows")
    refused({**good, "header": {**good["header"], "extra": 1}}, "header")
    with pytest.raises(FileNotFoundError):
        dt.read_manifest(tmp_path / "absent.json")


@pytest.fixture(params=list(COMMANDS), ids=list(COMMANDS))
def cli(request):
    prefix = COMMANDS[request.param]
    if request.param == "script" and not os.access(prefix[0], os.X_OK):
        pytest.fail(f"the console script is not installed next to {prefix[0]}")
    return lambda *args, **kw: run_cli(prefix, *args, **kw)


def test_writing_the_manifest_over_the_tensor_file_is_refused(cli, model, tmp_path):
    # It used to replace the checkpoint with its own manifest.
    before = model.read_bytes()
    link = tmp_path / "link.json"
    link.symlink_to(model)
    for out in (model, link):
        with pytest.raises(dt.InvalidArgumentError, match="would replace the tensor file"):
            dt.write_manifest(model, out)
        r = cli("manifest", str(model), "-o", str(out))
        assert r.returncode == 2, r.stderr
        assert b"would replace the tensor file" in r.stderr
    assert model.read_bytes() == before
    assert link.is_symlink()


def test_a_sharded_checkpoint_is_refused_with_what_to_do(cli, tmp_path):
    """Regression: the base path said "No such file", the index "not a
    deathtensors file: the magic is '{...'"."""
    import numpy as np

    from deathtensors._manifest import manifest

    dt.save_sharded(tmp_path / "ck.deathtensors", {"a": np.ones(4, np.float32), "b": np.ones(4, np.float32)}, 16)
    for path in (tmp_path / "ck.deathtensors", tmp_path / "ck.deathtensors.index.json"):
        for call in (dt.write_manifest, manifest):
            with pytest.raises(dt.InvalidArgumentError, match="names a sharded checkpoint.*ck-00001-of-00002"):
                call(path)
        r = cli("manifest", str(path))
        assert r.returncode == 2 and b"names a sharded checkpoint" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir() if "manifest" in p.name) == []
    # What it says to do works.
    r = cli("manifest", str(tmp_path / "ck-00001-of-00002.deathtensors"))
    assert r.returncode == 0, r.stderr
    # A .json path that is no index keeps the errors of opening it.
    with pytest.raises(FileNotFoundError):
        dt.write_manifest(tmp_path / "missing.json")
    sidecar = tmp_path / "ck-00001-of-00002.deathtensors.manifest.json"
    with pytest.raises(dt.FormatError, match="not a deathtensors file"):
        dt.write_manifest(sidecar)
    assert cli("manifest", str(tmp_path / "missing.json")).returncode == 1


def test_cli_writes_the_sidecar_and_prints_its_path(cli, model):
    r = cli("manifest", str(model))
    assert r.returncode == 0, r.stderr
    sidecar = f"{model}.manifest.json"
    assert r.stdout.decode().strip() == sidecar
    assert dt.read_manifest(sidecar)["header"] == layout(model).header


def test_cli_json_prints_instead_of_writing(cli, model):
    r = cli("manifest", str(model), "--json")
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)
    assert not os.path.exists(f"{model}.manifest.json")
    assert printed == dt.read_manifest(dt.write_manifest(model))


def test_cli_output_option_and_expansion(cli, model):
    r = cli("manifest", "$DT_M_DIR/model.deathtensors", "-o", "$DT_M_DIR/out.json", env={"DT_M_DIR": str(model.parent)})
    assert r.returncode == 0, r.stderr
    out = model.parent / "out.json"
    assert r.stdout.decode().strip() == str(out)
    assert dt.read_manifest(out)["digest"] == model.read_bytes()[-32:].hex()


def test_cli_errors(cli, tmp_path, model):
    bad = tmp_path / "bad.deathtensors"
    bad.write_bytes(b"garbage garbage garbage garbage")
    r = cli("manifest", str(bad))
    assert r.returncode == 1
    assert b"deathtensors: error:" in r.stderr
    assert cli("manifest", str(model), "--json", "-o", str(tmp_path / "x.json")).returncode == 2
    assert cli("manifest").returncode == 2


def test_a_large_header_gets_a_compact_manifest_that_reads_back(tmp_path):
    """Regression: the manifest was always indented, which made the one of a
    header of millions of chunks over four times the header and over the 256 MiB
    that read_manifest accepted: a valid file gave a manifest its own reader refused."""
    small, large = tmp_path / "small.deathtensors", tmp_path / "large.deathtensors"
    dt.save(small, {"a": torch.zeros(2)}, global_metadata={"k": [1, 2]})
    dt.save(large, {"a": torch.zeros(2)}, global_metadata={"k": [1, 2], "notes": "x" * (2 << 20)})
    small_text = Path(dt.write_manifest(small)).read_text()
    large_text = Path(dt.write_manifest(large)).read_text()
    assert small_text.count("\n") > 10 and small_text.startswith('{\n  "')
    assert large_text.count("\n") == 1 and large_text.endswith("}\n")
    assert dt.read_manifest(str(large) + ".manifest.json")["metadata"]["k"] == [1, 2]
