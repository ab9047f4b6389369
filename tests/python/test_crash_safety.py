"""Crash safety (issue #7): SIGKILL a writer at random moments, then look at what is on disk.

A fork server (``_crash_child.py``) forks one child per trial that runs
``save``, ``append``, ``repack``, an export or ``save_sharded`` over an existing target, and kills it
with ``SIGKILL`` after a random delay spread over the time an uninterrupted
write (measured first, in the same way) has temporary files, and a little
either side of it. After every trial the
target must be, byte for byte, the complete old file or the complete new one
(references written without interruption), must verify, and may hold at most
the one temporary file of the killed writer; the next write removes it. The
trials must really land mid-write: the test counts them and fails if too few
left the old file behind with the killed writer's temporary file beside it, or
if none left the new file.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

import deathtensors as dt

np = pytest.importorskip("numpy")

import _crash_child as child  # noqa: E402 - after the importorskip of numpy

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL")

TRIALS = 60
#: Delays are drawn from EARLY times when the first temporary file appeared
#: to the commit plus AFTER times the time from that start to the commit, or
#: from 0 to SPREAD times the write's time where those were not seen (see
#: _calibrate).
EARLY = 0.8
AFTER = 0.5
SPREAD = 1.25
#: Writes that rewrite the target in place: each trial starts from version 0.
IN_PLACE = ("append", "repack")
TEMP_SUFFIX = child.TEMP_SUFFIX
SHARDS = 4


class ForkServer:
    def __init__(self) -> None:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.proc = subprocess.Popen(
            [sys.executable, child.__file__],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert json.loads(self._readline()) == {"ready": True}

    def _readline(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the fork server died (exit status {self.proc.poll()})"
        return line

    def write(
        self, op: str, version: int, path: Path, delay: Optional[float], watch: Optional[Path] = None
    ) -> Dict[str, Any]:
        assert self.proc.stdin is not None
        command = {"op": op, "version": version, "path": str(path), "delay": delay, "watch": watch and str(watch)}
        self.proc.stdin.write(json.dumps(command) + "\n")
        self.proc.stdin.flush()
        reply = json.loads(self._readline())
        assert reply["status"] in (0, -1), f"the {op} child failed (exit status {reply['status']})"
        if delay is None:
            assert not reply["killed"] and reply["status"] == 0
        return reply

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server() -> Iterator[ForkServer]:
    s = ForkServer()
    yield s
    s.close()


def _temps(folder: Path) -> List[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(TEMP_SUFFIX))


def _check_tensors(f: Any, expected: Dict[str, Any]) -> None:
    assert f.keys() == list(expected)
    for name, arr in expected.items():
        assert np.array_equal(f.get_tensor(name, framework="numpy"), arr), name


def _calibrate(
    server: ForkServer, op: str, target: Path, reset: Any, commit: Optional[Path] = None
) -> Tuple[float, float]:
    """The window of kill delays for ``op`` to ``target``, from five uninterrupted
    writes (medians, seconds from the fork): from a little before a temporary
    file appeared to half as long again after the commit (the replacement of
    ``commit``, by default ``target``). So two thirds of the kills fall in
    the write and a third after its commit, whatever the machine.

    Drawing from the fork to a quarter past the end instead spent a third of
    the trials before the write had begun on a 16-core machine (fork, thread
    pool start: 16 of 60 landed mid-write), and as many after the commit here
    (fsync of the folder, the exit)."""
    times, starts, commits = [], [], []
    for i in range(5):
        reset(i)
        reply = server.write(op, 1 - i % 2 if op not in IN_PLACE else 0, target, None, watch=commit or target)
        times.append(reply["seconds"])
        if reply["watched"]["temp"] is not None and reply["watched"]["commit"] is not None:
            starts.append(EARLY * reply["watched"]["temp"])
            commits.append(reply["watched"]["commit"])
    end = statistics.median(times)
    if len(starts) >= 3:
        start, committed = statistics.median(starts), statistics.median(commits)
        window = start, committed + AFTER * (committed - start)
    else:  # too quick to be seen: the whole write
        window = 0.0, SPREAD * end
    ms = [f"{x * 1000:.1f}" for x in (*window, end)]
    print(f"{op}: kills from {ms[0]} to {ms[1]} ms after the fork (uninterrupted: {ms[2]} ms)")
    return window


def _assert_enough_landed(op: str, counts: Dict[str, int]) -> None:
    print(f"{op}: {counts}")
    assert sum(counts.values()) == TRIALS
    # Kills that hit the write itself: the old file is still there and the killed
    # writer's temporary file sits beside it.
    assert counts["old+temp"] >= TRIALS * 0.3, f"too few kills landed mid-write: {counts}"
    # ...and the others: the write got through (killed after its commit, or finished).
    assert counts["new"] >= 3, f"no trial let the write complete: {counts}"


def _verify(path: Path) -> None:
    with dt.open(path, verify=True) as f:
        assert f.verify()


def _run_single_file_trials(
    server: ForkServer,
    op: str,
    work: Path,
    refs: Dict[int, bytes],
    reset: Any,
    name: str = "m.deathtensors",
    check: Callable[[Path], None] = _verify,
) -> None:
    """Trials of ``save`` or ``export`` (versions alternate) or of a rewrite in
    place, ``append`` or ``repack`` (old is version 0, new is 0 rewritten),
    writing ``work / name``; ``check`` looks at the file after each."""
    target = work / name
    window = _calibrate(server, op, target, reset)
    rng = random.Random(f"{op}-7")
    counts = {"old": 0, "old+temp": 0, "new": 0}
    current = {refs[0]: 0, refs[1]: 1}[target.read_bytes()]
    for trial in range(TRIALS):
        if op in IN_PLACE:
            reset(trial)
            old, new = 0, 1
        else:
            old, new = current, 1 - current
        reply = server.write(op, new, target, rng.uniform(*window))
        got = target.read_bytes()
        state = {refs[0]: 0, refs[1]: 1}.get(got)
        assert state in (old, new), f"trial {trial}: {target.name} is neither the old nor the new file"
        check(target)
        temps = _temps(work)
        assert len(temps) <= 1, f"trial {trial}: temporary files pile up: {temps}"
        if state == new:
            counts["new"] += 1
        else:
            assert reply["killed"], f"trial {trial}: the write finished but left the old file"
            counts["old+temp" if temps else "old"] += 1
        current = state
    _assert_enough_landed(op, counts)
    # The next write removes what the killed ones left.
    reset(0)
    server.write(op, 1 - current if op == "save" else 1, target, None)
    assert sorted(p.name for p in work.iterdir()) == [name]


@pytest.mark.parametrize("op", ["save", "save_direct"])
def test_save_is_old_or_new_after_sigkill(server, tmp_path, op):
    """``save``: a small compressed file; ``save_direct``: a large uncompressed
    one, which a durable save writes with direct I/O."""
    ref_dir, work = tmp_path / "ref", tmp_path / "work"
    ref_dir.mkdir()
    work.mkdir()
    refs = {}
    for v in (0, 1):
        server.write(op, v, ref_dir / f"v{v}.deathtensors", None)
        with dt.open(ref_dir / f"v{v}.deathtensors", verify=True) as f:
            _check_tensors(f, child.version_tensors(v) if op == "save" else child.direct_tensors(v))
            assert f.is_compressed() == (op == "save") and f.has_checksum()
        refs[v] = (ref_dir / f"v{v}.deathtensors").read_bytes()
    shutil.copyfile(ref_dir / "v0.deathtensors", work / "m.deathtensors")

    def reset(i: int) -> None:
        pass  # save needs no setup: each trial writes the version that is not there

    _run_single_file_trials(server, op, work, refs, reset)


def test_append_is_old_or_new_after_sigkill(server, tmp_path):
    ref_dir, work = tmp_path / "ref", tmp_path / "work"
    ref_dir.mkdir()
    work.mkdir()
    base, appended = ref_dir / "base.deathtensors", ref_dir / "appended.deathtensors"
    server.write("save", 0, base, None)
    shutil.copyfile(base, appended)
    server.write("append", 0, appended, None)
    with dt.open(appended, verify=True) as f:
        _check_tensors(f, {**child.version_tensors(0), **child.appended_tensors()})
        assert f.metadata() == {"version": 0, "appended": True}
    refs = {0: base.read_bytes(), 1: appended.read_bytes()}
    target = work / "m.deathtensors"

    def reset(i: int) -> None:
        tmp = work / "reset.part"
        tmp.write_bytes(refs[0])
        os.replace(tmp, target)

    _run_single_file_trials(server, "append", work, refs, reset)


def test_repack_in_place_is_old_or_new_after_sigkill(server, tmp_path):
    """``repack`` of a compressed file to lz4 with a BLAKE3 footer, in place:
    every chunk decoded and encoded again after the old footer is checked."""
    ref_dir, work = tmp_path / "ref", tmp_path / "work"
    ref_dir.mkdir()
    work.mkdir()
    base, repacked = ref_dir / "base.deathtensors", ref_dir / "repacked.deathtensors"
    server.write("save", 0, base, None)
    shutil.copyfile(base, repacked)
    server.write("repack", 0, repacked, None)
    with dt.open(repacked, verify=True) as f:
        _check_tensors(f, child.version_tensors(0))
        assert (f.codec(), f.checksum_algorithm(), f.metadata()) == ("lz4", "blake3", {"version": 0})
    refs = {0: base.read_bytes(), 1: repacked.read_bytes()}
    target = work / "m.deathtensors"

    def reset(i: int) -> None:
        tmp = work / "reset.part"
        tmp.write_bytes(refs[0])
        os.replace(tmp, target)

    _run_single_file_trials(server, "repack", work, refs, reset)


def test_export_to_safetensors_is_old_or_new_after_sigkill(server, tmp_path):
    """``to_safetensors`` of a compressed file: its temporary file is one of
    ours (locked, removed by the next writer). Regression: the safetensors
    crate wrote a temporary file of its own, which a killed export left
    behind for good."""
    st = pytest.importorskip("safetensors.numpy")
    ref_dir, work = tmp_path / "ref", tmp_path / "work"
    ref_dir.mkdir()
    work.mkdir()
    refs = {}
    for v in (0, 1):
        server.write("export", v, ref_dir / f"v{v}.safetensors", None)
        loaded = st.load_file(str(ref_dir / f"v{v}.safetensors"))
        assert loaded.keys() == child.version_tensors(v).keys()
        assert all(np.array_equal(loaded[k], a) for k, a in child.version_tensors(v).items())
        refs[v] = (ref_dir / f"v{v}.safetensors").read_bytes()
    shutil.copyfile(ref_dir / "v0.safetensors", work / "m.safetensors")

    def loads(path: Path) -> None:
        assert st.load_file(str(path)).keys() == child.version_tensors(0).keys()

    _run_single_file_trials(server, "export", work, refs, lambda i: None, name="m.safetensors", check=loads)


# -- save_sharded ------------------------------------------------------------------------------------------


def _sharded_state(folder: Path, refs: Dict[int, List[bytes]]) -> Dict[str, Any]:
    """Which version the checkpoint in ``folder`` is (checked complete and consistent), and its shard names."""
    index = folder / "m.deathtensors.index.json"
    assert index.exists(), "the index is missing: the checkpoint cannot be opened"
    doc = json.loads(index.read_text())
    shard_names: List[str] = list(dict.fromkeys(doc["weight_map"].values()))
    assert len(shard_names) == SHARDS
    blobs = [(folder / n).read_bytes() for n in shard_names]
    versions = {v for v in (0, 1) if blobs == refs[v]}
    assert len(versions) == 1, "the index names shards that are not one complete version (a mix of old and new?)"
    (version,) = versions
    assert doc["metadata"]["global_metadata"] == {"version": version}
    with dt.open_sharded(index, verify=True) as sr:
        assert sr.verify()
        assert sr.keys() == list(child.version_tensors(version))
    for n in shard_names:
        with dt.open(folder / n, verify=True) as f:
            assert f.verify()
    return {"version": version, "shards": shard_names}


def test_save_sharded_is_old_or_new_after_sigkill(server, tmp_path):
    refs: Dict[int, List[bytes]] = {}
    for v in (0, 1):
        ref = tmp_path / f"ref{v}"
        ref.mkdir()
        server.write("sharded", v, ref / "m.deathtensors", None)
        with dt.open_sharded(ref / "m.deathtensors", verify=True) as sr:
            assert sr.verify()
            shard_names = [sr.which_shard(t) for t in sr.keys()]
            assert sorted(set(shard_names)) == [f"m-{i:05d}-of-{SHARDS:05d}.deathtensors" for i in range(1, SHARDS + 1)]
            for name, arr in child.version_tensors(v).items():
                assert np.array_equal(sr.get_tensor(name, framework="numpy"), arr)
        refs[v] = [(ref / n).read_bytes() for n in dict.fromkeys(shard_names)]
    assert all(a != b for a, b in zip(refs[0], refs[1]))
    work = tmp_path / "work"
    work.mkdir()
    target = work / "m.deathtensors"

    window = _calibrate(server, "sharded", target, lambda i: None, commit=work / "m.deathtensors.index.json")
    rng = random.Random("sharded-7")
    counts = {"old": 0, "old+temp": 0, "new": 0}
    new_on_pending_names = 0
    current = _sharded_state(work, refs)["version"]
    for trial in range(TRIALS):
        old, new = current, 1 - current
        reply = server.write("sharded", new, target, rng.uniform(*window))
        try:
            state = _sharded_state(work, refs)
        except (AssertionError, OSError, dt.DeathtensorsError) as e:
            raise AssertionError(f"trial {trial}: the checkpoint is neither the old nor the new one: {e}") from e
        assert state["version"] in (old, new)
        leftovers = set(p.name for p in work.iterdir()) - set(state["shards"]) - {"m.deathtensors.index.json"}
        if state["version"] == new:
            counts["new"] += 1
            if state["shards"] != [f"m-{i:05d}-of-{SHARDS:05d}.deathtensors" for i in range(1, SHARDS + 1)]:
                new_on_pending_names += 1  # killed between the two index switches
        else:
            assert reply["killed"], f"trial {trial}: the save finished but left the old checkpoint"
            counts["old+temp" if leftovers else "old"] += 1
        current = state["version"]
    print(f"sharded: new checkpoint under pending names in {new_on_pending_names} trials")
    _assert_enough_landed("sharded", counts)
    # The next save removes every pending shard, marker and temporary file the killed ones left.
    server.write("sharded", 1 - current, target, None)
    assert sorted(p.name for p in work.iterdir()) == [
        *(f"m-{i:05d}-of-{SHARDS:05d}.deathtensors" for i in range(1, SHARDS + 1)),
        "m.deathtensors.index.json",
    ]
    assert _sharded_state(work, refs)["version"] == 1 - current


# -- temporary files of dead and of live writers -------------------------------------------------------------


def _hold(path: Path) -> int:
    """Create ``path`` and hold its flock, as a live writer does (a separate open file description)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def test_the_next_save_removes_temp_files_of_dead_writers_only(tmp_path):
    live = tmp_path / ".live.deathtensors.abc123.dt-tmp"
    dead = tmp_path / ".dead.deathtensors.def456.dt-tmp"
    others = [tmp_path / ".notes.tmp", tmp_path / "visible.dt-tmp", tmp_path / ".hidden"]
    fd = _hold(live)
    try:
        dead.write_bytes(b"left by a killed writer")
        for p in others:
            p.write_bytes(b"not ours")
        dt.save(tmp_path / "a.deathtensors", {"a": np.arange(3)})
        assert live.exists(), "a live writer's temporary file was removed"
        assert not dead.exists(), "a dead writer's temporary file was kept"
        assert all(p.exists() for p in others)
    finally:
        os.close(fd)  # the writer dies: its lock goes
    dt.save(tmp_path / "b.deathtensors", {"b": np.arange(3)})
    assert not live.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["a.deathtensors", "b.deathtensors", *(p.name for p in others)]
    )


def test_save_sharded_keeps_pending_shards_of_a_running_save(tmp_path):
    dt.save_sharded(tmp_path / "m.deathtensors", {"a": np.arange(4), "b": np.arange(5)}, max_shard_bytes=40)
    running = tmp_path / "m-00001-of-00002.tok123.deathtensors"
    dead = tmp_path / "m-00002-of-00002.tok456.deathtensors"
    dead_marker = tmp_path / ".m.tok456.dt-tmp"
    for p in (running, dead):
        shutil.copyfile(tmp_path / "m-00001-of-00002.deathtensors", p)
    dead_marker.write_bytes(b"")
    fd = _hold(tmp_path / ".m.tok123.dt-tmp")  # the marker of a save still running
    try:
        dt.save_sharded(tmp_path / "m.deathtensors", {"c": np.arange(6)})
        assert running.exists() and (tmp_path / ".m.tok123.dt-tmp").exists()
        assert not dead.exists() and not dead_marker.exists()
    finally:
        os.close(fd)
    dt.save_sharded(tmp_path / "m.deathtensors", {"c": np.arange(7)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-00001-of-00001.deathtensors", "m.deathtensors.index.json"]
    with dt.open_sharded(tmp_path / "m.deathtensors", verify=False) as sr:
        assert sr.get_tensor("c", framework="numpy").tolist() == list(range(7))
