"""Conversion to and from Hugging Face ``.safetensors``, single files and sharded checkpoints.

The conversion itself is the ``safetensors`` converter plugin in Rust (the GIL
is released while it runs): it streams tensor by tensor, is bit-exact for every
dtype both formats share, and keeps JSON metadata in reserved safetensors
metadata keys (see ``docs/conversion.md``). This module picks paths and handles
sharded checkpoints, converting one shard at a time so that memory stays
bounded by the largest tensor.

Sharded checkpoints::

    model-00001-of-00002.safetensors          model-00001-of-00002.deathtensors
    model-00002-of-00002.safetensors   <->    model-00002-of-00002.deathtensors
    model.safetensors.index.json              model.deathtensors.index.json

The Hugging Face index is ``{"metadata": {"total_size": N}, "weight_map":
{tensor: shard file}}``; the deathtensors index is the one
:func:`deathtensors.save_sharded` writes (see ``_sharded``). Shard ``k`` of the
output is the ``k``-th shard file name of the input in sorted order; the
output index lists the tensors in the input index's order.
"""

from __future__ import annotations

import errno
import operator
import os
import sys
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from . import _core
from ._sharded import (
    INDEX_FORMAT,
    INDEX_SUFFIX,
    _commit_checkpoint,
    _read_index,
    _refuse_a_file_at,
    _remove_quietly,
    _shard_error,
    _shard_name,
    _split_stem,
)
from .errors import DeathtensorsError, FormatError, InvalidArgumentError, PluginError

__all__ = ["from_safetensors", "to_safetensors", "repack", "SAFETENSORS_INDEX_SUFFIX"]

PathLike = Union[str, "os.PathLike[str]"]

#: The converter plugin id.
_CONVERTER = "safetensors"
#: Extension of a safetensors file.
SAFETENSORS_SUFFIX = ".safetensors"
#: What Hugging Face appends to the stem to name a sharded checkpoint's index.
SAFETENSORS_INDEX_SUFFIX = ".safetensors.index.json"
_DT_SUFFIXES = (".deathtensors", ".dt")
#: What a given ``dst`` of a sharded conversion may end with: its base path is what remains.
_CHECKPOINT_SUFFIXES = (
    SAFETENSORS_INDEX_SUFFIX,
    INDEX_SUFFIX,
    ".dt.index.json",
    ".index.json",
    SAFETENSORS_SUFFIX,
    *_DT_SUFFIXES,
)


def _pkg() -> Any:
    # The package imports this module while it initialises.
    return sys.modules[__name__.rpartition(".")[0]]


def _strip(path: str, suffixes: tuple) -> str:
    for s in suffixes:
        if path.endswith(s) and len(path) > len(s):
            return path[: -len(s)]
    return path


def _check_level(level: Any) -> Optional[int]:
    """A ``compress_level`` argument as an int (numpy integers too), or None.

    Only the type and the range any codec could take are checked here; each
    codec checks its own range when it is chosen.
    """
    if level is None:
        return None
    if isinstance(level, bool):
        raise InvalidArgumentError(f"compress_level must be an integer or None, not {level!r}")
    try:
        level = operator.index(level)
    except TypeError:
        raise InvalidArgumentError(f"compress_level must be an integer or None, not {level!r}") from None
    if not -(2**31) <= level < 2**31:
        raise InvalidArgumentError(f"compress_level {level} is out of range for any codec")
    return int(level)


# -- finding an index ----------------------------------------------------------------------------


def _safetensors_index(path: str) -> Optional[str]:
    """The Hugging Face index ``path`` names, or ``None`` when it names a single file."""
    return _core.foreign_index(path, _CONVERTER)  # the rule the CLI follows too


def _index_stem(index_path: str) -> str:
    """``dir/model`` for ``dir/model.safetensors.index.json`` or ``dir/model.deathtensors.index.json``."""
    return _strip(index_path, (SAFETENSORS_INDEX_SUFFIX, INDEX_SUFFIX, ".dt.index.json", ".index.json", ".json"))


def _out_stem(dst: Optional[PathLike], default: str, suffixes: tuple) -> tuple:
    stem = _strip(_pkg().expand_path(dst), suffixes) if dst is not None else default
    folder, base = _split_stem(stem, default if dst is None else dst, "destination")
    return stem, folder, base


def _outputs(
    index_path: str, dst: Optional[PathLike], weight_map: Dict[str, str]
) -> Tuple[str, str, str, Dict[str, List[str]], Dict[str, str]]:
    """Where a sharded conversion or repack of the checkpoint indexed at
    ``index_path`` writes: ``(stem, folder, base, tensors by input shard,
    output shard name by input shard)``, input shards in sorted order
    (``dst``, a base path, checked first)."""
    if dst is not None:
        _refuse_a_file_at(_pkg().expand_path(dst), dst)
    stem, folder, base = _out_stem(dst, _index_stem(index_path), _CHECKPOINT_SUFFIXES)
    by_shard: Dict[str, List[str]] = {}
    for tensor, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(tensor)
    shards = sorted(by_shard)
    names = {shard: _shard_name(base, i + 1, len(shards)) for i, shard in enumerate(shards)}
    return stem, folder, base, by_shard, names


def _version(path: str) -> Optional[tuple]:
    """What changes when the file at ``path`` is replaced or rewritten (its
    inode, size and times), or ``None`` when it is gone."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _refuse_overwriting_inputs(inputs: List[str], outputs: List[str], what: str = "the conversion") -> None:
    """Refuse a sharded conversion that would write one of its outputs over one
    of its inputs (the index or a shard, symbolic links followed), before
    anything is written: the input would be lost halfway through."""
    real = {os.path.realpath(p): p for p in inputs}
    for out in outputs:
        hit = real.get(os.path.realpath(out))
        if hit is not None:
            raise InvalidArgumentError(f"{what} would write {out!r} over its own input {hit!r}; give another dst")


def _check_shard_keys(keys: List[str], expected: List[str], shard: str, where: str) -> None:
    have, want = set(keys), set(expected)
    if have != want:
        missing = sorted(want - have)[:10]
        extra = sorted(have - want)[:10]
        raise FormatError(
            f"shard {shard!r} does not hold the tensors {where} places there "
            f"(missing: {missing}, not in the index: {extra})"
        )


# -- safetensors -> deathtensors -----------------------------------------------------------------


def from_safetensors(
    src: PathLike,
    dst: Optional[PathLike] = None,
    checksum: Union[bool, str] = True,
    compress: Union[bool, str] = False,
    compress_level: Optional[int] = None,
) -> str:
    """Convert a ``.safetensors`` file (or a sharded Hugging Face checkpoint) to ``.deathtensors``.

    Tensors are copied bit for bit, one at a time, from a memory map of the
    source; global metadata comes back as written by :func:`to_safetensors`
    (JSON values and per-tensor metadata included), and plain safetensors
    metadata (``{"format": "pt"}``) becomes string metadata.

    ``src`` may be a sharded checkpoint: its index (``model.safetensors.index.json``)
    or the base path whose index exists (``model.safetensors`` or ``model``
    when only the index and shards are there). Each shard then becomes a
    ``.deathtensors`` shard (``{stem}-00001-of-000NN.deathtensors``) and a
    deathtensors index ``{stem}.deathtensors.index.json`` is written last, as
    :func:`deathtensors.save_sharded` does; it opens with
    :func:`deathtensors.open_sharded`.

    Args:
        src: The ``.safetensors`` file or index (``~`` and ``$VARS`` are expanded).
        dst: The ``.deathtensors`` file to write (replaced atomically), or for a
            sharded checkpoint its base path. Default: ``src`` with
            ``.deathtensors`` in place of ``.safetensors`` (for a checkpoint,
            the index's stem in the index's folder).
        checksum: ``True`` (SHA-256 footer, the default), ``False``, or an
            algorithm id (``"blake3"``).
        compress: ``False`` (default), ``True`` (zstd) or a codec id (``"lz4"``).
        compress_level: The codec level (default: the codec's).

    Returns:
        The path written: the file, or the deathtensors index of a checkpoint.

    Raises:
        FormatError: ``src`` is not a valid safetensors file (or index), or has
            malformed reserved metadata.
        UnsupportedDtypeError: ``src`` holds a dtype deathtensors lacks (``F8_E8M0``...).
        FileNotFoundError: ``src`` (or a shard) does not exist.
        PluginError: an unknown codec or checksum id.
        InvalidArgumentError: ``dst`` is ``src`` itself (symbolic links
            followed), or an output of a sharded conversion would replace one
            of its inputs; nothing is written.
    """
    pkg = _pkg()
    codec, level, algorithm = _import_options(checksum, compress, compress_level)
    source = pkg.expand_path(src)
    index = _safetensors_index(source)
    if index is not None:
        return _import_sharded(index, dst, codec, level, algorithm)
    if dst is not None:
        out = pkg.expand_path(dst)
    else:
        out = _strip(source, (SAFETENSORS_SUFFIX,)) + ".deathtensors"
    _core.import_foreign(_CONVERTER, source, out, codec, level, algorithm)
    return out


def _import_options(
    checksum: Union[bool, str], compress: Union[bool, str], compress_level: Optional[int]
) -> Tuple[Optional[str], Optional[int], Optional[str]]:
    """``(codec, level, checksum algorithm)`` of :func:`from_safetensors`'s arguments, checked."""
    pkg = _pkg()
    codec = pkg._choose(compress, pkg.DEFAULT_CODEC, "compress")
    algorithm = pkg._choose(checksum, pkg.DEFAULT_CHECKSUM, "checksum")
    return codec, _check_level(compress_level), algorithm


def _import_sharded(
    index_path: str,
    dst: Optional[PathLike],
    codec: Optional[str],
    level: Optional[int],
    algorithm: Optional[str],
    convert_shard: Optional[Callable[[str, str], None]] = None,
) -> str:
    """Convert the safetensors checkpoint whose index is ``index_path``.

    ``convert_shard(shard, out)`` writes the shard named ``shard`` in the index
    to the ``.deathtensors`` file ``out``; by default it converts the shard
    file beside the index (the Hub conversion streams it from the Hub instead)."""
    pkg = _pkg()
    where = f"safetensors index {index_path!r}"
    weight_map: Dict[str, str] = _read_index(index_path)["weight_map"]
    folder = os.path.dirname(index_path) or "."
    stem, out_folder, base, by_shard, names = _outputs(index_path, dst, weight_map)
    shards = list(names)
    out_index = stem + INDEX_SUFFIX
    inputs = [index_path, *(os.path.join(folder, s) for s in shards)]
    _refuse_overwriting_inputs(inputs, [out_index, *(os.path.join(out_folder, n) for n in names.values())])

    # Crash safe like save_sharded: a failure (a corrupt source shard, say) or a
    # crash leaves an earlier conversion at this path as it was.
    order = [names[s] for s in shards]
    total = 0
    global_metadata: List[Dict[str, Any]] = []

    def write_shard(i: int, out: str) -> None:
        nonlocal total
        shard = shards[i]
        try:
            if convert_shard is not None:
                convert_shard(shard, out)
            else:
                shard_path = os.path.join(folder, shard)
                if not os.path.exists(shard_path):
                    raise FileNotFoundError(
                        errno.ENOENT, f"shard {shard!r} named by {index_path!r} is missing", shard_path
                    )
                _core.import_foreign(_CONVERTER, shard_path, out, codec, level, algorithm)
        except FormatError as e:
            raise FormatError(f"shard {shard!r}: {e}") from e
        with pkg.DtFile._at(out) as f:
            _check_shard_keys(f.keys(), by_shard[shard], shard, where)
            total += sum(int(f.info(t)["nbytes"]) for t in f.keys())
            global_metadata.append(f.metadata())

    def index_doc(shard_names: List[str]) -> Dict[str, Any]:
        renamed = dict(zip(order, shard_names))
        index_meta: Dict[str, Any] = {"total_size": total, "format": INDEX_FORMAT}
        if global_metadata and global_metadata[0] and all(g == global_metadata[0] for g in global_metadata):
            index_meta["global_metadata"] = global_metadata[0]
        return {"metadata": index_meta, "weight_map": {t: renamed[names[s]] for t, s in weight_map.items()}}

    _commit_checkpoint(out_folder, base, order, write_shard, index_doc, inputs=inputs)
    return out_index


# -- deathtensors -> safetensors -----------------------------------------------------------------


def to_safetensors(src: PathLike, dst: Optional[PathLike] = None) -> str:
    """Convert a ``.deathtensors`` file (or a sharded checkpoint) to ``.safetensors``.

    Tensors are decoded one at a time (compressed files too) and written bit
    for bit; the result loads with ``safetensors.torch.load_file``. Global
    metadata strings are kept as is; other JSON values, per-tensor metadata
    and the tensor order travel in reserved metadata keys that
    :func:`from_safetensors` reads back (see ``docs/conversion.md``). A second
    name of a tensor (tied weights) is written as a tensor of its own.

    ``src`` may be a sharded checkpoint written by
    :func:`deathtensors.save_sharded`: its index or base path. Each shard then
    becomes ``{stem}-0000k-of-0000n.safetensors`` and a Hugging Face index
    ``{stem}.safetensors.index.json`` is written last.

    Args:
        src: The ``.deathtensors`` file or index (``~`` and ``$VARS`` are expanded).
        dst: The ``.safetensors`` file to write (replaced atomically), or for a
            sharded checkpoint its base path. Default: ``src`` with
            ``.safetensors`` in place of ``.deathtensors``.

    Returns:
        The path written: the file, or the Hugging Face index of a checkpoint.

    Raises:
        InvalidArgumentError: a tensor safetensors cannot hold: a ``C128``
            or sparse tensor, or one named ``__metadata__``;
            a global metadata key that is reserved (the message names it).
        FormatError, ChecksumError: ``src`` is not a valid deathtensors file.
        FileNotFoundError: ``src`` (or a shard) does not exist.
        InvalidArgumentError: (also) ``dst`` is ``src`` itself, or an output
            of a sharded conversion would replace one of its inputs.
    """
    pkg = _pkg()
    source = pkg.expand_path(src)
    index = _core.checkpoint_index(source)  # the rule the CLI follows too
    if index is not None:
        return _export_sharded(index, dst)
    out = pkg.expand_path(dst) if dst is not None else _strip(source, _DT_SUFFIXES) + SAFETENSORS_SUFFIX
    _core.export_foreign(_CONVERTER, source, out)
    return out


def _export_sharded(index_path: str, dst: Optional[PathLike]) -> str:
    pkg = _pkg()
    with pkg.open_sharded(index_path) as sr:
        where = f"sharded index {sr.path!r}"
        weight_map = {t: sr.which_shard(t) for t in sr.keys()}
        by_shard: Dict[str, List[str]] = {}
        for tensor, shard in weight_map.items():
            by_shard.setdefault(shard, []).append(tensor)
        shards = sr.shards()
        stem, out_folder, base = _out_stem(dst, _index_stem(sr.path), _CHECKPOINT_SUFFIXES)
        names = {
            shard: f"{base}-{i + 1:05d}-of-{len(shards):05d}{SAFETENSORS_SUFFIX}" for i, shard in enumerate(shards)
        }
        out_index = stem + SAFETENSORS_INDEX_SUFFIX
        inputs = [sr.path, *(sr.shard_path(s) for s in shards)]
        _refuse_overwriting_inputs(inputs, [out_index, *(os.path.join(out_folder, n) for n in names.values())])
        # Crash safe like save_sharded: a failure or a crash leaves an earlier
        # export at this path as it was.
        order = [names[s] for s in shards]
        total = 0

        def write_shard(i: int, out: str) -> None:
            nonlocal total
            shard = shards[i]
            shard_path = sr.shard_path(shard)
            if not os.path.exists(shard_path):
                raise FileNotFoundError(errno.ENOENT, f"shard {shard!r} named by {sr.path!r} is missing", shard_path)
            try:
                with pkg.DtFile._at(shard_path) as f:
                    _check_shard_keys(f.keys(), by_shard[shard], shard, where)
                    total += sum(int(f.info(t)["nbytes"]) for t in f.keys())
                _core.export_foreign(_CONVERTER, shard_path, out)
            except DeathtensorsError as e:
                if str(e).startswith("shard "):
                    raise
                raise _shard_error(shard, e, shard_path) from e

        def index_doc(shard_names: List[str]) -> Dict[str, Any]:
            renamed = dict(zip(order, shard_names))
            return {
                "metadata": {"total_size": total},
                "weight_map": {t: renamed[names[s]] for t, s in weight_map.items()},
            }

        _commit_checkpoint(
            out_folder,
            base,
            order,
            write_shard,
            index_doc,
            suffix=SAFETENSORS_SUFFIX,
            index_suffix=SAFETENSORS_INDEX_SUFFIX,
            inputs=inputs,
        )
    return out_index


# -- deathtensors -> deathtensors (repack) --------------------------------------------------------


def _setting(value: Union[bool, str, None], default: str, what: str) -> Tuple[bool, Optional[str]]:
    """``(given, id)`` of a :func:`repack` setting: ``None`` keeps the source's
    (not given), ``False`` is none, ``True`` the default plugin, a string its id."""
    if value is None:
        return False, None
    return True, _pkg()._choose(value, default, what)


def repack(
    src: PathLike,
    dst: Optional[PathLike] = None,
    *,
    compress: Union[bool, str, None] = None,
    compress_level: Optional[int] = None,
    checksum: Union[bool, str, None] = None,
    durable: bool = True,
) -> str:
    """Rewrite a ``.deathtensors`` file (or a sharded checkpoint) with another
    compression or checksum, keeping everything else.

    Tensors, their order, per-tensor and global metadata, tied weights and
    sparse tensors come out as they went in. Only what is asked changes: a
    setting left at ``None`` keeps the source's. Tensors whose stored form
    stays the same (same codec and level) are copied as stored; the others are
    decoded and encoded again a chunk at a time, in Rust with the GIL released,
    so memory stays at a few MiB per core whatever the file's size. A source
    with a checksum footer is verified (one more read of it, alongside the
    write) before the new file replaces ``dst``, so the new footer never
    vouches for damaged bytes.

    Typical uses: ``repack("m.deathtensors", compress=True)`` compresses a file
    in place; ``repack("m.deathtensors", "fast.deathtensors", compress=False)``
    writes an uncompressed copy that :meth:`DtFile.get_tensor_mmap` can map;
    ``repack(path, checksum="blake3")`` adds or changes the footer.

    Args:
        src: The ``.deathtensors`` file, or a sharded checkpoint (its index or
            base path); ``~`` and ``$VARS`` are expanded.
        dst: Where to write it (replaced atomically), or for a checkpoint its
            base path. Default: ``src`` itself, replaced atomically (a crash
            leaves the old file or the new one); a checkpoint's new shards
            get ``save_sharded``'s names, and old shards of other names in
            its folder are removed once the new index is written. A repack
            waits for appends to the file in progress, and they for it.
        compress: ``None`` (keep), ``False`` (store raw), ``True`` (zstd) or a
            codec id (``"lz4"``).
        compress_level: The codec level. Default: the source's when its codec
            is kept, otherwise the codec's default.
        checksum: ``None`` (keep), ``False`` (no footer), ``True`` (SHA-256) or
            an algorithm id (``"blake3"``).
        durable: fsync the result before returning (default), as :func:`save`.

    Returns:
        The path written: the file, or the index of a checkpoint.

    Raises:
        ChecksumError: the source's footer does not match its contents;
            nothing is written.
        FormatError: the source is not a valid deathtensors file (or a shard
            is not), or a chunk of it does not decode.
        InvalidArgumentError: a level without a codec, or one the codec refuses.
        PluginError: an unknown codec or checksum id.
        FileNotFoundError: ``src`` (or a shard) does not exist.
    """
    pkg = _pkg()
    codec = _setting(compress, pkg.DEFAULT_CODEC, "compress")
    algorithm = _setting(checksum, pkg.DEFAULT_CHECKSUM, "checksum")
    level = _check_level(compress_level)
    source = pkg.expand_path(src)
    index = _core.checkpoint_index(source)  # the rule the CLI follows too

    def write(path: str, out: str) -> None:
        _core.repack(path, out, codec[0], codec[1], level, algorithm[0], algorithm[1], bool(durable))

    if index is not None:
        return _repack_sharded(index, dst, write)
    out = pkg.expand_path(dst) if dst is not None else source
    write(source, out)
    return out


def _repack_sharded(index_path: str, dst: Optional[PathLike], write: Callable[[str, str], None]) -> str:
    """:func:`repack` of the checkpoint whose index is ``index_path``: every
    shard repacked by ``write(shard_path, out)``, then the index, crash-safely
    as :func:`deathtensors.save_sharded` writes (in place too: the old shards
    are replaced only once every new one is written)."""
    pkg = _pkg()
    # Taken before the index is read: a save of the checkpoint that commits
    # while the repack reads it changes the index first, then its shards.
    version = _version(index_path)
    doc = _read_index(index_path, deathtensors=True)
    weight_map: Dict[str, str] = doc["weight_map"]
    folder = os.path.dirname(index_path) or "."
    stem, out_folder, base, by_shard, names = _outputs(index_path, dst, weight_map)
    shards = list(names)
    order = [names[s] for s in shards]
    where = f"sharded index {index_path!r}"

    def unchanged() -> None:
        if _version(index_path) != version:
            raise FormatError(
                f"the checkpoint {index_path!r} was saved again while it was repacked; nothing was written "
                "(repack it again to repack the new version)"
            )

    def write_shard(i: int, out: str) -> None:
        shard = shards[i]
        shard_path = os.path.join(folder, shard)
        # A shard that is gone or not what the index says may be a save of
        # the checkpoint since the index was read: ``unchanged`` says so first.
        if not os.path.exists(shard_path):
            unchanged()
            raise FileNotFoundError(errno.ENOENT, f"shard {shard!r} named by {index_path!r} is missing", shard_path)
        try:
            write(shard_path, out)
            with pkg.DtFile._at(out) as f:
                _check_shard_keys(f.keys(), by_shard[shard], shard, where)
        except FileNotFoundError:
            unchanged()
            raise
        except (PluginError, InvalidArgumentError):
            raise  # the arguments' fault (an unknown codec, a level it refuses), not the shard's
        except DeathtensorsError as e:
            unchanged()
            if str(e).startswith("shard "):
                raise
            raise _shard_error(shard, e, shard_path) from e

    def index_doc(shard_names: List[str]) -> Dict[str, Any]:
        renamed = dict(zip(order, shard_names))
        return {"metadata": doc["metadata"], "weight_map": {t: renamed[names[s]] for t, s in weight_map.items()}}

    inputs = [index_path, *(os.path.join(folder, s) for s in shards)]
    new_index = stem + INDEX_SUFFIX
    in_place = os.path.realpath(new_index) == os.path.realpath(index_path)
    if not in_place:
        outputs = [new_index, *(os.path.join(out_folder, n) for n in order)]
        _refuse_overwriting_inputs(inputs, outputs, "the repack")
    written = _commit_checkpoint(out_folder, base, order, write_shard, index_doc, inputs=inputs, unchanged=unchanged)
    if in_place:
        # In place: old shards under other names than the new ones (named by
        # hand, or for another base) are no longer named by the index, which
        # the repack replaced. Only files in the checkpoint's folder go.
        kept = {os.path.realpath(p) for p in written}
        home = os.path.realpath(out_folder)
        for old in inputs[1:]:
            real = os.path.realpath(old)
            if real not in kept and os.path.dirname(real) == home:
                _remove_quietly(old)
    return new_index
