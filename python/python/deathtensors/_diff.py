"""Comparing two ``.deathtensors`` files: :func:`diff`."""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Union

from . import _core

PathLike = Union[str, "os.PathLike[str]"]


def diff(path_a: PathLike, path_b: PathLike, rtol: float = 0.0, atol: float = 0.0) -> Dict[str, Any]:
    """Compare two files (or sharded checkpoints) tensor by tensor, in Rust, without loading whole tensors.

    Values are read in windows of a few MiB from both files (decoding only the
    chunks each window covers), tensors and windows in parallel, with the GIL
    released; windows whose bytes are equal are skipped at ``memcmp`` speed.
    Decoded bytes are compared, so a compressed and an uncompressed file, or
    two chunkings, of the same tensors are identical. Codec, chunking,
    checksum, tensor order and aliasing (an alias compares by its values) are
    not compared.

    Either side may be a sharded checkpoint, named by its index (a path
    ending in ``.json``) or by its base path when no such file exists
    (``big.deathtensors`` for ``big.deathtensors.index.json``): its tensors are read from their shards and its
    global metadata from the index, so a checkpoint compares with its
    resharded or single-file self as identical.

    Args:
        path_a: The first file or checkpoint (the reference); ``~`` and ``$VARS`` are expanded.
        path_b: The second file or checkpoint.
        rtol: Relative tolerance for float and complex values.
        atol: Absolute tolerance for float and complex values. With both 0
            (the default) the comparison is exact: bytes, so ``0.0 != -0.0``
            and NaNs are equal only with the same bits. Otherwise ``a`` is
            close to ``b`` when ``|a - b| <= atol + rtol * |b|``, NaN equals
            NaN only where both files have one, and an infinity equals only
            the same infinity. Integer and bool tensors always compare exactly.

    Returns:
        A dict with these keys (tensors in the order of the file they come
        from, parts of sparse tensors not listed on their own):

        - ``added``: names only in ``path_b``; ``removed``: names only in ``path_a``.
        - ``shape_changed``: ``[{"name", "a", "b"}]`` with the two shapes
          (the logical shape of a sparse tensor).
        - ``dtype_changed``: ``[{"name", "a", "b"}]`` with the two dtype ids.
        - ``layout_changed``: ``[{"name", "a", "b"}]``, ``None`` for dense or
          ``{"id", "params"}`` (e.g. a dense tensor that became sparse).
        - ``value_changed``: tensors of equal dtype, shape and layout whose
          values differ: ``{"name", "differing"`` (elements beyond the
          tolerance; ``None`` for a sparse tensor whose stored parts differ in
          shape), ``"numel"`` (elements compared), ``"max_abs_diff"`` (float
          and complex only: the largest ``|a - b|``, NaN positions left out;
          else ``None``), ``"first_index"`` (index tuple as a list, of the
          first differing element), ``"part"`` (for sparse tensors: the part
          that index is in, e.g. ``"indices"``; ``None`` for the values)``}``.
        - ``metadata_changed``: ``[{"name", "a", "b"}]`` with only the
          per-tensor metadata keys whose values differ.
        - ``global_metadata_changed``: bool; ``global_metadata``: ``None`` or
          ``{"a", "b"}`` with the differing file-metadata keys.
        - ``identical``: ``True`` when nothing of the above differs.

    Raises:
        InvalidArgumentError: a negative or non-finite tolerance.
        FileNotFoundError, FormatError: a file (or shard) is missing or not valid.
    """
    from . import expand_path

    text, max_abs_diffs = _core.diff_files(expand_path(path_a), expand_path(path_b), float(rtol), float(atol))
    report: Dict[str, Any] = json.loads(text)
    for entry, value in zip(report["value_changed"], max_abs_diffs):
        entry["max_abs_diff"] = value  # JSON writes infinities as null
    return report
