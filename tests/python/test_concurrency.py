"""Concurrency (issue #7): threads sharing one open file, the GIL, and files replaced while open."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List

import pytest
from _dtutil import torch_bytes

import deathtensors as dt

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")


# -- eight threads, one open file ---------------------------------------------------------------------------


def _stats_key(s: Dict[str, Any]) -> str:
    return repr(sorted(s.items()))


@pytest.mark.parametrize("compress", [False, True, "lz4"])
def test_concurrent_reads_from_one_file(tmp_path, compress):
    rng = np.random.default_rng(8)
    tensors = {f"t{i}": torch.from_numpy(rng.standard_normal((64, 257)).astype(np.float32)) for i in range(24)}
    tensors["big"] = torch.arange(400_000, dtype=torch.int32) % 1000  # several chunks when compressed
    tensors["rows"] = torch.from_numpy(rng.standard_normal((3000, 300)).astype(np.float32)).to(torch.float16)
    path = tmp_path / "thr.deathtensors"
    dt.save(path, tensors, compress=compress, checksum=True)
    slices = [(0, 1), (7, 1000), (2999, 5), (1500, 1500), (-10, 10)]
    with dt.open(path) as f:
        names = f.keys()
        serial_bytes = {name: f.get_bytes(name) for name in names}
        serial_slices = {(n, s, c): torch_bytes(f.get_tensor_slice(n, s, c)) for n in ("rows", "t3") for s, c in slices}
        serial_stats = {name: _stats_key(f.stats(name)) for name in names}
        barrier = threading.Barrier(8)

        def worker(k: int) -> Dict[str, Any]:
            barrier.wait()
            order = names[k:] + names[:k]
            out: Dict[str, Any] = {"bytes": {}, "slices": {}, "stats": {}}
            for _ in range(2):
                for name in order:
                    if k % 3 == 0:
                        out["bytes"][name] = f.get_bytes(name)
                    elif k % 3 == 1:
                        out["bytes"][name] = torch_bytes(f.get_tensor(name))
                    else:
                        out["bytes"][name] = f.get_tensor(name, framework="numpy").tobytes()
                    out["stats"][name] = _stats_key(f.stats(name))
                keys = list(serial_slices)
                for key in keys[k:] + keys[:k]:
                    out["slices"][key] = torch_bytes(f.get_tensor_slice(*key))
                    if k % 2:
                        assert f.get_tensor_slice(*key, framework="numpy").tobytes() == serial_slices[key]
            if k == 0:
                assert f.verify()
            return out

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(worker, range(8)))
    for out in results:
        assert out["bytes"] == serial_bytes
        assert out["slices"] == serial_slices
        assert out["stats"] == serial_stats
    for name, t in tensors.items():
        assert serial_bytes[name] == torch_bytes(t)
    rows = torch_bytes(tensors["rows"])
    row_bytes = 300 * 2
    assert serial_slices[("rows", 7, 1000)] == rows[7 * row_bytes : 1007 * row_bytes]
    assert serial_slices[("rows", -10, 10)] == rows[2990 * row_bytes :]


# -- the GIL is released ------------------------------------------------------------------------------------


def _progress_inside(call: Callable[[], Any], attempts: int = 20) -> int:
    """Ticks a second Python thread makes while ``call``'s one C call runs, summed over attempts.

    The switch interval is made huge, so CPython never takes the GIL away from
    a running thread: the ticker thread (which sleeps between ticks, releasing
    the GIL) can run only when the calling thread releases the GIL itself. The
    caller raises ``inside`` right before the call and lowers it right after;
    no GIL-releasing code sits between. So a tick seen while ``inside`` is up
    means the call released the GIL. No clock is involved in the decision.
    """
    state = {"inside": False, "ticks": 0, "stop": False}
    started = threading.Event()

    def ticker() -> None:
        started.set()
        while not state["stop"]:
            if state["inside"]:
                state["ticks"] += 1
            time.sleep(0.0002)  # releases the GIL, then needs it back

    old = sys.getswitchinterval()
    sys.setswitchinterval(1000.0)
    t = threading.Thread(target=ticker)
    try:
        t.start()
        started.wait()
        for _ in range(attempts):
            state["inside"] = True
            call()
            state["inside"] = False
            if state["ticks"]:
                break
    finally:
        state["inside"] = False
        state["stop"] = True
        sys.setswitchinterval(old)
        t.join()
    return state["ticks"]


@pytest.fixture(scope="module")
def big_files(tmp_path_factory):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((4096, 4096)).astype(np.float32)  # 64 MiB
    w = (w.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)  # bf16-like: compressible
    out = {}
    for compress in (False, True):
        p = tmp_path_factory.mktemp("gil") / f"big-{compress}.deathtensors"
        dt.save(p, {"w": w}, compress=compress, checksum=True)
        out[compress] = p
    return out


@pytest.mark.parametrize(
    "what",
    ["decompress get_bytes", "decompress get_buffer", "read get_bytes", "stats", "verify", "decompress slice"],
)
def test_reading_releases_the_gil(big_files, what):
    compress = what.startswith("decompress") or what == "stats"
    with dt.open(big_files[compress]) as f:
        reader = f._reader
        calls = {
            "decompress get_bytes": lambda: reader.read_bytes("w"),
            "decompress get_buffer": lambda: reader.read("w"),
            "read get_bytes": lambda: reader.read_bytes("w"),
            "stats": lambda: reader.stats("w"),
            "verify": lambda: reader.verify(),
            "decompress slice": lambda: reader.read_range("w", 0, 1 << 25),
        }
        assert _progress_inside(calls[what]) > 0, f"{what}: no other thread ran during the call"
        # The public method reads the same bytes.
        if what == "decompress get_bytes":
            assert f.get_bytes("w") == calls[what]()


def test_the_gil_probe_sees_a_call_that_holds_the_gil():
    # The control: a long C call that keeps the GIL gives the other thread no tick.
    assert _progress_inside(lambda: sum(range(3_000_000)), attempts=3) == 0


# -- a file replaced while open ---------------------------------------------------------------------------


def _version(v: int) -> Dict[str, Any]:
    """Tensors that tell their version apart in every byte: a file mixing two versions cannot match one."""
    g = torch.Generator().manual_seed(v)
    return {
        "a": torch.randn(512, 512, generator=g),
        "b": torch.full((300_000,), float(v), dtype=torch.float64),
        "c": torch.randint(0, 1000, (1000, 257), generator=g, dtype=torch.int32),
    }


@pytest.mark.parametrize("compress", [False, True])
def test_a_file_replaced_while_open_is_never_read_mixed(tmp_path, compress):
    path = tmp_path / "swap.deathtensors"
    versions = {v: _version(v) for v in range(4)}
    expected = {v: {n: torch_bytes(t) for n, t in ts.items()} for v, ts in versions.items()}
    dt.save(path, versions[0], global_metadata={"v": 0}, compress=compress, checksum=True)
    saves = 30
    done = threading.Event()
    errors: List[BaseException] = []
    seen_by_reopen: List[int] = []
    old_reads = 0

    reads = threading.Condition()

    def writer() -> None:
        try:
            for i in range(1, saves + 1):
                v = i % 4
                dt.save(path, versions[v], global_metadata={"v": v}, compress=not compress, checksum=True)
                # Let the reopening reader finish one more read before the next save (no timing:
                # the timeout only stops a hang), so that it sees many versions.
                with reads:
                    n = len(seen_by_reopen)
                    if not reads.wait_for(lambda n=n: len(seen_by_reopen) > n or errors, timeout=60):
                        raise AssertionError("the reopening reader made no progress")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            done.set()

    def reopen_reader() -> None:
        # Opens the path again and again: each open sees one whole version.
        try:
            while not done.is_set():
                with dt.open(path, verify=True) as g:
                    v = g.metadata()["v"]
                    got = {n: torch_bytes(g.get_tensor(n)) for n in g.keys()}
                assert got == expected[v], f"a file opened as version {v} holds other bytes"
                with reads:
                    seen_by_reopen.append(v)
                    reads.notify_all()
        except BaseException as e:
            with reads:
                errors.append(e)
                reads.notify_all()

    with dt.open(path) as f:
        t_w = threading.Thread(target=writer)
        t_r = threading.Thread(target=reopen_reader)
        t_w.start()
        t_r.start()
        # This thread keeps reading the file it opened first, through every replacement.
        while True:
            finished = done.is_set()
            got = {n: torch_bytes(f.get_tensor(n)) for n in f.keys()}
            assert got == expected[0], "the open file's content changed under it"
            assert f.get_bytes("b") == expected[0]["b"]
            assert torch_bytes(f.get_tensor_slice("c", 100, 50)) == expected[0]["c"][100 * 1028 : 150 * 1028]
            assert f.stats("b")["max"] == 0.0
            if not compress:
                assert torch_bytes(f.get_tensor_mmap("a")) == expected[0]["a"]
            old_reads += 1
            if finished:
                break
        t_w.join()
        t_r.join()
        assert f.verify()
    for e in errors:
        raise e
    assert old_reads >= 2
    # The reopening reader really saw the file change under it.
    assert len(set(seen_by_reopen)) == 4, seen_by_reopen
    with dt.open(path, verify=True) as g:
        assert g.metadata() == {"v": saves % 4}


# -- appends to one file from many threads and processes ------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_concurrent_appends_keep_every_tensor(tmp_path, compress):
    # Each append reads the file, writes a new one and renames it over the old. Without
    # a lock two appends started from the same old file and the later rename dropped the
    # other's tensor: 12 threaded appends used to leave 3.
    path = tmp_path / "grow.deathtensors"
    dt.save(path, {"base": torch.zeros(4)}, compress=compress, checksum=True)
    names = [f"t{i}" for i in range(12)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(lambda n: dt.append(path, {n: torch.full((64,), float(n[1:]))}), names))
    child = "import sys, torch, deathtensors as dt\ndt.append(sys.argv[1], {sys.argv[2]: torch.ones(8)})\n"
    procs = [subprocess.Popen([sys.executable, "-c", child, str(path), f"p{i}"]) for i in range(4)]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    with dt.open(path, verify=True) as f:
        assert sorted(f.keys()) == sorted(["base", *names, "p0", "p1", "p2", "p3"])
        for n in names:
            assert f.get_tensor(n).tolist() == [float(n[1:])] * 64


def test_a_save_during_an_in_place_repack_is_not_undone(tmp_path):
    """Regression: a save that finished while an in-place repack of the same
    file ran was undone when the repack, made from the old contents,
    committed after it. The save now waits for the repack's lock."""
    import fcntl

    path = tmp_path / "m.deathtensors"
    dt.save(path, {"old": torch.randn(4_000_000)})
    child = "import sys, deathtensors as dt\ndt.repack(sys.argv[1], compress=True, compress_level=19)\n"
    proc = subprocess.Popen([sys.executable, "-c", child, str(path)])
    try:
        deadline = time.monotonic() + 60
        while True:  # until the repack holds the file's update lock
            with open(path, "rb") as fh:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    break
            assert proc.poll() is None and time.monotonic() < deadline, "the repack never took the lock"
            time.sleep(0.005)
        dt.save(path, {"new": torch.ones(3)})  # waits for the repack to commit
    finally:
        assert proc.wait(timeout=120) == 0
    with dt.open(path) as f:
        assert f.keys() == ["new"]
        assert f.codec() is None


def _forked_child_work(folder: str, conn: Any) -> None:
    """In a forked child: read, write (zstd + BLAKE3: parallel encoding and
    hashing), append and repack; send back what went wrong, or None.
    Torch's own thread pool does not survive a fork either: a child runs
    torch on one thread, as DataLoader workers do."""
    try:
        torch.set_num_threads(1)
        src = f"{folder}/big.deathtensors"
        with dt.open(src) as f:
            t = f.get_tensor("w")
        assert torch.equal(t, torch.arange(2_000_000, dtype=torch.float32))
        out = f"{folder}/child.deathtensors"
        dt.save(out, {"w": t}, compress=True, checksum="blake3")
        dt.append(out, {"b": torch.ones(600_000)})
        dt.repack(out, compress="lz4")
        with dt.open(out, verify=True) as f:
            assert torch.equal(f.get_tensor("w"), t)
        conn.send(None)
    except BaseException as e:  # pragma: no cover - reported to the parent
        conn.send(repr(e))


def test_a_forked_child_reads_and_writes_after_the_parent_did(tmp_path):
    """Regression: after the parent's parallel work (rayon's global pool
    started), a child forked from it (multiprocessing's and DataLoader's
    default on Linux) waited forever on its first parallel read or write:
    it inherits the pool but none of its threads."""
    import multiprocessing

    src = tmp_path / "big.deathtensors"
    w = torch.arange(2_000_000, dtype=torch.float32)
    dt.save(src, {"w": w}, compress=True, checksum="blake3")  # parallel in this process
    with dt.open(src, verify=True) as f:
        assert torch.equal(f.get_tensor("w"), w)
    ctx = multiprocessing.get_context("fork")
    parent_end, child_end = ctx.Pipe()
    child = ctx.Process(target=_forked_child_work, args=(str(tmp_path), child_end))
    child.start()
    try:
        assert parent_end.poll(60), "the forked child hangs"
        assert parent_end.recv() is None
    finally:
        child.join(10)
        if child.is_alive():  # pragma: no cover - the hang this test catches
            child.kill()
            child.join()
    assert child.exitcode == 0
