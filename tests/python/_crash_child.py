"""Fork server of tests/python/test_crash_safety.py: writes that the test kills with SIGKILL.

Run as ``python _crash_child.py``. It imports numpy and deathtensors only,
builds the tensors of every version up front, and then, for each JSON command
on stdin, forks a child that performs one write (``save``, ``append`` or
``save_sharded``) while this process kills it with ``SIGKILL`` after the
delay asked for (or lets it finish, to time an uninterrupted write). Forking
from a process that never ran a write keeps each child's thread pool fresh,
and keeps the tensors out of the per-trial cost. One JSON reply per command
goes to stdout.

Commands::

    {"cmd": "write", "op": "save"|"save_direct"|"append"|"repack"|"export"|"sharded", "version": 0|1,
     "path": "...", "delay": seconds or null, "watch": "path of the commit" (optional)}
    -> {"killed": bool, "seconds": float, "status": int, "watched": {...} or null}

``seconds`` is the time from the fork to the child's end (exit or kill).
With ``watch`` (an uninterrupted write only), this process looks at the
target's folder every ``WATCH_INTERVAL`` seconds while the child runs, and
``watched`` says when (seconds from the fork) it first saw a temporary file
of the write there (``"temp"``) and when the file named by ``watch`` was
first replaced (``"commit"``: the target, or a checkpoint's index), each
null if it never did. The test draws its kill delays around those times: on
a fast machine the time before the write opens its temporary file (the fork,
the thread pool's start) can be a third of the whole, and the time after its
commit (fsync of the folder, the exit) another third.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from typing import Any, Dict, Optional, Tuple

import numpy as np

#: Compression and checksum settings of every write (both make the writes slow enough to hit).
WRITE_OPTIONS: Dict[str, Any] = {"compress": True, "checksum": True}
#: Name ending of the temporary files of a write (the file being written, a save_sharded's marker).
TEMP_SUFFIX = ".dt-tmp"
#: Seconds between two looks at the folder of a watched write.
WATCH_INTERVAL = 0.001
#: Shard limit of ``save_sharded``: 4 shards of 2 MiB per version.
MAX_SHARD_BYTES = 2 * 1024 * 1024


def version_tensors(version: int) -> Dict[str, np.ndarray]:
    """The tensors of ``version`` (0 or 1): 8 MiB of bf16-like float32 (low 16 bits zero)."""
    rng = np.random.default_rng(1000 + version)
    out = {}
    for i in range(4):
        w = (rng.standard_normal((512, 1024)) * (0.02 * (i + 1))).astype(np.float32)
        out[f"layer.{i}.weight"] = (w.view(np.uint32) & np.uint32(0xFFFF0000)).view(np.float32)
    return out


#: Size of each version of ``save_direct``: over the 64 MiB from which durable
#: uncompressed saves use direct I/O (framework/src/direct.rs).
DIRECT_BYTES = 68 * 1024 * 1024


def direct_tensors(version: int) -> Dict[str, np.ndarray]:
    """The tensors of ``version`` (0 or 1) for ``save_direct``: 68 MiB of random bytes in 4 tensors."""
    rng = np.random.default_rng(3000 + version)
    return {f"block.{i}": rng.integers(0, 256, DIRECT_BYTES // 4, dtype=np.uint8) for i in range(4)}


def appended_tensors() -> Dict[str, np.ndarray]:
    """What ``append`` adds to a file holding version 0: 6 MiB more."""
    rng = np.random.default_rng(2000)
    return {f"extra.{i}": rng.standard_normal((512, 1024)).astype(np.float32) for i in range(3)}


def write(
    op: str,
    version: int,
    path: str,
    data: Dict[Any, Dict[str, np.ndarray]],
    extra: Dict[str, np.ndarray],
    sources: Dict[int, str],
) -> None:
    import deathtensors as dt

    if op == "save":
        dt.save(path, data[version], global_metadata={"version": version}, **WRITE_OPTIONS)
    elif op == "save_direct":
        dt.save(path, data[("direct", version)], global_metadata={"version": version}, checksum=True)
    elif op == "append":
        dt.append(path, extra, extra_global_metadata={"appended": True})
    elif op == "repack":
        dt.repack(path, compress="lz4", checksum="blake3")
    elif op == "export":
        dt.to_safetensors(sources[version], path)
    elif op == "sharded":
        dt.save_sharded(
            path, data[version], max_shard_bytes=MAX_SHARD_BYTES, global_metadata={"version": version}, **WRITE_OPTIONS
        )
    else:
        raise ValueError(op)


def serve() -> None:
    import deathtensors  # imported once, before any fork

    data: Dict[Any, Dict[str, np.ndarray]] = {v: version_tensors(v) for v in (0, 1)}
    data.update({("direct", v): direct_tensors(v) for v in (0, 1)})
    extra = appended_tensors()
    with tempfile.TemporaryDirectory() as folder:
        # What ``export`` converts: version v, saved as the other writes save it.
        sources = {v: os.path.join(folder, f"v{v}.deathtensors") for v in (0, 1)}
        pid = os.fork()  # written by a child: this process must never run a write (see above)
        if pid == 0:
            for v, source in sources.items():
                deathtensors.save(source, data[v], **WRITE_OPTIONS)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            raise SystemExit(f"writing the sources of export failed (status {status})")
        _serve(data, extra, sources)


def _serve(data: Dict[Any, Dict[str, np.ndarray]], extra: Dict[str, np.ndarray], sources: Dict[int, str]) -> None:
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # the child: one write, then leave without any cleanup of the server's
            code = 0
            try:
                write(cmd["op"], cmd["version"], cmd["path"], data, extra, sources)
            except BaseException as e:  # pragma: no cover - reported through the exit status
                print(f"write failed: {e!r}", file=sys.stderr, flush=True)
                code = 3
            os._exit(code)
        done, status = 0, 0
        watched = None
        if cmd.get("watch") and cmd["delay"] is None:
            done, status, watched = _watch(pid, os.path.dirname(cmd["path"]), cmd["watch"], t0)
        elif cmd["delay"] is not None:
            time.sleep(cmd["delay"])
            done, status = os.waitpid(pid, os.WNOHANG)
            if done == 0:
                os.kill(pid, signal.SIGKILL)
        if done == 0:
            _, status = os.waitpid(pid, 0)
        seconds = time.perf_counter() - t0
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -1
        print(json.dumps({"killed": killed, "seconds": seconds, "status": code, "watched": watched}), flush=True)


def _watch(pid: int, folder: str, commit: str, t0: float) -> Any:
    """Wait for child ``pid``, looking meanwhile for temporary files in
    ``folder`` and for the replacement of ``commit``: ``(pid, status,
    {"temp": seconds after t0 or None, "commit": seconds after t0 or None})``."""
    before = _identity(commit)
    seen: Dict[str, Optional[float]] = {"temp": None, "commit": None}
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return done, status, seen
        now = time.perf_counter() - t0
        if seen["temp"] is None and any(name.endswith(TEMP_SUFFIX) for name in os.listdir(folder)):
            seen["temp"] = now
        if seen["commit"] is None and _identity(commit) != before:
            seen["commit"] = now
        time.sleep(WATCH_INTERVAL)


def _identity(path: str) -> Optional[Tuple[int, int, int]]:
    """Which file ``path`` names now: ``(inode, size, mtime)``, or None."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


if __name__ == "__main__":
    serve()
