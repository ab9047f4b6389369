"""Sharded checkpoints: many ``.deathtensors`` files plus a JSON index.

The layout follows the convention Hugging Face users know from
``model.safetensors.index.json``::

    big_model-00001-of-00003.deathtensors
    big_model-00002-of-00003.deathtensors
    big_model-00003-of-00003.deathtensors
    big_model.deathtensors.index.json

The index is a JSON object::

    {
      "metadata": {
        "total_size": 123456789,          # raw bytes stored: sparse indices count, tied names once
        "format": "deathtensors",
        "global_metadata": {...}          # only when save_sharded got global_metadata
      },
      "weight_map": {"layer.0.weight": "big_model-00001-of-00003.deathtensors", ...}
    }

``weight_map`` lists the tensors in saved order. Every shard also carries the
global metadata in its own header, and each tensor's per-tensor metadata.

The index is untrusted input when it is opened: it must be a JSON object of at
most :data:`MAX_INDEX_BYTES` bytes whose ``weight_map`` maps strings to plain
file names in the index's own folder (no separators, no ``..``, no absolute or
drive paths, no NUL). Anything else raises :class:`FormatError` at
:func:`open_sharded`, before any shard is touched. Symbolic links that sit in
the folder itself are followed (the Hugging Face hub cache stores files that
way); a hostile index alone cannot reach outside the folder.
"""

from __future__ import annotations

import contextlib
import errno
import json
import operator
import os
import re
import sys
import tempfile
import threading
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Set, Tuple, Union

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from . import _core
from ._frameworks import _is_torch, _torch_maps, prepare, target_device
from .errors import (
    ChecksumError,
    DeathtensorsError,
    FormatError,
    InvalidArgumentError,
    TensorNotFoundError,
    UnsupportedDtypeError,
)

if TYPE_CHECKING:  # pragma: no cover
    from . import DtFile
    from ._slicing import TensorSlice

__all__ = ["ShardedReader", "open_sharded", "save_sharded", "MAX_INDEX_BYTES", "INDEX_SUFFIX", "SHARD_SUFFIX"]

PathLike = Union[str, "os.PathLike[str]"]

#: An index larger than this is refused (a real one for 10^6 tensors is ~100 MB at most).
MAX_INDEX_BYTES: int = _core.MAX_INDEX_BYTES
#: The first bytes of every ``.deathtensors`` file.
_MAGIC = b"DTLEGION"
#: What :func:`save_sharded` appends to the stem to name the index.
INDEX_SUFFIX: str = _core.INDEX_SUFFIX
#: The extension of every shard :func:`save_sharded` writes.
SHARD_SUFFIX = ".deathtensors"
#: The value of ``metadata.format`` in indexes this module writes.
INDEX_FORMAT: str = _core.INDEX_FORMAT

_DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3


def _pkg() -> Any:
    # The package imports this module while it initialises, so its attributes
    # (save, DtFile, expand_path, private helpers) are looked up when called.
    return sys.modules[__name__.rpartition(".")[0]]


def _stem(path: str) -> str:
    return _core.checkpoint_stem(path)  # the rule the index lookup follows too


def _split_stem(stem: str, given: Any, what: str) -> Tuple[str, str]:
    """The folder and base name of a checkpoint's stem, its shards' names' prefix.

    Raises InvalidArgumentError for a stem naming a folder, and for a base name
    that is not valid UTF-8 (its shards' names go into the JSON index).
    """
    if not stem:
        raise InvalidArgumentError(f"{what} {os.fspath(given)!r} is empty")
    folder = os.path.dirname(stem) or "."
    base = os.path.basename(stem)
    if base in ("", ".", ".."):
        raise InvalidArgumentError(f"{what} {os.fspath(given)!r} names a folder, not a checkpoint")
    try:
        base.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(
            f"{what} {os.fspath(given)!r}: a sharded checkpoint's name must be valid UTF-8,"
            " because its shards' names are written into its JSON index"
        ) from None
    return folder, base


def _shard_name(base: str, index: int, count: int) -> str:
    return f"{base}-{index:05d}-of-{count:05d}{SHARD_SUFFIX}"


def _raw_nbytes(name: str, value: Any) -> int:
    """The bytes ``value`` occupies once stored, checked the way :func:`deathtensors.save` checks it.

    torch tensors are sized without a copy (a GPU tensor stays on its GPU);
    numpy arrays and anything else go through the same ``prepare`` as ``save``.
    A sparse COO tensor counts its values and indices, which go into one shard.
    """
    if _is_torch(value):
        import torch

        from ._sparse import is_sparse

        if is_sparse(value):
            values, indices = value._values(), value._indices()  # coalesced or not
            return int(values.numel()) * int(values.element_size()) + int(indices.numel()) * 8
        if value.layout != torch.strided:
            raise InvalidArgumentError(
                f"tensor {name!r} has layout {value.layout}; dense (strided) and sparse COO tensors can be saved"
            )
        if value.dtype not in _torch_maps()[1]:
            raise UnsupportedDtypeError(f"tensor {name!r}: torch dtype {value.dtype} has no deathtensors dtype")
        return int(value.numel()) * int(value.element_size())
    _dtype_id, _shape, obj = prepare(name, value)
    return int(obj.nbytes)


def _plan(sizes: List[Tuple[str, int]], max_shard_bytes: int) -> List[List[str]]:
    """Split names, in order, into groups of at most ``max_shard_bytes`` (a bigger tensor stands alone)."""
    groups: List[List[str]] = []
    current: List[str] = []
    used = 0
    for name, nbytes in sizes:
        if current and used + nbytes > max_shard_bytes:
            groups.append(current)
            current, used = [], 0
        current.append(name)
        used += nbytes
    if current:
        groups.append(current)
    return groups


#: How the names of temporary files end; the Rust core's ``atomic`` module uses the same
#: shape (``.<name>.<random>.dt-tmp``) and the same lock, and the next save in a folder
#: removes those of dead writers.
_TEMP_SUFFIX = ".dt-tmp"


def _try_lock(fd: int) -> bool:
    """Take an exclusive ``flock`` on ``fd`` without waiting; whether it was taken."""
    if fcntl is None:  # pragma: no cover - not on Linux or macOS
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True


def _is_at(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.lstat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _locked_temp_file(folder: str, prefix: str) -> Tuple[int, str]:
    """Create ``folder/<prefix><random>.dt-tmp`` holding its exclusive lock (see ``AtomicFile``).

    A cleaner removes such a file only while holding its lock, so once we hold
    it and the file is still at its path, it is ours until this process dies.
    """
    for _ in range(16):
        try:
            fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=_TEMP_SUFFIX, dir=folder)
        except OSError as e:
            # The error would name the random file; the folder is what the caller gave.
            raise OSError(e.errno, e.strerror, folder) from None
        if _try_lock(fd) and _is_at(fd, tmp):
            return fd, tmp
        os.close(fd)
        _remove_quietly(tmp)
    raise OSError(errno.EAGAIN, "could not lock a new temporary file (another process keeps taking it)", folder)


def _is_held(path: str) -> bool:
    """Whether ``path`` is a temporary file whose writer is alive (it holds the lock)."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        return False
    try:
        return not _try_lock(fd)
    finally:
        os.close(fd)


def _index_text(path: str, value: Any) -> str:
    """The JSON text of the index ``value`` for ``path``: indented, or compact
    when indented it would pass :data:`MAX_INDEX_BYTES`, the most any reader
    (ours, or this library's in another process) takes.

    Raises InvalidArgumentError when even compact it would pass that limit:
    the checkpoint could not be opened."""
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, indent=2) + "\n"
    if len(text) * 4 <= MAX_INDEX_BYTES or len(text.encode("utf-8")) <= MAX_INDEX_BYTES:
        return text
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n"
    size = len(text.encode("utf-8"))
    if size > MAX_INDEX_BYTES:
        raise InvalidArgumentError(
            f"the index {path!r} would be {size} bytes, over the {MAX_INDEX_BYTES} an index may have "
            "(no reader would open it): save fewer, or shorter-named, tensors per checkpoint"
        )
    return text


def _write_json_atomically(path: str, value: Any) -> None:
    text = _index_text(path, value)
    folder = os.path.dirname(path) or "."
    fd, tmp = _locked_temp_file(folder, "." + os.path.basename(path) + ".")
    try:
        # mkstemp makes 0600; the index must be as readable as its shards.
        os.fchmod(fd, _core.file_mode_for(path))
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
            os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_dir(folder)


def _fsync_dir(folder: str) -> None:
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows
        return
    try:
        os.fsync(dfd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dfd)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def save_sharded(
    path: PathLike,
    tensors: Mapping[str, Any],
    max_shard_bytes: int = _DEFAULT_MAX_SHARD_BYTES,
    metadata: Optional[Mapping[str, Mapping[str, Any]]] = None,
    global_metadata: Optional[Mapping[str, Any]] = None,
    checksum: Union[bool, str] = False,
    compress: Union[bool, str] = False,
    compress_level: Optional[int] = 3,
) -> List[str]:
    """Save ``tensors`` as several ``.deathtensors`` shards plus a JSON index.

    The dict is split in order: a shard takes tensors while their raw
    (uncompressed) bytes stay within ``max_shard_bytes``; a tensor bigger than
    the limit gets a shard of its own. A tied weight (a second name of an
    earlier tensor, as :func:`deathtensors.save` finds them) goes into its
    target's shard and costs nothing there: it is stored once and read back
    sharing memory. No shard is ever empty (an empty dict
    writes no shard and an index with an empty ``weight_map``).

    With ``path="dir/big_model.deathtensors"`` (stem ``dir/big_model``; a
    ``.dt``, ``.deathtensors.index.json`` or no extension works the same) this
    writes ``dir/big_model-00001-of-00010.deathtensors`` ... and the index
    ``dir/big_model.deathtensors.index.json``, whose schema is in this
    module's docstring (the global metadata sits under
    ``metadata.global_metadata``).

    Saving over an earlier checkpoint is crash safe: whenever the process
    stops (an exception, ``SIGKILL``, power loss), the index names either the
    complete old set of shards or the complete new one, never a mix. The new
    shards are first written (each atomically, by :func:`deathtensors.save`)
    under pending names no index refers to,
    ``{stem}-NNNNN-of-MMMMM.<token>.deathtensors``; the index is then switched
    to them in one ``os.replace``; then each final name is atomically replaced
    by a hard link to its pending shard and the index is switched to the final
    names. A save that fails before its index switch leaves the old checkpoint
    untouched and removes what it wrote. On a file system without hard links
    the checkpoint keeps the pending names. After success, the stem's shards
    the new index does not name are deleted: final names with another shard
    count, and pending shards of saves that died (a save holds a ``flock`` on
    its marker file ``.{base}.<token>.dt-tmp`` while it runs, so pending
    shards of a concurrent save are kept). Saves into one folder write their
    shards at the same time but take turns from the index switch to the end
    of that cleanup (a ``flock`` on the folder), so concurrent saves of one
    checkpoint leave the complete checkpoint of the last one to commit. A
    ``path`` that is a single ``.deathtensors`` file (an earlier
    :func:`deathtensors.save`) is refused: it would hide the checkpoint
    wherever that path is read (the CLI, :func:`deathtensors.diff`,
    :meth:`Schema.validate`).

    Args:
        path: Base path of the checkpoint (``~`` and ``$VARS`` are expanded).
            Its folder must exist.
        tensors: ``{name: tensor}`` of torch tensors or numpy arrays.
        max_shard_bytes: Most raw tensor bytes per shard (>= 1). Default 5 GiB.
        metadata: Per-tensor metadata ``{name: {key: JSON value}}``; each goes
            into the shard holding that tensor.
        global_metadata: ``{key: JSON value}``, stored in every shard and in
            the index under ``metadata.global_metadata``.
        checksum, compress, compress_level: As in :func:`deathtensors.save`,
            applied to every shard.

    Returns:
        The shard paths, in order.

    Raises:
        InvalidArgumentError: ``path`` is a single ``.deathtensors`` file,
            or ends in ``.json`` but not in ``.deathtensors.index.json``
            (``open_sharded`` would take it for the index itself),
            ``tensors`` is not a dict, ``max_shard_bytes``
            is not an integer >= 1, bad names, metadata or values. Checked
            before anything is written.
        PluginError, UnsupportedDtypeError, OSError: as in :func:`deathtensors.save`.
    """
    pkg = _pkg()
    pkg._check_mapping(tensors)
    if isinstance(max_shard_bytes, bool):
        raise InvalidArgumentError(f"max_shard_bytes must be an integer >= 1, not {max_shard_bytes!r}")
    try:
        limit = operator.index(max_shard_bytes)
    except TypeError:
        raise InvalidArgumentError(f"max_shard_bytes must be an integer >= 1, not {max_shard_bytes!r}") from None
    if limit < 1:
        raise InvalidArgumentError(f"max_shard_bytes must be >= 1, not {limit}")

    # Validate everything up front so that a bad argument writes nothing.
    per_tensor: Dict[str, Any] = {}
    if metadata is not None:
        if not isinstance(metadata, Mapping):
            raise InvalidArgumentError(f"metadata must be a dict of name -> dict, not {type(metadata).__name__}")
        per_tensor = dict(metadata)
        unknown = sorted(str(n) for n in set(per_tensor) - set(tensors))
        if unknown:
            raise InvalidArgumentError(f"metadata names tensors that are not saved: {unknown}")
        for n, v in per_tensor.items():
            pkg._dumps(v, f"metadata[{n!r}]")
    global_text = pkg._dumps(global_metadata, "global_metadata")
    pkg._choose(compress, pkg.DEFAULT_CODEC, "compress")
    pkg._choose(checksum, pkg.DEFAULT_CHECKSUM, "checksum")
    # A tied weight (a second name of an earlier tensor) costs no bytes and goes
    # into its target's shard, where save() stores it once, as an alias.
    tied = pkg._tied_to(tensors)
    sizes = [(name, _raw_nbytes(name, value)) for name, value in tensors.items() if name not in tied]

    full = pkg.expand_path(path)
    _refuse_a_file_at(full, path)
    stem = _stem(full)
    if full.endswith(".json") and full != stem + INDEX_SUFFIX:
        # open_sharded takes a .json path for the index itself: it would not find this checkpoint.
        meant = re.sub(r"(\.dt)?(\.index)?\.json$", "", full)
        raise InvalidArgumentError(
            f"path {os.fspath(path)!r} ends in .json, so open_sharded would read it as the index, but the "
            f"index is named {{stem}}{INDEX_SUFFIX}: give the base path {meant + SHARD_SUFFIX!r} or the index "
            f"path {meant + INDEX_SUFFIX!r}"
        )
    folder, base = _split_stem(stem, path, "path")

    groups = _plan(sizes, limit)
    if tied:
        group_of = {t: i for i, group in enumerate(groups) for t in group}
        order = {t: i for i, t in enumerate(tensors)}
        for name, target in tied.items():
            groups[group_of[target]].append(name)
        groups = [sorted(group, key=order.__getitem__) for group in groups]
    count = len(groups)
    names = [_shard_name(base, i + 1, count) for i in range(count)]
    shard_of = {t: names[i] for i, group in enumerate(groups) for t in group}

    index_meta: Dict[str, Any] = {"total_size": sum(n for _, n in sizes), "format": INDEX_FORMAT}
    if global_text is not None:
        index_meta["global_metadata"] = json.loads(global_text)

    def write_shard(i: int, shard_path: str) -> None:
        group = groups[i]
        pkg.save(
            shard_path,
            {t: tensors[t] for t in group},
            metadata={t: per_tensor[t] for t in group if t in per_tensor} or None,
            global_metadata=global_metadata,
            checksum=checksum,
            compress=compress,
            compress_level=compress_level,
        )

    def index_doc(shard_names: List[str]) -> Dict[str, Any]:
        where = dict(zip(names, shard_names))
        return {"metadata": index_meta, "weight_map": {t: where[shard_of[t]] for t in tensors}}

    return _commit_checkpoint(folder, base, names, write_shard, index_doc)


def _commit_checkpoint(
    folder: str,
    base: str,
    names: List[str],
    write_shard: Callable[[int, str], None],
    index_doc: Callable[[List[str]], Dict[str, Any]],
    suffix: str = SHARD_SUFFIX,
    index_suffix: str = INDEX_SUFFIX,
    inputs: Iterable[str] = (),
    unchanged: Optional[Callable[[], None]] = None,
) -> List[str]:
    """Write a sharded checkpoint crash-safely; return the shard paths.

    ``unchanged()``, when given, is called once the new shards are written,
    under the folder's lock, just before the index is: it raises when what
    the new checkpoint was made from has changed, and nothing is committed.

    ``inputs`` are the files a conversion reads: the cleanup at the end never
    removes them, even when they are named like shards of this checkpoint.

    ``write_shard(i, path)`` writes shard ``i`` (final name ``names[i]``,
    ``{base}-NNNNN-of-MMMMM{suffix}``) to ``path``; ``index_doc(shard_names)``
    is the index naming those files, written to ``{folder}/{base}{index_suffix}``
    (a safetensors export passes its own suffixes). The index is the
    commit point. The new shards are first written under names no index
    refers to ("pending" names carrying this save's token), then the index is
    switched to them in one rename, so a crash or an error leaves the old
    checkpoint or the new one, never a mix. Then each final name is replaced
    by a hard link to its pending shard and the index is switched again, to
    the final names. The token is the random part of a locked marker file (a
    temporary file of the shape the core's AtomicFile uses) that lives as
    long as this save: pending shards of a token whose marker is gone or
    unlocked belong to a dead save and are removed.
    """
    index_path = os.path.join(folder, base + index_suffix)
    marker_fd, marker = _locked_temp_file(folder, f".{base}.")
    token = os.path.basename(marker)[len(base) + 2 : -len(_TEMP_SUFFIX)]
    folder_lock: Optional[int] = None
    try:
        pending = [_pending_name(name, token, suffix) for name in names]
        written: List[str] = []
        try:
            for i, name in enumerate(pending):
                shard_path = os.path.join(folder, name)
                written.append(shard_path)
                write_shard(i, shard_path)
            # From the commit to the end of the cleanup, one save in this folder
            # at a time: two saves of one checkpoint with the same shard count
            # linked over each other's final names (a mix), and with different
            # counts each removed the other's shards, after which the index
            # named files that were gone.
            folder_lock = _lock_folder(folder)
            if unchanged is not None:
                unchanged()
            _write_json_atomically(index_path, index_doc(pending))
        except BaseException:
            for p in written:
                try:
                    _remove_quietly(p)
                except OSError:  # pragma: no cover - best effort
                    pass
            raise
        # The new checkpoint is committed (under the pending names).
        final = names
        try:
            for name, pend in zip(names, pending):
                _link_over(os.path.join(folder, pend), os.path.join(folder, name))
            _write_json_atomically(index_path, index_doc(names))
        except OSError:  # e.g. no hard links on this file system: keep the pending names
            final = pending
        protected = {os.path.realpath(p) for p in inputs}
        _remove_orphans(folder, base, set(final), token, suffix, protected)
        return [os.path.join(folder, n) for n in final]
    finally:
        if folder_lock is not None:
            os.close(folder_lock)  # releases the lock
        os.close(marker_fd)
        _remove_quietly(marker)


def _refuse_a_file_at(full: str, given: Any) -> None:
    """Refuse to save a checkpoint at a base path that is a single tensor
    file: wherever that path is read (the CLI, :func:`deathtensors.diff`,
    :meth:`Schema.validate`), the file would be taken for it and hide the
    checkpoint. A folder there is refused too: the command line takes the
    path for the folder, and a checkpoint is not written into it. Nothing is
    removed: the user says what goes."""
    if os.path.isdir(full):
        raise InvalidArgumentError(
            f"{os.fspath(given)!r} names a folder: a checkpoint's base path names its files, which go beside it; "
            f"give a base path inside the folder, e.g. {os.path.join(os.fspath(given), 'model')!r}"
        )
    if os.path.isfile(full):
        try:
            with open(full, "rb") as fh:
                is_tensor_file = fh.read(len(_MAGIC)) == _MAGIC
        except OSError:  # pragma: no cover - unreadable: not a file it would be taken for
            return
        if is_tensor_file:
            raise InvalidArgumentError(
                f"{os.fspath(given)!r} is a single .deathtensors file: a sharded checkpoint with that base path "
                "would be hidden by it wherever the path is read; remove it first or choose another path"
            )


def _shard_error(shard: str, e: DeathtensorsError, path: Optional[str] = None) -> DeathtensorsError:
    """``e`` (raised by the file of ``shard``, at ``path``) naming the shard, its path not repeated."""
    message = str(e)
    if path is not None and message.startswith(f"{path}: "):
        message = message[len(path) + 2 :]
    return type(e)(f"shard {shard!r}: {message}")


def _lock_folder(folder: str) -> int:
    """Open ``folder`` and wait for an exclusive ``flock`` on it; the caller closes the fd."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError:  # pragma: no cover - a file system without flock: go on unlocked
            pass
    return fd


def _pending_name(name: str, token: str, suffix: str = SHARD_SUFFIX) -> str:
    """``m-00001-of-00002.deathtensors`` -> ``m-00001-of-00002.<token>.deathtensors``."""
    return name[: -len(suffix)] + "." + token + suffix


def _link_over(src: str, dst: str) -> None:
    """Make ``dst`` a hard link to ``src`` by an atomic rename over ``dst``.

    The link's temporary name is a ``.dt-tmp`` file whose inode (``src``'s) we
    lock first, so a concurrent cleaner leaves it alone.
    """
    fd = os.open(src, os.O_RDONLY)
    try:
        if not _try_lock(fd):  # pragma: no cover - nobody else locks a committed shard
            raise OSError(errno.EAGAIN, "pending shard is locked", src)
        folder, name = os.path.split(dst)
        for _ in range(16):
            tmp = os.path.join(folder, f".{name}.{os.urandom(6).hex()}{_TEMP_SUFFIX}")
            try:
                os.link(src, tmp)
            except FileExistsError:  # pragma: no cover - 48 random bits
                continue
            try:
                os.replace(tmp, dst)
            except BaseException:
                _remove_quietly(tmp)
                raise
            return
        raise OSError(errno.EEXIST, "no free temporary name", dst)  # pragma: no cover
    finally:
        os.close(fd)


def _remove_orphans(folder: str, base: str, keep: Set[str], own_token: str, suffix: str, protected: Set[str]) -> None:
    """Remove the shards of ``base`` that the index just written does not name,
    except the ``protected`` files (real paths: a conversion's inputs).

    Those are final names with another shard count (an earlier save), this
    save's pending names, and pending names of saves that died (their marker
    is gone or unlocked). Pending shards of a save still running are kept.
    """
    final = re.compile(re.escape(base) + r"-\d{5,}-of-\d{5,}" + re.escape(suffix))
    pend = re.compile(re.escape(base) + r"-\d{5,}-of-\d{5,}\.([A-Za-z0-9_]+)" + re.escape(suffix))
    for entry in os.listdir(folder):
        if entry in keep or os.path.realpath(os.path.join(folder, entry)) in protected:
            continue
        if final.fullmatch(entry):
            _remove_quietly(os.path.join(folder, entry))
            continue
        m = pend.fullmatch(entry)
        if m is None:
            continue
        token = m.group(1)
        if token == own_token or not _is_held(os.path.join(folder, f".{base}.{token}{_TEMP_SUFFIX}")):
            _remove_quietly(os.path.join(folder, entry))


# -- reading ----------------------------------------------------------------------------------------


def _read_index(index_path: str, deathtensors: bool = False) -> Dict[str, Any]:
    """The index at ``index_path``, read and checked in Rust (``deathtensors::sharded``):
    ``{"metadata": {...}, "weight_map": {tensor: shard file name}}``, in file order.

    Every index must be a JSON object of at most :data:`MAX_INDEX_BYTES` bytes
    whose ``weight_map`` names plain files in the index's folder; with
    ``deathtensors=True`` its ``metadata`` must also be that of a deathtensors
    index (``format``, ``total_size``, ``global_metadata``).

    Raises:
        FormatError: the index breaks one of those rules.
        OSError: it cannot be read.
    """
    doc: Dict[str, Any] = json.loads(_core.read_sharded_index(index_path, MAX_INDEX_BYTES, deathtensors))
    return doc


def _resolve_index(path: str) -> str:
    return _core.resolve_sharded_index(path)


#: How many times opening a sharded checkpoint re-reads an index that was
#: replaced while its shards were being looked at.
_SNAPSHOT_TRIES = 5


def _file_state(path: str) -> Optional[Tuple[int, ...]]:
    """``(st_dev, st_ino, size, mtime_ns, ctime_ns)`` of the file ``path`` names now
    (links followed), or None if it is missing. The first two say which file it
    is; inode numbers are reused as soon as a file is deleted, so a replaced
    index can come back with its predecessor's inode, and then the size or
    times differ."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ShardedReader:
    """A lazily read sharded checkpoint (see :func:`open_sharded`).

    Opening reads and validates the index only (and notes which file each
    shard name holds). A shard is opened (its header read) the first time one
    of its tensors is asked for, and stays open until :meth:`close`;
    :meth:`opened_shards` tells which. The calls that read the whole
    checkpoint (:meth:`get_tensors`, :meth:`all_stats`, :meth:`verify`) open
    the shards not open yet one at a time and close each again, so they work
    on checkpoints of more shards than the process may hold files open.
    If the checkpoint is saved again in the meantime, shards already open keep
    reading the old version, and opening a shard that the new save replaced
    raises :class:`FormatError` instead of mixing the two versions. Use as a
    context manager.
    Safe to share between threads.
    """

    #: Whether each shard must be the very file its name held when the index
    #: was read. A save replaces shard files under the same names, so without
    #: this a shard opened later could come from a newer save than the index
    #: and the shards opened before it. (A subclass whose shards come from a
    #: pinned revision turns it off.)
    _pins_shard_files = True

    def __init__(self, path: PathLike, verify: bool = False) -> None:
        pkg = _pkg()
        self._index_path = os.path.abspath(_resolve_index(pkg.expand_path(path)))
        self._folder = os.path.dirname(self._index_path)
        self._verify_on_open = bool(verify)
        where = f"sharded index {self._index_path!r}"
        self._shard_ids: Dict[str, Optional[Tuple[int, int]]] = {}
        for _ in range(_SNAPSHOT_TRIES):
            # Saves replace the index, never rewrite it in place: if it is the same
            # file before and after, the shards seen in between belong to that index.
            index_state = _file_state(self._index_path)
            doc = _read_index(self._index_path, deathtensors=True)
            if not self._pins_shard_files:
                break
            names = set(doc["weight_map"].values())
            states = {s: _file_state(os.path.join(self._folder, s)) for s in names}
            self._shard_ids = {s: (st[0], st[1]) if st else None for s, st in states.items()}
            if _file_state(self._index_path) == index_state:
                break
        else:
            raise FormatError(f"{where} was replaced {_SNAPSHOT_TRIES} times while it was being opened")

        self._index_meta: Dict[str, Any] = doc["metadata"]
        self._weight_map: Dict[str, str] = doc["weight_map"]
        by_shard: Dict[str, List[str]] = {}
        for tensor, shard in self._weight_map.items():
            by_shard.setdefault(shard, []).append(tensor)
        self._by_shard = by_shard
        self._open: Dict[str, DtFile] = {}
        # Shards whose footer this reader has checked (each is hashed once, even
        # when a whole-checkpoint read opens and closes it again).
        self._verified: Set[str] = set()
        self._lock = threading.Lock()
        self._closed = False

    # -- context management -------------------------------------------------
    def __enter__(self) -> ShardedReader:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Close every opened shard; later reads raise ValueError."""
        with self._lock:
            self._closed = True
            files, self._open = list(self._open.values()), {}
        for f in files:
            f.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    @property
    def path(self) -> str:
        """The absolute path of the index."""
        return self._index_path

    @property
    def folder(self) -> str:
        """The folder holding the index and every shard."""
        return self._folder

    # -- index ----------------------------------------------------------------
    def keys(self) -> List[str]:
        """Tensor names, in index (saved) order."""
        return list(self._weight_map)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._weight_map)

    def __contains__(self, name: object) -> bool:
        return name in self._weight_map

    def which_shard(self, name: str) -> str:
        """The file name (not the path) of the shard holding ``name``."""
        try:
            return self._weight_map[name]
        except (KeyError, TypeError):
            raise TensorNotFoundError(f"no tensor named {name!r} in {self._index_path}") from None

    def shards(self) -> List[str]:
        """Every shard file name the index refers to, sorted."""
        return sorted(self._by_shard)

    def shard_path(self, shard: str) -> str:
        """The path of a shard named by the index (``os.path.join(folder, shard)``)."""
        if shard not in self._by_shard:
            raise InvalidArgumentError(f"{shard!r} is not a shard of {self._index_path}")
        return os.path.join(self._folder, shard)

    def open_shard(self, shard: str) -> DtFile:
        """Open one shard by file name (once; later calls return the same :class:`DtFile`).

        The reader owns it and closes it in :meth:`close`. The Hub reader
        downloads it first.

        Raises:
            InvalidArgumentError: ``shard`` is not named by the index.
        """
        if shard not in self._by_shard:
            raise InvalidArgumentError(f"{shard!r} is not a shard of {self._index_path}")
        return self._shard(shard)

    def opened_shards(self) -> List[str]:
        """File names of the shards opened so far (and not yet closed), sorted."""
        with self._lock:
            return sorted(self._open)

    def metadata(self) -> Dict[str, Any]:
        """The global metadata given to :func:`save_sharded` (``{}`` if none)."""
        return json.loads(json.dumps(self._index_meta.get("global_metadata", {})))

    def index_metadata(self) -> Dict[str, Any]:
        """The index's whole ``metadata`` object (``total_size``, ``format``, ``global_metadata``...)."""
        return json.loads(json.dumps(self._index_meta))

    @property
    def total_size(self) -> Optional[int]:
        """``metadata.total_size`` from the index: the raw bytes stored (``None`` if absent)."""
        return self._index_meta.get("total_size")

    # -- shards -----------------------------------------------------------------
    def _shard(self, shard: str) -> DtFile:
        with self._lock:
            if self._closed:
                raise ValueError("I/O operation on a closed deathtensors ShardedReader")
            f = self._open.get(shard)
            if f is not None:
                return f
            f = self._open_shard(shard, self._verify_on_open)
            self._open[shard] = f
            return f

    def _shard_file(self, shard: str) -> str:
        """The local path of a shard, about to be opened (a subclass may fetch it first)."""
        return os.path.join(self._folder, shard)

    def _open_shard(self, shard: str, verify: bool) -> DtFile:
        pkg = _pkg()
        path = self._shard_file(shard)
        try:
            f = pkg.DtFile._at(path)  # the index's name, as it is ("$HOME" is a name like any other)
        except FileNotFoundError:
            raise FileNotFoundError(
                errno.ENOENT, f"shard {shard!r} named by {self._index_path!r} is missing", path
            ) from None
        except DeathtensorsError as e:
            raise _shard_error(shard, e, path) from e
        try:
            if self._pins_shard_files and f._reader.file_identity() != self._shard_ids.get(shard):
                raise FormatError(
                    f"shard {shard!r} was replaced after {self._index_path!r} was opened (the checkpoint "
                    "was saved again); open the checkpoint again to read the new version"
                )
            missing = [t for t in self._by_shard.get(shard, []) if t not in f]
            if missing:
                raise FormatError(
                    f"shard {shard!r} lacks tensors the index {self._index_path!r} places there: {missing[:10]}"
                )
            if verify and shard not in self._verified:
                try:
                    f.verify()
                except ChecksumError as e:
                    raise _shard_error(shard, e) from e
                self._verified.add(shard)
        except BaseException:
            f.close()
            raise
        return f

    @contextlib.contextmanager
    def _visit(self, shard: str, verify: bool) -> Iterator[DtFile]:
        """The shard's :class:`DtFile`: the cached one if it is open, else one
        opened for this visit only (checked as :meth:`_open_shard` does) and
        closed when the visit ends."""
        with self._lock:
            if self._closed:
                raise ValueError("I/O operation on a closed deathtensors ShardedReader")
            cached = self._open.get(shard)
        if cached is not None:
            yield cached
            return
        f = self._open_shard(shard, verify)
        try:
            yield f
        finally:
            f.close()

    def _entry_shard(self, name: str) -> DtFile:
        return self._shard(self.which_shard(name))

    @contextlib.contextmanager
    def _reading(self, shard: str) -> Iterator[None]:
        """A format or checksum error of a read from ``shard`` names it (a
        damaged chunk says which tensor, not which file)."""
        try:
            yield
        except (FormatError, ChecksumError) as e:
            if str(e).startswith("shard "):
                raise
            raise _shard_error(shard, e) from e

    def _from_shard(self, name: str, read: Callable[[DtFile], Any]) -> Any:
        """``read`` of the :class:`DtFile` of ``name``'s shard, its errors naming the shard."""
        f = self._entry_shard(name)
        with self._reading(self._weight_map[name]):
            return read(f)

    # -- data -------------------------------------------------------------------
    def info(self, name: str) -> Dict[str, Any]:
        """:meth:`DtFile.info` of ``name`` plus ``"shard"`` (its file name). Opens that shard."""
        out = self._entry_shard(name).info(name)
        out["shard"] = self._weight_map[name]
        return out

    def get_tensor(self, name: str, framework: str = "torch", device: Any = None) -> Any:
        """Read one tensor (``framework="torch"`` or ``"numpy"``), opening only its shard.

        ``device`` is as in :meth:`DtFile.get_tensor`."""
        target_device(device, framework)  # a bad device fails before the shard is opened
        return self._from_shard(name, lambda f: f.get_tensor(name, framework, device))

    def get_bytes(self, name: str) -> bytes:
        """:meth:`DtFile.get_bytes` of ``name``, opening only its shard."""
        return self._from_shard(name, lambda f: f.get_bytes(name))

    def is_sparse(self, name: str) -> bool:
        """Whether ``name`` is a sparse tensor. Opens its shard."""
        return self._entry_shard(name).is_sparse(name)

    def get_tensor_mmap(self, name: str, framework: str = "torch") -> Any:
        """:meth:`DtFile.get_tensor_mmap` of ``name`` (zero-copy, uncompressed shards only)."""
        return self._from_shard(name, lambda f: f.get_tensor_mmap(name, framework))

    def get_tensor_slice(self, name: str, start: int, count: int, framework: str = "torch", device: Any = None) -> Any:
        """:meth:`DtFile.get_tensor_slice`: rows ``[start, start + count)``, reading only those rows of its shard."""
        target_device(device, framework)  # a bad device fails before the shard is opened
        return self._from_shard(name, lambda f: f.get_tensor_slice(name, start, count, framework, device))

    def get_slice(self, name: str, framework: str = "torch", device: Any = None) -> TensorSlice:
        """:meth:`DtFile.get_slice`: a lazy handle, ``sr.get_slice(name)[a:b]`` reads only rows ``a..b``."""
        target_device(device, framework)  # a bad device fails before the shard is opened
        return self._entry_shard(name).get_slice(name, framework, device)

    def stats(self, name: str) -> Dict[str, Any]:
        """:meth:`DtFile.stats` of ``name`` (computed in Rust, no tensor created). Opens its shard."""
        return self._from_shard(name, lambda f: f.stats(name))

    def all_stats(self) -> Dict[str, Dict[str, Any]]:
        """:meth:`stats` of every tensor, in index order (each shard in one parallel pass).

        Shards not open yet are opened one at a time and closed again."""
        got: Dict[str, Dict[str, Any]] = {}
        for shard in self.shards():
            with self._visit(shard, self._verify_on_open) as f, self._reading(shard):
                stats = f.all_stats()
            got.update((t, stats[t]) for t in self._by_shard[shard])  # only what the index places here
        return {t: got[t] for t in self._weight_map}

    def get_tensors(self, framework: str = "torch", device: Any = None) -> Dict[str, Any]:
        """Every tensor, in index order (each shard read in parallel by the Rust core).

        Shards not open yet are opened one at a time and closed again (the
        tensors own their memory and outlive the file). ``device`` is as in
        :meth:`DtFile.get_tensors`: tensors are read and moved one at a time."""
        target_device(device, framework)  # a bad device fails before any shard is read
        got: Dict[str, Any] = {}
        for shard in self.shards():
            wanted = self._by_shard[shard]
            with self._visit(shard, self._verify_on_open) as f, self._reading(shard):
                if set(f.keys()) == set(wanted):
                    got.update(f.get_tensors(framework, device))
                else:
                    for t in wanted:
                        got[t] = f.get_tensor(t, framework, device)
        return {t: got[t] for t in self._weight_map}

    def verify(self) -> bool:
        """Verify every shard's checksum footer and the index against the shards; returns ``True``.

        Checks that each shard holds the tensors the index places there, and
        no others, and that ``metadata.total_size`` (when present) equals their raw bytes as
        :func:`deathtensors.save_sharded` counts them: a sparse tensor's
        indices included, a second name of a tied weight not.
        Shards not opened yet are opened one at a time and closed again, so a
        checkpoint of any number of shards holds at most one more file open.

        Raises:
            ChecksumError: a shard's contents do not match its footer (the
                message names the shard).
            NoChecksumError: a shard has no footer (named likewise).
            FormatError: a shard is malformed or disagrees with the index.
            FileNotFoundError: a shard is missing.
        """
        total = 0
        for shard in self.shards():
            with self._visit(shard, False) as f:
                try:
                    f.verify()
                except ChecksumError as e:
                    raise _shard_error(shard, e) from e
                self._verified.add(shard)
                total += f._reader.stored_nbytes(self._by_shard[shard])
        declared = self.total_size
        if declared is not None and declared != total:
            raise FormatError(
                f"sharded index {self._index_path!r} says total_size={declared} but its tensors hold {total} bytes"
            )
        return True

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{len(self)} tensors in {len(self._by_shard)} shards"
        return f"<deathtensors.ShardedReader {self._index_path!r} ({state})>"


def open_sharded(index_path: PathLike, verify: bool = False) -> ShardedReader:
    """Open a sharded checkpoint lazily: ``with deathtensors.open_sharded(index_path) as sr:``.

    ``index_path`` is the index (``big_model.deathtensors.index.json``, or any
    ``.json`` file) or the base path given to :func:`save_sharded`
    (``big_model.deathtensors`` finds ``big_model.deathtensors.index.json``).
    With ``verify=True`` each shard's checksum footer is checked when that
    shard is first opened (a shard without one raises
    :class:`NoChecksumError`); call :meth:`ShardedReader.verify` to check
    them all now.

    Raises:
        FileNotFoundError: no index at ``index_path``. A missing shard raises it
            later, when one of its tensors is read.
        FormatError: the index is not valid JSON, is over
            :data:`MAX_INDEX_BYTES`, or names a shard that is not a plain file
            name in the index's folder (the message names the entry).
    """
    return ShardedReader(index_path, verify=verify)
