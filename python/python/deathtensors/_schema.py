"""Declarative validation of a file's tensors: :class:`Schema`.

A schema lists the tensors a file must hold, with their dtype, shape and
per-tensor metadata keys, and checks a file against it from the header alone
(no tensor data is read). Every violation is collected, so one failed
validation tells everything that is wrong.

>>> schema = (dt.Schema()
...           .expect("embed.weight", dtype="F32", shape=[None, 512])
...           .expect("layers.*.weight", dtype=torch.bfloat16, metadata_keys=["layer"]))
>>> schema.validate("model.deathtensors")
True
"""

from __future__ import annotations

import fnmatch
import os
import sys
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from . import _core
from .errors import InvalidArgumentError, SchemaError

_GLOB_CHARS = frozenset("*?[")


def _pkg() -> Any:
    # The package imports this module while it initialises: look DtFile and
    # open_sharded up when validate() is called.
    return sys.modules[__name__.rpartition(".")[0]]


def _dtype_ids() -> Tuple[List[str], Dict[str, str]]:
    """Registered dtype ids, and torch dtype names (``"float32"``) -> id."""
    ids: List[str] = []
    by_torch_name: Dict[str, str] = {}
    for dtype_id, _size, _kind, torch_name, _numpy_name in _core.dtypes():
        ids.append(dtype_id)
        if torch_name:
            by_torch_name[torch_name] = dtype_id
    return ids, by_torch_name


def _dtype_id(dtype: Any) -> str:
    """The dtype id of ``dtype``: an id string (``"F32"``), a torch dtype or a numpy dtype."""
    ids, by_torch_name = _dtype_ids()
    module = type(dtype).__module__.split(".")[0]
    if isinstance(dtype, str):
        if dtype in ids:
            return dtype
        folded = [i for i in ids if i.lower() == dtype.lower()]
        if len(folded) == 1:
            return folded[0]
        name = dtype[len("torch.") :] if dtype.startswith("torch.") else dtype
        if name in by_torch_name:
            return by_torch_name[name]
        raise InvalidArgumentError(f"unknown dtype {dtype!r}; known dtype ids: {', '.join(ids)}")
    if module == "torch":
        name = str(dtype).rpartition(".")[2]  # "torch.float32" -> "float32"
        if name in by_torch_name:
            return by_torch_name[name]
        raise InvalidArgumentError(f"torch dtype {dtype} has no deathtensors dtype")
    if module == "numpy" or (isinstance(dtype, type) and dtype.__module__.split(".")[0] == "numpy"):
        import numpy as np

        from ._frameworks import _numpy_maps

        code = np.dtype(dtype).newbyteorder("<").str  # saved little-endian, as save stores them
        by_numpy = _numpy_maps()[1]
        if code in by_numpy:
            return by_numpy[code]
        raise InvalidArgumentError(f"numpy dtype {np.dtype(dtype)} has no deathtensors dtype")
    raise InvalidArgumentError(
        f"dtype must be a dtype id string (like 'F32'), a torch dtype or a numpy dtype, not {dtype!r}"
    )


def _shape(shape: Any) -> Tuple[Optional[int], ...]:
    if isinstance(shape, (str, bytes)) or not isinstance(shape, Iterable):
        raise InvalidArgumentError(f"shape must be a list or tuple of ints (or None for any size), not {shape!r}")
    out: List[Optional[int]] = []
    for d in shape:
        if d is None:
            out.append(None)
        elif isinstance(d, bool) or not hasattr(d, "__index__"):
            raise InvalidArgumentError(f"shape {shape!r}: each size must be an int or None, not {d!r}")
        elif d.__index__() < 0:
            raise InvalidArgumentError(f"shape {shape!r}: sizes cannot be negative (use None for any size)")
        else:
            out.append(d.__index__())
    return tuple(out)


def _keys(keys: Any) -> Tuple[str, ...]:
    if isinstance(keys, str):
        return (keys,)
    if not isinstance(keys, Iterable):
        raise InvalidArgumentError(f"metadata_keys must be a list of strings, not {keys!r}")
    out = tuple(keys)
    bad = [k for k in out if not isinstance(k, str)]
    if bad:
        raise InvalidArgumentError(f"metadata_keys must be strings, not {bad!r}")
    return out


def _logical_shape(info: Dict[str, Any]) -> List[int]:
    """A tensor's shape; for a non-dense (sparse) tensor, its dense shape, kept in its layout."""
    layout = info.get("layout") or {}
    return list(layout.get("shape", info.get("shape", [])))


def _show_shape(shape: Sequence[Optional[int]]) -> str:
    return "[" + ", ".join("None" if d is None else str(d) for d in shape) + "]"


class _Expectation:
    __slots__ = ("name", "dtype", "shape", "metadata_keys", "is_glob")

    def __init__(
        self,
        name: str,
        dtype: Optional[str],
        shape: Optional[Tuple[Optional[int], ...]],
        metadata_keys: Tuple[str, ...],
    ) -> None:
        self.name = name
        self.dtype = dtype
        self.shape = shape
        self.metadata_keys = metadata_keys
        self.is_glob = any(c in _GLOB_CHARS for c in name)

    def matches(self, tensor: str) -> bool:
        return tensor == self.name or (self.is_glob and fnmatch.fnmatchcase(tensor, self.name))

    def describe(self) -> str:
        parts = []
        if self.dtype is not None:
            parts.append(f"dtype {self.dtype}")
        if self.shape is not None:
            parts.append(f"shape {_show_shape(self.shape)}")
        if self.metadata_keys:
            parts.append(f"metadata keys {sorted(self.metadata_keys)}")
        return ", ".join(parts)

    def check(self, tensor: str, info: Dict[str, Any]) -> List[str]:
        problems = []
        dtype = info.get("dtype")
        if self.dtype is not None and dtype != self.dtype:
            problems.append(f"tensor {tensor!r}: expected dtype {self.dtype}, found {dtype}")
        shape = _logical_shape(info)
        if self.shape is not None and (
            len(shape) != len(self.shape) or any(e is not None and e != f for e, f in zip(self.shape, shape))
        ):
            problems.append(f"tensor {tensor!r}: expected shape {_show_shape(self.shape)}, found {_show_shape(shape)}")
        if self.metadata_keys:
            found = info.get("metadata") or {}
            missing = [k for k in self.metadata_keys if k not in found]
            if missing:
                problems.append(
                    f"tensor {tensor!r}: missing metadata keys {missing} "
                    f"(expected {sorted(self.metadata_keys)}, found {sorted(found)})"
                )
        return problems

    def __repr__(self) -> str:
        details = self.describe()
        return f"expect({self.name!r}{', ' + details if details else ''})"


class Schema:
    """Expected tensors of a file: names (or glob patterns), dtypes, shapes, metadata keys.

    Build it with chained :meth:`expect` calls, then :meth:`validate` a file.
    By default a file may hold no tensor the schema does not name; call
    :meth:`allow_extra` to accept others.
    """

    def __init__(self) -> None:
        self._expectations: List[_Expectation] = []
        self._allow_extra = False

    def expect(
        self,
        name: str,
        dtype: Any = None,
        shape: Optional[Sequence[Optional[int]]] = None,
        metadata_keys: Optional[Iterable[str]] = None,
    ) -> Schema:
        """Require a tensor ``name``; returns the schema, so calls chain.

        Args:
            name: The tensor's name, or a glob pattern (``"layers.*.weight"``,
                matched with :func:`fnmatch.fnmatchcase`) that must match at
                least one tensor; every tensor it matches must then fit.
            dtype: A dtype id (``"F32"``, ``"BF16"``), a torch dtype or a numpy
                dtype; ``None`` accepts any.
            shape: A list or tuple of sizes where ``None`` matches any size
                (``[None, 512]``); ``None`` accepts any shape. For a sparse
                tensor this is its dense (logical) shape.
            metadata_keys: Keys the tensor's metadata must have.

        Raises:
            InvalidArgumentError: an unknown dtype or a malformed shape.
        """
        if not isinstance(name, str):
            raise InvalidArgumentError(f"name must be a str, not {type(name).__name__}")
        self._expectations.append(
            _Expectation(
                name,
                None if dtype is None else _dtype_id(dtype),
                None if shape is None else _shape(shape),
                () if metadata_keys is None else _keys(metadata_keys),
            )
        )
        return self

    def allow_extra(self, allow: bool = True) -> Schema:
        """Accept tensors the schema does not name (by default they are violations)."""
        self._allow_extra = bool(allow)
        return self

    def validate(self, path_or_file: Any) -> bool:
        """Check a file against the schema; returns ``True`` when it fits.

        ``path_or_file`` is a path (opened and closed here; ``~`` and
        ``$VARS`` are expanded; a sharded checkpoint is named as the CLI
        names it: by its index, or by its base path when only the index and
        shards exist), an open :class:`DtFile` or a :class:`ShardedReader`.
        Only the header is read.

        Raises:
            SchemaError: listing every violation, one per line (missing
                tensors, patterns that match nothing, unexpected tensors, wrong
                dtypes, wrong shapes, missing metadata keys); its
                ``violations`` attribute is the list of those lines.
        """
        if isinstance(path_or_file, (str, os.PathLike)):
            pkg = _pkg()
            path = pkg.expand_path(path_or_file)
            index = _core.checkpoint_index(path)  # the rule the CLI follows
            with pkg.open_sharded(index) if index is not None else pkg.DtFile._at(path) as f:
                return self._validate(f, path)
        if not (hasattr(path_or_file, "keys") and hasattr(path_or_file, "info")):
            raise InvalidArgumentError(
                f"validate() takes a path, a DtFile or a ShardedReader, not {type(path_or_file).__name__}"
            )
        return self._validate(path_or_file, getattr(path_or_file, "path", repr(path_or_file)))

    def _validate(self, f: Any, where: str) -> bool:
        names = list(f.keys())
        present = set(names)
        violations: List[str] = []
        matched = set()
        for e in self._expectations:
            # An exact name is looked up, not matched against every tensor: a schema
            # built from a checkpoint (one expectation per tensor) would be quadratic.
            if e.is_glob:
                hits = [n for n in names if e.matches(n)]
            else:
                hits = [e.name] if e.name in present else []
            if not hits:
                details = e.describe()
                wanted = f" ({details})" if details else ""
                if e.is_glob:
                    violations.append(f"no tensor matches pattern {e.name!r}{wanted}; expected at least one")
                else:
                    violations.append(f"missing tensor {e.name!r}{wanted}")
                continue
            for n in hits:
                matched.add(n)
                violations.extend(e.check(n, f.info(n)))
        if not self._allow_extra:
            for n in names:
                if n not in matched:
                    info = f.info(n)
                    violations.append(
                        f"unexpected tensor {n!r} (dtype {info.get('dtype')}, shape "
                        f"{_show_shape(_logical_shape(info))}); the schema does not name it "
                        "(call allow_extra() to accept it)"
                    )
        if violations:
            count = f"{len(violations)} schema violation{'s' if len(violations) != 1 else ''}"
            raise SchemaError(f"{where}: {count}:\n" + "\n".join(f"  - {v}" for v in violations), violations)
        return True

    def __len__(self) -> int:
        return len(self._expectations)

    def __repr__(self) -> str:
        rules = "".join(f".{e!r}" for e in self._expectations)
        extra = ".allow_extra()" if self._allow_extra else ""
        return f"Schema(){rules}{extra}"
