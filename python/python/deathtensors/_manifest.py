"""The JSON manifest sidecar: :func:`write_manifest` and :func:`read_manifest`.

A manifest describes a ``.deathtensors`` file without its tensor data: its
full header, size, codec, checksum algorithm and footer digest, and a
summary row per tensor. It is small, so it can be browsed (on the Hugging Face
Hub, say) without downloading the file. The sidecar of ``model.deathtensors``
is ``model.deathtensors.manifest.json``; docs/format_spec.md (§13) describes
its schema.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any, Dict, Optional, Union

from . import _core

PathLike = Union[str, "os.PathLike[str]"]

#: What the default sidecar name appends to the file's name.
SIDECAR_SUFFIX = ".manifest.json"


def _expand(path: PathLike) -> str:
    # The package imports this module while it initialises: look it up when called.
    return sys.modules[__name__.rpartition(".")[0]].expand_path(path)


def write_manifest(dt_path: PathLike, manifest_path: Optional[PathLike] = None) -> str:
    """Write the manifest of ``dt_path`` and return the path written.

    Only the header and the 32-byte footer are read. The manifest goes to
    ``manifest_path`` (a file path, or a folder to put the default name in),
    or by default to ``<dt_path>.manifest.json`` beside the file. It is written
    atomically (a temporary file renamed over the target), so a reader never
    sees half a manifest. ``~`` and ``$VARS`` are expanded in both paths.

    Raises:
        FormatError: ``dt_path`` is not a valid ``.deathtensors`` file.
        OSError: a path cannot be read or written.
    """
    src = _expand(dt_path)
    out = None
    if manifest_path is not None:
        out = _expand(manifest_path)
        if os.path.isdir(out):
            out = os.path.join(out, os.path.basename(src) + SIDECAR_SUFFIX)
    return str(_core.write_manifest(src, out))


def read_manifest(manifest_path: PathLike) -> Dict[str, Any]:
    """Read a manifest written by :func:`write_manifest` (or ``deathtensors manifest``).

    The file must be strict JSON holding ``"manifest_version": 1`` and the
    keys of the manifest schema, with a valid ``header``; ``~`` and ``$VARS``
    are expanded.

    Raises:
        FormatError: the file is not a manifest (not JSON, keys missing or
            ill-typed, or a newer ``manifest_version``).
        OSError: the file cannot be read.
    """
    doc: Dict[str, Any] = json.loads(_core.read_manifest(_expand(manifest_path)))
    return doc


def manifest(dt_path: PathLike) -> Dict[str, Any]:
    """The manifest of ``dt_path`` as a dict, without writing it anywhere."""
    doc: Dict[str, Any] = json.loads(_core.manifest_json(_expand(dt_path)))
    return doc
