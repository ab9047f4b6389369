"""Helpers shared by the pytest suite: an independent reader/writer of the v1 layout.

Nothing here uses deathtensors itself: the expected values the tests compare
against come from the format description (magic, version, flags, header length,
JSON header, NUL padding to 8, data, optional 32-byte footer), from numpy's
random generator, or from hashlib.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

MAGIC = b"DTLEGION"
PREAMBLE_LEN = 24
FOOTER_LEN = 32
FLAG_COMPRESSED = 1
FLAG_CHECKSUM = 2
FLAG_ENCRYPTED = 4

#: (deathtensors id, torch dtype name, numpy dtype string or None, item size)
DTYPES: List[Tuple[str, str, Optional[str], int]] = [
    ("BOOL", "bool", "bool", 1),
    ("U8", "uint8", "uint8", 1),
    ("I8", "int8", "int8", 1),
    ("U16", "uint16", "<u2", 2),
    ("I16", "int16", "<i2", 2),
    ("U32", "uint32", "<u4", 4),
    ("I32", "int32", "<i4", 4),
    ("U64", "uint64", "<u8", 8),
    ("I64", "int64", "<i8", 8),
    ("F16", "float16", "<f2", 2),
    ("BF16", "bfloat16", None, 2),
    ("F32", "float32", "<f4", 4),
    ("F64", "float64", "<f8", 8),
    ("C64", "complex64", "<c8", 8),
    ("C128", "complex128", "<c16", 16),
    ("F8_E4M3", "float8_e4m3fn", None, 1),
    ("F8_E5M2", "float8_e5m2", None, 1),
]
DTYPE_IDS = [d[0] for d in DTYPES]
NUMPY_DTYPES = [d for d in DTYPES if d[2] is not None]
NO_NUMPY_DTYPES = [d for d in DTYPES if d[2] is None]

#: save(compress=...) values and the codec each one must select.
COMPRESS_OPTIONS = [(False, None), (True, "zstd"), ("lz4", "lz4")]
#: save(checksum=...) values and the algorithm each one must select.
CHECKSUM_OPTIONS = [(False, None), (True, "sha256"), ("blake3", "blake3")]


def random_bytes(nbytes: int, seed: int, bool_like: bool = False) -> bytes:
    """Deterministic pseudo-random bytes (every bit pattern, NaNs included)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    high = 2 if bool_like else 256
    return rng.integers(0, high, size=nbytes, dtype=np.uint8).tobytes()


def torch_from_bytes(raw: bytes, torch_dtype_name: str, shape: Sequence[int]) -> Any:
    """A torch tensor whose memory is exactly ``raw`` (built without deathtensors)."""
    import torch

    dtype = getattr(torch, torch_dtype_name)
    if len(raw) == 0:
        return torch.empty(tuple(shape), dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(tuple(shape)).clone()


def torch_bytes(t: Any) -> bytes:
    """The raw little-endian bytes of a torch tensor (NaN-safe comparison material)."""
    import torch

    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    return flat.view(torch.uint8).numpy().tobytes()


def torch_u8(t: Any) -> Any:
    """A uint8 view of a tensor's bytes, for ``torch.equal`` without NaN trouble."""
    import torch

    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return torch.empty(0, dtype=torch.uint8)
    return flat.view(torch.uint8)


def sample_raw(dtype_id: str, shape: Sequence[int], seed: int) -> bytes:
    """Random raw bytes for a tensor of ``dtype_id`` and ``shape``."""
    item = {d[0]: d[3] for d in DTYPES}[dtype_id]
    n = 1
    for s in shape:
        n *= s
    return random_bytes(n * item, seed, bool_like=dtype_id == "BOOL")


class Layout:
    """The parts of a file, decoded by the test suite's own reader."""

    def __init__(self, raw: bytes) -> None:
        assert raw[:8] == MAGIC, raw[:8]
        self.raw = raw
        self.version, self.flags, self.header_len = struct.unpack_from("<IIQ", raw, 8)
        self.header_text = raw[PREAMBLE_LEN : PREAMBLE_LEN + self.header_len]
        self.header: Dict[str, Any] = json.loads(self.header_text)
        end = PREAMBLE_LEN + self.header_len
        self.data_start = end + (8 - end % 8) % 8
        self.padding = raw[end : self.data_start]
        self.has_footer = bool(self.flags & FLAG_CHECKSUM)
        self.data_end = len(raw) - (FOOTER_LEN if self.has_footer else 0)
        self.footer = raw[self.data_end :] if self.has_footer else b""

    def tensor(self, name: str) -> Dict[str, Any]:
        for t in self.header["tensors"]:
            if t["name"] == name:
                return t
        raise KeyError(name)

    def stored(self, name: str) -> bytes:
        begin, end = self.tensor(name)["offsets"]
        return self.raw[self.data_start + begin : self.data_start + end]


def layout(path: Union[str, os.PathLike]) -> Layout:
    return Layout(Path(path).read_bytes())


def build_file(
    header: Any,
    data: bytes = b"",
    flags: int = 0,
    footer: bytes = b"",
    align: int = 64,
    version: int = 1,
    magic: bytes = MAGIC,
    header_len: Optional[int] = None,
    padding: Optional[bytes] = None,
) -> bytes:
    """Assemble a file by hand.

    ``header`` is a dict (JSON-encoded here), a str or raw bytes. The JSON is
    padded with spaces so that the data region starts at a multiple of
    ``align``; ``header_len``/``padding`` override the computed values.
    """
    if isinstance(header, dict):
        text = json.dumps(header).encode()
    elif isinstance(header, str):
        text = header.encode()
    else:
        text = bytes(header)
    if align and isinstance(header, dict):
        while (PREAMBLE_LEN + len(text)) % align:
            text += b" "
    hl = len(text) if header_len is None else header_len
    pad = b"\0" * ((8 - (PREAMBLE_LEN + len(text)) % 8) % 8) if padding is None else padding
    return magic + struct.pack("<IIQ", version, flags, hl) + text + pad + data + footer


def tensor_entry(
    name: str = "a", dtype: str = "U8", shape: Sequence[int] = (4,), offsets: Sequence[int] = (0, 4), **extra: Any
) -> Dict[str, Any]:
    """A tensor object of a header, for :func:`build_file`; ``extra`` adds or overrides fields."""
    entry: Dict[str, Any] = {"name": name, "dtype": dtype, "shape": list(shape), "offsets": list(offsets)}
    entry.update(extra)
    return entry


def cli_commands() -> Dict[str, List[str]]:
    """The two ways to run the CLI: ``python -m deathtensors`` and the console script."""
    script = Path(sys.executable).parent / "deathtensors"
    return {"module": [sys.executable, "-m", "deathtensors"], "script": [str(script)]}


def run_cli(
    prefix: List[str], *args: str, env: Optional[Dict[str, str]] = None, stdout: Any = subprocess.PIPE
) -> subprocess.CompletedProcess:
    """Run the CLI; stdout and stderr are captured (``stdout`` may name a file instead)."""
    full_env = dict(os.environ)
    full_env["RUST_BACKTRACE"] = "1"
    if env:
        full_env.update(env)
    return subprocess.run(
        [*prefix, *args],
        stdout=stdout,
        stderr=subprocess.PIPE,
        env=full_env,
        timeout=60,
        check=False,
    )


def run_on_pty(args: Sequence[str], env: Dict[str, str]) -> Tuple[subprocess.CompletedProcess, str]:
    """Run ``args`` with stderr on a pseudo-terminal; return the process and what it drew there."""
    import fcntl
    import pty
    import termios

    master, slave = pty.openpty()
    # A real terminal has a size; some progress bars (tqdm) draw nothing on a 0-column one.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.run(list(args), stdout=subprocess.PIPE, stderr=slave, env=env, timeout=60, check=False)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc, b"".join(chunks).decode(errors="replace")


_PEAK_PROBE = """
import sys, deathtensors as dt

def status(key):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])  # KiB
    raise SystemExit("no " + key)

argv = sys.argv[3:]
exec(sys.argv[2])  # setup, not measured
with open("/proc/self/clear_refs", "w") as fh:
    fh.write("5")  # reset the peak resident set size (VmHWM)
before = status("VmRSS")
exec(sys.argv[1])
print(status("VmHWM") - before)
"""


def peak_growth_mib(code: str, *args: str, setup: str = "") -> float:
    """How far one statement grows the peak resident memory of a fresh process, in MiB.

    ``code`` runs with ``dt`` (deathtensors) imported and ``argv`` = ``args``,
    after ``setup`` (imports, say, which are not measured); the peak
    (``VmHWM``) is reset just before ``code`` (Linux ``clear_refs``).
    Each decoding thread holds about two chunks of scratch (~1.6 MiB), so a
    bound would depend on the machine's core count (a 16-core machine failed
    one at 41 MiB): two worker threads make it the same everywhere.
    """
    env = dict(os.environ, RAYON_NUM_THREADS="2")
    res = subprocess.run(
        [sys.executable, "-c", _PEAK_PROBE, code, setup, *args], capture_output=True, timeout=120, check=False, env=env
    )
    assert res.returncode == 0, res.stderr.decode()
    return int(res.stdout) / 1024


def open_file_limit(soft: int) -> Any:
    """A ``preexec_fn`` for ``subprocess.run`` that lowers the child's soft
    limit on open files to ``soft``; skips the test where the hard limit is lower."""
    import resource

    import pytest

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < soft:
        pytest.skip(f"the hard limit on open files ({hard}) is below {soft}")
    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
