"""The commands of ``python -m deathtensors`` that need Python.

The Rust command tree (``deathtensors_cli``) parses and checks every
command. Those it cannot run on its own, the ``hub-*`` commands and the
conversion or repack of a sharded checkpoint, it hands to :func:`run` as a JSON
request. Exit codes and output follow the rest of the CLI: 0 success, 1 a bad
or unverifiable file, 2 a usage error; errors are one line on stderr, and
text from files or servers is escaped before it reaches the terminal.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import unicodedata
from typing import Any, Dict, List, Optional, Tuple

from . import _core
from .errors import ChecksumError, DeathtensorsError, FormatError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def run(request: str) -> int:
    """Run one parsed command (``request`` is its JSON); print the result; return the exit code."""
    req = json.loads(request)
    if req["command"] == "convert":
        return _convert_sharded(req)
    if req["command"] == "repack":
        return _repack_sharded(req)
    from .huggingface import _cli as hub_cli

    return hub_cli.run(req)


def human(n: float) -> str:
    """A byte count as the Rust CLI prints it (``512 B``, ``1.5 KiB``)."""
    units = ("B", "KiB", "MiB", "GiB", "TiB")
    unit = 0
    while n >= 1024 and unit + 1 < len(units):
        n /= 1024
        unit += 1
    return f"{int(n)} B" if unit == 0 else f"{n:.1f} {units[unit]}"


_DEBUG_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r", "\0": "\\0"}


#: Invisible characters that change how the text around them shows: the
#: bidirectional marks, embeddings, overrides and isolates, and the line and
#: paragraph separators (as the Rust CLI's ``unsafe_for_terminal``).
_INVISIBLE_LAYOUT = frozenset("\u061c\u200e\u200f\u2028\u2029\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _is_control(c: str) -> bool:
    """Whether ``c`` must not reach a terminal raw from a file or a server."""
    return unicodedata.category(c) == "Cc" or c in _INVISIBLE_LAYOUT


def shown(name: str) -> str:
    """A name from a file or a server as printed in text output: when it holds
    control characters, which could drive the terminal or fake lines of
    output, or invisible characters that reorder what is shown, those are
    escaped in the Rust CLI's form (``evil\\u{1b}[2J``,
    ``layer.0.\\u{202e}thgiew``). (The Rust CLI then escapes the whole name
    with ``escape_debug``, quotes and backslashes too; this escapes only them.)"""
    if not any(map(_is_control, name)):
        return name
    return "".join(_DEBUG_ESCAPES.get(c, f"\\u{{{ord(c):x}}}") if _is_control(c) else c for c in name)


def terminal_safe(text: str) -> str:
    """``text`` with every control character (and invisible layout character)
    but newline and tab escaped as JSON's ``\\uXXXX``, so ``--json`` output
    stays valid (``json.dumps`` with ``ensure_ascii=False`` leaves DEL and the
    C1 controls raw)."""
    if not any(_is_control(c) and c not in "\n\t" for c in text):
        return text
    return "".join(f"\\u{ord(c):04x}" if _is_control(c) and c not in "\n\t" else c for c in text)


def error_text(e: BaseException) -> str:
    """``e`` as the CLI's error line says it: an ``OSError`` about a path as
    the Rust CLI words one (``out: No such file or directory (os error 2)``),
    not Python's ``[Errno 2] No such file or directory: 'out'``."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        # The core's OSErrors say it already (Rust's wording); an errno of 0 is none.
        code = f" (os error {e.errno})" if e.errno and not e.strerror.endswith(")") else ""
        return f"{printable(os.fsdecode(e.filename))}: {e.strerror}{code}"
    return str(e)


def fail(message: str, code: int) -> int:
    """Print ``message`` as the CLI's one error line; return ``code``."""
    line = terminal_safe(" ".join(message.split()))
    sys.stderr.write(f"deathtensors: error: {line}\n")
    sys.stderr.flush()
    return code


def print_result(text: str) -> int:
    """Print a command's output (made terminal-safe); return the exit code.

    As in the Rust CLI, output that cannot be written is a usage error (2),
    except for a reader that stopped early (``| head``), which is no failure.
    """
    out = terminal_safe(text)
    try:
        if sys.stdout is None:
            raise OSError(errno.EBADF, "standard output is closed")
        sys.stdout.write(out + ("\n" if out and not out.endswith("\n") else ""))
        sys.stdout.flush()
    except OSError as e:
        if sys.stdout is not None:
            # What is left in its buffer goes nowhere: Python would fail again
            # flushing it at exit, and print a second error.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        if isinstance(e, BrokenPipeError):
            return EXIT_OK
        return fail(f"cannot write the output: {e}", EXIT_USAGE)
    return EXIT_OK


def printable(path: str) -> str:
    """``path`` as text that can be printed: bytes that are not UTF-8 (a
    surrogate-escaped ``str``) become U+FFFD, as the Rust CLI prints them."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _exit_code(e: Exception) -> int:
    """The Rust CLI's rule: a bad, unreadable or unverifiable file is 1, anything else 2."""
    return EXIT_FAILED if isinstance(e, (FormatError, ChecksumError, OSError)) else EXIT_USAGE


def _convert_sharded(req: Dict[str, Any]) -> int:
    """``convert`` of a sharded checkpoint, through :func:`deathtensors.from_safetensors`
    or :func:`deathtensors.to_safetensors`, which convert one shard at a time."""
    from . import _convert, expand_path, from_safetensors, open_sharded, to_safetensors

    if req["converter"] != _convert._CONVERTER:
        return fail(f"sharded checkpoints convert to and from safetensors only, not {req['converter']!r}", EXIT_USAGE)
    src, dst, importing = req["src"], req["dst"], req["direction"] == "import"
    try:
        full = expand_path(src)
        source_index = _convert._safetensors_index(full) if importing else _core.checkpoint_index(full)
        if source_index is None:  # gone since the Rust side found it
            raise FileNotFoundError(errno.ENOENT, "no sharded index", src)
        if importing:
            written = from_safetensors(
                src,
                dst,
                checksum=req.get("checksum") or False,
                compress=req.get("codec") or False,
                compress_level=req.get("level"),
            )
            native_index = written
        else:
            written = to_safetensors(src, dst)
            native_index = source_index
        with open_sharded(native_index) as sr:
            tensors = len(sr.keys())
        bytes_in, shards = _checkpoint_bytes(source_index)
        bytes_out, _ = _checkpoint_bytes(written)
    except (DeathtensorsError, OSError) as e:
        return fail(error_text(e), _exit_code(e))
    direction = "import" if importing else "export"
    if req.get("json"):
        summary: Dict[str, Any] = {
            "converter": req["converter"],
            "direction": direction,
            "src": src,
            "dst": dst,
            "index": printable(written),
            "shards": shards,
            "tensors": tensors,
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
        }
        if importing:
            summary["codec"] = req.get("codec")
            summary["checksum"] = req.get("checksum")
        return print_result(json.dumps(summary, indent=2, ensure_ascii=False))
    return print_result(
        f"converted {shown(src)} -> {shown(dst)} ({req['converter']} {direction}, {shards} shards): "
        f"{tensors} tensors, {human(bytes_in)} -> {human(bytes_out)}"
    )


def _repack_sharded(req: Dict[str, Any]) -> int:
    """``repack`` of a sharded checkpoint, through :func:`deathtensors.repack`."""
    from . import expand_path, open_sharded, repack

    src, dst = req["src"], req["dst"]
    try:
        source_index = _core.checkpoint_index(expand_path(src))
        if source_index is None:  # gone since the Rust side found it
            raise FileNotFoundError(errno.ENOENT, "no sharded index", src)
        bytes_in, shards = _checkpoint_bytes(source_index)
        before = _checkpoint_settings(source_index)
        written = repack(
            src,
            dst,
            compress=(req["codec"] or False) if req["set_codec"] else None,
            compress_level=req["level"],
            checksum=(req["checksum"] or False) if req["set_checksum"] else None,
        )
        with open_sharded(written) as sr:
            tensors = len(sr.keys())
        bytes_out, _ = _checkpoint_bytes(written)
        after = _checkpoint_settings(written)
    except (DeathtensorsError, OSError) as e:
        return fail(error_text(e), _exit_code(e))
    if req.get("json"):
        summary = {
            "src": src,
            "dst": dst if dst is not None else src,
            "index": printable(written),
            "shards": shards,
            "tensors": tensors,
            "compression": [before[0], after[0]],
            "checksum": [before[1], after[1]],
            "bytes_in": bytes_in,
            "bytes_out": bytes_out,
        }
        return print_result(json.dumps(summary, indent=2, ensure_ascii=False))
    return print_result(
        f"repacked {shown(src)} -> {shown(dst if dst is not None else src)} ({shards} shards): "
        f"{tensors} tensors, compression {before[0]} -> {after[0]}, "
        f"checksum {before[1] or 'none'} -> {after[1] or 'none'}, {human(bytes_in)} -> {human(bytes_out)}"
    )


def _checkpoint_settings(index_path: str) -> Tuple[str, Optional[str]]:
    """How a checkpoint's shards are stored, as the single-file ``repack``
    prints it: ``("zstd (level 3)", "sha256")``, ``("none", None)``. Shards
    stored differently give their settings joined by ``" / "``."""
    from . import DtFile
    from ._sharded import _read_index

    folder = os.path.dirname(index_path) or "."
    storages, checksums = set(), set()
    for shard in sorted(set(_read_index(index_path)["weight_map"].values())):
        with DtFile._at(os.path.join(folder, shard)) as f:
            desc = f._desc
        storages.add(f"{desc['codec']} (level {desc['level']})" if desc["codec"] else "none")
        checksums.add(desc["checksum"] or "none")
    storage = " / ".join(sorted(storages)) or "none"
    checksum = " / ".join(sorted(checksums)) or "none"
    return storage, None if checksum == "none" else checksum


def _checkpoint_bytes(index_path: str) -> Tuple[int, int]:
    """The bytes of a checkpoint on disk (its index and shards) and its shard count."""
    from ._sharded import _read_index

    shards: List[str] = sorted(set(_read_index(index_path)["weight_map"].values()))
    folder = os.path.dirname(index_path) or "."
    return os.path.getsize(index_path) + sum(os.path.getsize(os.path.join(folder, s)) for s in shards), len(shards)
