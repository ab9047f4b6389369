"""The command line, run both as ``python -m deathtensors`` and as the installed ``deathtensors`` script."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import struct
import subprocess

import pytest
from _dtutil import DTYPE_IDS, FLAG_ENCRYPTED, build_file, cli_commands, layout, open_file_limit, run_cli

import deathtensors as dt

torch = pytest.importorskip("torch")

COMMANDS = cli_commands()


@pytest.fixture(params=list(COMMANDS), ids=list(COMMANDS))
def cli(request):
    prefix = COMMANDS[request.param]
    if request.param == "script" and not os.access(prefix[0], os.X_OK):
        pytest.fail(f"the console script is not installed next to {prefix[0]}")
    run = functools.partial(run_cli, prefix)
    run.prefix = prefix  # type: ignore[attr-defined]
    return run


NAMES = ["zeta", "alpha", "日本", "10", "9"]


@pytest.fixture
def files(tmp_path):
    tensors = {name: torch.full((2, i + 1), float(i)) for i, name in enumerate(NAMES)}
    tensors["alpha"] = torch.arange(6, dtype=torch.int16).reshape(2, 3)
    good = tmp_path / "good.deathtensors"
    dt.save(
        good, tensors, metadata={"zeta": {"layer": 1}}, global_metadata={"model": "tiny"}, compress=True, checksum=True
    )
    plain = tmp_path / "plain.deathtensors"
    dt.save(plain, tensors)
    corrupt = tmp_path / "corrupt.deathtensors"
    raw = bytearray(good.read_bytes())
    raw[-40] ^= 0xFF  # a data byte (the footer is the last 32)
    corrupt.write_bytes(bytes(raw))
    return {"good": good, "plain": plain, "corrupt": corrupt, "tensors": tensors}


def _one_clean_error_line(result):
    err = result.stderr.decode()
    assert result.stdout == b"" or result.returncode == 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "panicked" not in err and "backtrace" not in err.lower() and "Traceback" not in err
    return lines[0]


def test_both_entry_points_exist():
    assert os.access(COMMANDS["script"][0], os.X_OK), COMMANDS["script"][0]


def test_version(cli):
    result = cli("--version")
    assert result.returncode == 0
    assert "0.3.0" in result.stdout.decode()


def test_help(cli):
    result = cli("--help")
    assert result.returncode == 0
    out = result.stdout.decode()
    for command in ("info", "list", "verify", "plugins"):
        assert command in out
    sub = cli("verify", "--help")
    assert sub.returncode == 0 and "verify" in sub.stdout.decode().lower()


@pytest.mark.parametrize("args", [["no-such-command"], [], ["info"], ["list", "a", "b"], ["info", "--bogus", "x"]])
def test_usage_errors_exit_2(cli, args):
    result = cli(*args)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr
    assert b"panicked" not in result.stderr
    if args:  # a bare command prints its help instead
        # Regression: clap's errors took 5-7 lines; the usage is now on the one line.
        line = _one_clean_error_line(result)
        assert line.startswith("deathtensors: error: ") and "(usage: deathtensors " in line, line


def test_control_characters_in_names_are_printed_escaped(cli, tmp_path):
    """Names come from untrusted files: raw escape sequences would drive the
    terminal, and a newline would fake a row. They are printed escaped."""
    evil, forged = "evil\x1b]0;pwned\x07\x1b[2J", "nl\nfake  F32  [9]"
    path = tmp_path / "esc.deathtensors"
    dt.save(path, {evil: torch.zeros(2), forged: torch.ones(2)})
    other = tmp_path / "other.deathtensors"
    dt.save(other, {evil: torch.ones(2)})
    for args in (["list", path], ["info", path], ["stats", path], ["diff", path, other]):
        result = cli(*map(str, args))
        out = result.stdout.decode()
        assert result.returncode in (0, 1), result.stderr
        assert "\x1b" not in out and "\x07" not in out, args
        assert "evil\\u{1b}]0;pwned\\u{7}\\u{1b}[2J" in out, (args, out)
        assert "nl\\nfake" in out and not any(line.startswith("fake") for line in out.splitlines()), args
    assert cli("list", str(path)).stdout.decode().splitlines() == [
        "evil\\u{1b}]0;pwned\\u{7}\\u{1b}[2J",
        "nl\\nfake  F32  [9]",
    ]
    as_json = cli("list", "--json", str(path))
    assert json.loads(as_json.stdout) == [evil, forged]  # JSON keeps the real names
    # DEL and the C1 controls (U+009B is a one-character CSI) are escaped too,
    # in JSON's own form, so --json output stays valid and exact.
    c1 = tmp_path / "c1.deathtensors"
    dt.save(c1, {"csi\u009b2J": torch.zeros(1), "del\x7f": torch.zeros(1)})
    text = cli("list", str(c1)).stdout.decode()
    assert "\u009b" not in text and "\x7f" not in text and "csi\\u{9b}2J" in text, text
    for args in (["list", "--json"], ["info", "--json"], ["stats", "--json"]):
        out = cli(*args, str(c1)).stdout.decode()
        assert "\u009b" not in out and "\x7f" not in out, args
        names = json.loads(out) if args[0] == "list" else None
        assert names in (None, ["csi\u009b2J", "del\x7f"]), names


def test_invisible_characters_that_reorder_names_are_printed_escaped(cli, tmp_path):
    """Regression: a name with a right-to-left override (U+202E) and no control
    character was printed raw, so "layer.0.<U+202E>thgiew" showed as
    "layer.0.weight"; metadata lines passed U+202E and U+2028 raw too."""
    spoof, isolate, split = "layer.0.\u202ethgiew", "a\u2066b\u2069", "line\u2028sep"
    path = tmp_path / "bidi.deathtensors"
    dt.save(path, {spoof: torch.zeros(2), isolate: torch.ones(1), split: torch.ones(1)}, global_metadata={"k": spoof})
    other = tmp_path / "other.deathtensors"
    dt.save(other, {spoof: torch.ones(2)}, global_metadata={"k": split})
    for args in (["list", path], ["info", path], ["stats", path], ["diff", path, other], ["info", "--json", path]):
        out = cli(*map(str, args)).stdout.decode()
        assert not {"\u202e", "\u2066", "\u2069", "\u2028"} & set(out), (args, out)
    listed = cli("list", str(path)).stdout.decode().splitlines()
    assert listed[0] == "layer.0.\\u{202e}thgiew" and listed[2] == "line\\u{2028}sep", listed
    assert json.loads(cli("list", "--json", str(path)).stdout) == [spoof, isolate, split]


def test_table_cells_wider_than_65535_columns_print(cli, tmp_path):
    """Regression: info and stats panicked ("Formatting argument out of range")
    padding a cell wider than 65535 characters: a long name, or a shape of
    20,000 dimensions, in a file from anywhere (hub-info prints the same table)."""
    path = tmp_path / "wide.deathtensors"
    long_name = "x" * 70_000
    dt.save(path, {long_name: torch.ones(1), "deep": torch.ones([1] * 22_000)})
    for command in ("info", "stats"):
        result = cli(command, str(path))
        assert result.returncode == 0, result.stderr[-2000:]
        assert long_name.encode() in result.stdout and b"panicked" not in result.stderr
    assert "1, " * 10 in dt._core.info_text("wide", path.stat().st_size, lambda at, n: _read_at(path, at, n))


def _read_at(path, at, n):
    with open(path, "rb") as fh:
        fh.seek(at)
        return fh.read(n)


def test_info_counts_a_sparse_tensor_once(cli, tmp_path):
    """Regression: ``info`` said "tensors: 2" for one dense and one sparse tensor
    plus its hidden indices part (``list`` and ``keys()`` say 2)."""
    sp = torch.sparse_coo_tensor([[0, 2]], [1.0, 2.0], (4,)).coalesce()
    path = tmp_path / "sp.deathtensors"
    dt.save_sparse(path, {"sp": sp, "d": torch.zeros(2)})
    out = cli("info", str(path)).stdout.decode()
    assert "tensors:   2 (plus 1 stored part of one)" in out, out
    assert "(part of sp)" in out


def test_output_that_cannot_be_written_is_an_error(cli, files):
    """Regression: writing the table to a full device exited 0, silently."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with open("/dev/full", "wb") as full:
        result = cli("info", str(files["good"]), stdout=full)
    assert result.returncode == 2
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deathtensors: error: cannot write the output"), lines


def test_a_closed_stdout_is_an_error(cli, files):
    """Regression: with standard output closed (`list FILE >&-`) the CLI exited 0, printing nothing."""
    result = cli("list", str(files["good"]), stdout=subprocess.DEVNULL)
    assert result.returncode == 0  # the same command with an open stdout succeeds
    closed = run_cli(["bash", "-c", 'exec "$@" >&-', "-", *cli.prefix], "list", str(files["good"]))
    assert closed.returncode == 2
    lines = closed.stderr.decode().strip().splitlines()
    assert lines == ["deathtensors: error: cannot write the output: standard output is closed"], lines


@pytest.mark.parametrize("args", [["--help"], ["info", "--help"], ["help"], ["--version"]])
def test_help_and_version_that_cannot_be_written_are_an_error(cli, args):
    """Regression: help and version to a full device exited 0, silently."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    with open("/dev/full", "wb") as full:
        result = cli(*args, stdout=full)
    assert result.returncode == 2, args
    lines = result.stderr.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("deathtensors: error: cannot write the output"), lines


def test_paths_that_are_not_utf8_work(cli, files, tmp_path):
    """Regression: such a path was refused as a usage error (and before that, a traceback)."""
    folder = tmp_path / os.fsdecode(b"caf\xe9")
    folder.mkdir()
    path = folder / os.fsdecode(b"m\xff.deathtensors")
    shutil.copy(files["good"], path)
    listed = cli("list", str(path))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.decode().splitlines() == NAMES
    for command in (["info"], ["info", "--json"], ["verify"], ["verify", "--json"], ["stats", "--json"]):
        result = cli(*command, str(path))
        assert result.returncode == 0, (command, result.stderr)
        assert b"\xef\xbf\xbd.deathtensors" in result.stdout or command == ["stats", "--json"], command
    assert cli("diff", str(path), str(files["good"])).returncode == 0
    assert cli("manifest", str(path)).returncode == 0
    assert os.path.isfile(str(path) + ".manifest.json")
    foreign = folder / os.fsdecode(b"x\xfe.safetensors")
    assert cli("convert", str(path), str(foreign)).returncode == 0
    back = folder / os.fsdecode(b"y\xfe.deathtensors")
    assert cli("convert", "from-safetensors", str(foreign), str(back)).returncode == 0
    assert dt.diff(files["good"], back)["identical"]


def test_a_non_utf8_tensor_name_is_a_usage_error_not_a_traceback(cli, files):
    """Regression: python -m deathtensors crashed with a UnicodeEncodeError traceback."""
    result = cli("stats", str(files["good"]), os.fsdecode(b"bad\xff"))
    assert result.returncode == 2
    assert "invalid UTF-8" in _one_clean_error_line(result)


def test_list(cli, files):
    result = cli("list", str(files["good"]))
    assert result.returncode == 0, result.stderr
    assert result.stdout.decode("utf-8").splitlines() == NAMES
    as_json = cli("list", "--json", str(files["plain"]))
    assert as_json.returncode == 0
    assert json.loads(as_json.stdout) == NAMES


def test_info_table(cli, files):
    result = cli("info", str(files["good"]))
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode("utf-8")
    for text in ["zstd", "sha256", "I16", "F32", "日本", "[2, 3]", "tiny"]:
        assert text in out, text
    plain = cli("info", str(files["plain"])).stdout.decode()
    assert "none" in plain


def test_info_json(cli, files):
    result = cli("info", "--json", str(files["good"]))
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    lay = layout(files["good"])
    assert info["codec"] == "zstd"
    assert info["checksum"] == "sha256"
    assert info["metadata"] == {"model": "tiny"}
    assert info["file_size"] == files["good"].stat().st_size
    assert info["format_version"] == 1
    assert [t["name"] for t in info["tensors"]] == NAMES
    by_name = {t["name"]: t for t in info["tensors"]}
    assert by_name["alpha"]["dtype"] == "I16"
    assert by_name["alpha"]["shape"] == [2, 3]
    assert by_name["alpha"]["nbytes"] == 12
    assert by_name["zeta"]["metadata"] == {"layer": 1}
    for t in info["tensors"]:
        assert t["file_offset"] == lay.data_start + lay.tensor(t["name"])["offsets"][0]
    plain = json.loads(cli("info", "--json", str(files["plain"])).stdout)
    assert plain["codec"] is None and plain["checksum"] is None
    for t in plain["tensors"]:
        assert t["file_offset"] % 64 == 0


def test_verify_good_file(cli, files):
    result = cli("verify", str(files["good"]))
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    raw = files["good"].read_bytes()
    digest = hashlib.sha256(raw[24:-32]).hexdigest()
    assert "sha256" in out
    assert digest in out
    as_json = json.loads(cli("verify", "--json", str(files["good"])).stdout)
    assert as_json["ok"] is True
    assert as_json["algorithm"] == "sha256"
    assert as_json["digest"] == digest


def test_verify_blake3_file(cli, tmp_path):
    path = tmp_path / "b3.deathtensors"
    dt.save(path, {"a": torch.ones(5)}, checksum="blake3", compress="lz4")
    result = cli("verify", str(path))
    assert result.returncode == 0, result.stderr
    assert "blake3" in result.stdout.decode()


@pytest.mark.parametrize("which", ["corrupt", "plain"])
def test_verify_bad_or_unverifiable_file_exits_1(cli, files, which):
    result = cli("verify", str(files[which]))
    assert result.returncode == 1
    line = _one_clean_error_line(result)
    assert "checksum" in line.lower()
    assert result.stdout == b""
    # With --json the failure is a JSON answer on stdout as well, with the same exit code.
    as_json = cli("verify", "--json", str(files[which]))
    assert as_json.returncode == 1
    answer = json.loads(as_json.stdout)
    assert answer["ok"] is False and "checksum" in answer["error"].lower()
    assert answer["path"] == str(files[which])
    err = [line for line in as_json.stderr.decode().splitlines() if line.strip()]
    assert len(err) == 1 and "checksum" in err[0].lower(), err


def test_missing_file_exits_1(cli, tmp_path):
    for command in ("info", "list", "verify"):
        result = cli(command, str(tmp_path / "missing.deathtensors"))
        assert result.returncode == 1, command
        line = _one_clean_error_line(result)
        assert "missing.deathtensors" in line


@pytest.mark.parametrize(
    "data",
    [
        b"not a deathtensors file at all",
        build_file("__import__('os').system('id')"),
        build_file({"tensors": []}, flags=FLAG_ENCRYPTED),
        build_file({"tensors": []}, header_len=2**64 - 1),
        build_file('{"metadata":{"a":' + "[" * 50_000 + "]" * 50_000 + '},"tensors":[]}'),
    ],
    ids=["garbage", "python-header", "encrypted", "huge-header-len", "deep-json"],
)
def test_bad_files_exit_1_with_one_line(cli, tmp_path, data):
    path = tmp_path / "bad.deathtensors"
    path.write_bytes(data)
    for command in ("info", "list", "verify"):
        result = cli(command, str(path))
        assert result.returncode == 1, (command, result.stderr)
        _one_clean_error_line(result)


def test_truncated_file_exits_1(cli, files, tmp_path):
    raw = files["good"].read_bytes()
    path = tmp_path / "trunc.deathtensors"
    for cut in (10, 24, len(raw) // 2, len(raw) - 1):
        path.write_bytes(raw[:cut])
        result = cli("info", str(path))
        assert result.returncode == 1
        _one_clean_error_line(result)


def test_file_with_unknown_codec_exits_1(cli, tmp_path):
    header = {
        "compression": {"codec": "brotli", "level": 3},
        "tensors": [{"name": "a", "dtype": "U8", "shape": [4], "offsets": [0, 4], "chunks": [[0, 4, 4]]}],
    }
    path = tmp_path / "codec.deathtensors"
    path.write_bytes(build_file(header, b"\x01\x02\x03\x04", flags=1))
    result = cli("info", str(path))
    assert result.returncode == 1
    assert "brotli" in _one_clean_error_line(result)


def test_encrypted_flag_message(cli, files, tmp_path):
    raw = bytearray(files["good"].read_bytes())
    flags = struct.unpack_from("<I", raw, 12)[0]
    struct.pack_into("<I", raw, 12, flags | FLAG_ENCRYPTED)
    path = tmp_path / "enc.deathtensors"
    path.write_bytes(bytes(raw))
    result = cli("info", str(path))
    assert result.returncode == 1
    assert "encrypt" in _one_clean_error_line(result).lower()


def test_plugins(cli):
    result = cli("plugins")
    assert result.returncode == 0
    out = result.stdout.decode()
    for plugin_id in ["zstd", "lz4", "sha256", "blake3", *DTYPE_IDS]:
        assert plugin_id in out, plugin_id
    rows = json.loads(cli("plugins", "--json").stdout)
    assert {r["id"] for r in rows if r["kind"] == "codec"} >= {"zstd", "lz4"}
    assert {r["id"] for r in rows if r["kind"] == "checksum"} >= {"sha256", "blake3"}
    assert sorted(r["id"] for r in rows if r["kind"] == "dtype") == sorted(DTYPE_IDS)
    assert rows == [
        {"kind": p["kind"], "id": p["id"], "summary": p["summary"], "crate": p["crate"]} for p in dt.plugins()
    ]


def test_cli_expands_paths(cli, files, tmp_path):
    env = {"HOME": str(tmp_path), "DT_CLI_DIR": str(tmp_path)}
    for spelled in ("~/good.deathtensors", "$DT_CLI_DIR/good.deathtensors", "${DT_CLI_DIR}/good.deathtensors"):
        result = cli("list", spelled, env=env)
        assert result.returncode == 0, (spelled, result.stderr)
        assert result.stdout.decode().splitlines() == NAMES
        # verify reports the file it read, as info does (it echoed the path as typed).
        verified = json.loads(cli("verify", "--json", spelled, env=env).stdout)
        assert verified["path"] == str(files["good"]), spelled
    # The generic convert reads the formats from the expanded paths (it refused '$DT_CLI_DIR/x.safetensors').
    result = cli("convert", "$DT_CLI_DIR/good.deathtensors", "$DT_CLI_DIR/out.safetensors", env=env)
    assert result.returncode == 0, result.stderr
    result = cli("convert", "$DT_CLI_DIR/out.safetensors", "${DT_CLI_DIR}/back.deathtensors", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "back.deathtensors").exists()


@pytest.mark.parametrize("spelled", ["deathtensors", "DeathTensors", ".deathtensors", "DT"])
def test_convert_from_the_native_format_in_any_spelling_says_so(cli, files, tmp_path, spelled):
    # It said 'unknown converter "DeathTensors"; available: deathtensors, ...'.
    result = cli("convert", str(files["good"]), str(tmp_path / "x.deathtensors"), "--from", spelled)
    assert result.returncode == 2
    assert "is already a deathtensors file" in _one_clean_error_line(result)


def test_dt_extension_works_in_cli(cli, files, tmp_path):
    legacy = tmp_path / "legacy.dt"
    legacy.write_bytes(files["good"].read_bytes())
    assert cli("verify", str(legacy)).returncode == 0
    assert cli("list", str(legacy)).stdout.decode().splitlines() == NAMES


# ---------------------------------------------------------------- sharded checkpoints


@pytest.fixture
def checkpoint(tmp_path):
    tensors = {f"layer.{i}.weight": torch.full((8, 8), float(i)) for i in range(6)}
    tensors["embed"] = torch.arange(12, dtype=torch.int32)
    dt.save_sharded(
        tmp_path / "big.deathtensors",
        tensors,
        max_shard_bytes=600,
        checksum=True,
        compress=True,
        global_metadata={"arch": "tiny"},
    )
    with dt.open_sharded(tmp_path / "big.deathtensors") as sr:
        where = {name: sr.which_shard(name) for name in sr.keys()}
    return tmp_path, tensors, where


@pytest.mark.parametrize("given", ["big.deathtensors", "big", "big.deathtensors.index.json"])
def test_list_and_info_of_a_sharded_checkpoint(cli, checkpoint, given):
    folder, tensors, where = checkpoint
    path = str(folder / given)
    listed = cli("list", path)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.decode().splitlines() == list(tensors)
    assert json.loads(cli("list", "--json", path).stdout) == list(tensors)

    table = cli("info", path)
    assert table.returncode == 0, table.stderr
    out = table.stdout.decode()
    assert f"{len(set(where.values()))} shard(s)" in out and "tiny" in out and "sharded" in out
    for name, shard in where.items():
        row = next(line for line in out.splitlines() if line.split()[:1] == [name])
        assert row.split()[-1] == shard, row

    info = json.loads(cli("info", "--json", path).stdout)
    assert info["sharded"] is True and info["metadata"] == {"arch": "tiny"}
    assert info["weight_map"] == where
    assert info["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())
    assert sorted(s["shard"] for s in info["shards"]) == sorted(set(where.values()))
    for shard in info["shards"]:
        assert shard["codec"] == "zstd" and shard["checksum"] == "sha256"
        assert {t["name"] for t in shard["tensors"]} == {n for n, s in where.items() if s == shard["shard"]}


def test_verify_and_stats_of_a_sharded_checkpoint(cli, checkpoint):
    folder, tensors, where = checkpoint
    ok = cli("verify", str(folder / "big.deathtensors"))
    assert ok.returncode == 0, ok.stderr
    out = ok.stdout.decode()
    for shard in set(where.values()):
        digest = hashlib.sha256((folder / shard).read_bytes()[24:-32]).hexdigest()
        assert f"OK  {shard}  sha256:{digest}" in out
    as_json = json.loads(cli("verify", "--json", str(folder / "big")).stdout)
    assert as_json["ok"] is True and len(as_json["shards"]) == len(set(where.values()))

    stats = json.loads(cli("stats", "--json", str(folder / "big"), "layer.3.weight", "embed").stdout)
    assert [(r["name"], r["min"], r["max"]) for r in stats] == [("layer.3.weight", 3.0, 3.0), ("embed", 0, 11)]
    every = json.loads(cli("stats", "--json", str(folder / "big")).stdout)
    assert [r["name"] for r in every] == list(tensors)
    unknown = cli("stats", str(folder / "big"), "nope")
    assert unknown.returncode == 2 and "nope" in _one_clean_error_line(unknown)


def test_a_damaged_or_missing_shard_is_named_and_exits_1(cli, checkpoint):
    folder, _, where = checkpoint
    victim = where["layer.3.weight"]
    raw = bytearray((folder / victim).read_bytes())
    raw[-40] ^= 0xFF  # a data byte (the footer is the last 32)
    (folder / victim).write_bytes(bytes(raw))
    bad = cli("verify", str(folder / "big.deathtensors"))
    assert bad.returncode == 1 and bad.stdout == b""
    line = _one_clean_error_line(bad)
    assert victim in line and "checksum" in line.lower()
    bad_json = cli("verify", "--json", str(folder / "big.deathtensors"))
    assert bad_json.returncode == 1
    answer = json.loads(bad_json.stdout)
    assert answer["ok"] is False and victim in answer["error"]

    (folder / victim).unlink()
    for command in ("info", "verify", "stats"):
        gone = cli(command, str(folder / "big.deathtensors"))
        assert gone.returncode == 1, command
        assert victim in _one_clean_error_line(gone)


def test_a_hostile_index_is_refused_by_the_cli(cli, tmp_path):
    index = tmp_path / "evil.deathtensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "../../etc/passwd"}}))
    for command in ("info", "list", "verify", "stats"):
        result = cli(command, str(index))
        assert result.returncode == 1, command
        line = _one_clean_error_line(result)
        assert "path separator" in line and "evil.deathtensors.index.json" in line
    index.write_text('{"weight_map": {"w": "a.deathtensors", "w": "b.deathtensors"}}')
    assert "duplicate" in _one_clean_error_line(cli("list", str(index)))


def test_verify_checks_the_index_total_size(cli, checkpoint):
    folder, _, _ = checkpoint
    index = folder / "big.deathtensors.index.json"
    doc = json.loads(index.read_text())
    doc["metadata"]["total_size"] += 4
    index.write_text(json.dumps(doc))
    result = cli("verify", str(index))
    assert result.returncode == 1
    assert "total_size" in _one_clean_error_line(result)
    with pytest.raises(dt.FormatError, match="total_size"), dt.open_sharded(index) as sr:
        sr.verify()  # the Python reader says the same


def test_any_json_index_name_and_a_partial_stats(cli, checkpoint, tmp_path):
    """An index under any .json name is read as open_sharded reads it, and
    `stats CKPT NAME` opens only the shards holding NAME."""
    folder, tensors, where = checkpoint
    renamed = folder / "idx.json"
    renamed.write_bytes((folder / "big.deathtensors.index.json").read_bytes())
    listed = cli("list", str(renamed))
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.decode().splitlines() == list(tensors)
    assert dt.diff(renamed, folder / "big.deathtensors")["identical"] is True

    other = next(s for s in set(where.values()) if s != where["embed"])
    (folder / other).unlink()
    stats = cli("stats", "--json", str(renamed), "embed")
    assert stats.returncode == 0, stats.stderr
    assert [r["name"] for r in json.loads(stats.stdout)] == ["embed"]
    assert cli("stats", str(renamed)).returncode == 1  # every tensor: the missing shard is an error


def test_an_index_naming_a_stored_part_is_refused_like_open_sharded(cli, tmp_path):
    sp = torch.sparse_coo_tensor([[0, 2]], [1.0, 2.0], (4,), check_invariants=True).coalesce()
    dt.save(tmp_path / "s1.deathtensors", {"dense": torch.ones(2), "sp": sp})
    part = "sp/__sparse_indices__"  # the reference writer's name for the indices (format spec 3.6)
    assert dt.open(tmp_path / "s1.deathtensors").info("sp")["layout"]["parts"] == {"indices": part}
    index = tmp_path / "p.deathtensors.index.json"
    index.write_text(json.dumps({"weight_map": {"dense": "s1.deathtensors", part: "s1.deathtensors"}}))
    for command in ("info", "stats", "verify"):
        result = cli(command, str(index))
        assert result.returncode == 1, (command, result.stdout)
        assert "lacks" in _one_clean_error_line(result)
    with pytest.raises(dt.FormatError, match="lacks"), dt.open_sharded(index) as sr:
        sr.get_tensor("dense")


def test_checkpoints_of_many_shards_under_a_low_open_file_limit(tmp_path):
    """info/verify/stats hold one shard open at a time; diff, which keeps both
    sides' shards open, lifts the soft limit to the hard one."""
    import resource
    import subprocess
    import sys

    tensors = {f"t{i}": torch.ones(16) for i in range(120)}
    dt.save_sharded(tmp_path / "m.deathtensors", tensors, max_shard_bytes=64, checksum=True)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 400:
        pytest.skip(f"the hard limit on open files ({hard}) is too low to lift")
    low_limit = open_file_limit(48)
    # (ShardedReader's whole-checkpoint reads under the same limit: test_sharded.py.)
    base = str(tmp_path / "m.deathtensors")
    for args in (["info", base], ["verify", base], ["stats", base], ["diff", base, base + ".index.json"]):
        for prefix in COMMANDS.values():
            result = subprocess.run([*prefix, *args], capture_output=True, preexec_fn=low_limit, timeout=60)
            assert result.returncode == 0, (args, result.stderr)
            assert b"Too many open files" not in result.stderr, args
    # dt.diff too (it failed with EMFILE), and the limit is back afterwards.
    script = (
        "import resource, sys, deathtensors as dt; "
        f"assert dt.diff({base!r}, {base + '.index.json'!r})['identical']; "
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, preexec_fn=low_limit, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == b"48"


def test_a_tensor_file_named_json_is_a_file_not_an_index(cli, files, tmp_path):
    weird = tmp_path / "weird.json"
    weird.write_bytes(files["good"].read_bytes())
    result = cli("info", str(weird))
    assert result.returncode == 0, result.stderr
    assert "tiny" in result.stdout.decode()
    assert dt.diff(weird, files["good"])["identical"] is True


def test_diff_in_process_puts_the_open_file_limit_back(checkpoint):
    """python -m deathtensors runs the CLI inside the Python process: diff lifts
    the soft limit on open files for checkpoints, and must restore it."""
    import resource

    from deathtensors.__main__ import main

    folder, _, _ = checkpoint
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard <= 64:
        pytest.skip(f"hard limit {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    try:
        base = str(folder / "big.deathtensors")
        assert main(["diff", base, base + ".index.json"]) == 0
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (64, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_an_unknown_convert_direction_names_the_ones_there_are(cli, files, tmp_path):
    """clap took `to-gguf` for SRC and complained about 'the subcommand q.gguf'."""
    result = cli("convert", "to-gguf", str(files["good"]), str(tmp_path / "q.gguf"))
    assert result.returncode == 2
    line = _one_clean_error_line(result)
    assert 'unknown conversion "to-gguf"' in line and "convert to-safetensors SRC DST" in line, line
    assert not (tmp_path / "q.gguf").exists()
