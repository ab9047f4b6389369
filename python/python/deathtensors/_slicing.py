"""Slices of a tensor, read lazily: ``f.get_tensor_slice`` (rows) and ``f.get_slice(name)[...]``."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any, List, Tuple

from ._frameworks import convert, target_device, to_device
from .errors import InvalidArgumentError

if TYPE_CHECKING:  # pragma: no cover
    from . import DtFile


def row_bounds(rows: int, start: int, count: int) -> Tuple[int, int]:
    """``[lo, hi)`` rows for ``start``/``count``: a negative start counts from the
    end; the range is clamped to the tensor, as Python slicing clamps."""
    if count < 0:
        raise InvalidArgumentError(f"count must be >= 0, not {count}")
    if start < 0:
        start += rows
    lo = min(max(start, 0), rows)
    hi = min(lo + count, rows)
    return lo, hi


def read_rows(f: DtFile, name: str, lo: int, hi: int, framework: str) -> Any:
    """Rows ``[lo, hi)`` of ``name``, decoding only the chunks that hold them."""
    e = f._dense_entry(name, "row slicing")
    shape: List[int] = e["shape"]
    if not shape:
        raise InvalidArgumentError(f"tensor {name!r} is 0-d: it has no rows to slice")
    rows = shape[0]
    row_bytes = e["nbytes"] // rows if rows else 0
    buf = f._reader.read_range(name, lo * row_bytes, (hi - lo) * row_bytes)
    return convert(buf, e["dtype"], [hi - lo, *shape[1:]], framework)


class TensorSlice:
    """A lazy handle on one tensor, sliced on demand.

    ``f.get_slice("emb")[1000:2000]`` reads only those rows, and
    ``f.get_slice("w")[::64, 10:20]`` only the chunks (in a compressed file;
    in an uncompressed one, the byte spans) that hold the picked elements:
    any mix of ints, slices (with steps, negative ones too), ``...`` and
    ``None`` is read this way, with memory beyond the result of one chunk per
    thread. An index array or mask after the first item reads its dimension
    whole and is applied by the framework (a mask over several dimensions:
    to the rows the first item picks). Mirrors ``safetensors``' ``get_slice``.
    """

    def __init__(self, file: DtFile, name: str, framework: str = "torch", device: Any = None) -> None:
        self._file = file
        self._name = name
        self._framework = framework
        self._entry = file._dense_entry(name, "get_slice")
        self._device = target_device(device, framework)

    def get_shape(self) -> List[int]:
        """The tensor's full shape."""
        return list(self._entry["shape"])

    def get_dtype(self) -> str:
        """The tensor's dtype id (``"F32"``, ``"BF16"``...)."""
        return str(self._entry["dtype"])

    def __len__(self) -> int:
        shape = self._entry["shape"]
        if not shape:
            raise TypeError("len() of a 0-d tensor")
        return int(shape[0])

    def __getitem__(self, key: Any) -> Any:
        """The rows ``key`` picks (read from the file), moved to the handle's device if it has one."""
        return to_device(self._rows(key), self._device)

    def _rows(self, key: Any) -> Any:
        if not self._entry["shape"]:
            # A 0-d tensor has no rows: it is read whole (one element) and indexed
            # as the framework indexes it (`[...]`, `[()]`, `[None]`).
            whole = self._file.get_tensor(self._name, framework=self._framework)
            try:
                return whole[key]
            except IndexError as e:
                raise IndexError(f"tensor {self._name!r} is 0-d: {e}") from None
        items = key if isinstance(key, tuple) else (key,)
        # Leading `None`s add axes in front of the rows; they are put back at the end.
        new_axes = 0
        while new_axes < len(items) and items[new_axes] is None:
            new_axes += 1
        items = _expand_ellipsis(items[new_axes:], len(self._entry["shape"]))
        first = next((item for item in items if item is not None), slice(None))
        if (isinstance(first, slice) or _is_index(first)) and not any(map(_is_wide_mask, items)):
            out = self._select(items)
        else:  # the first item must be rows (TypeError), or a mask spans dimensions: rows, then the framework
            out = self._pick_rows(items[0], items[1:]) if items else self._pick_rows(slice(None), ())
        return out[(None,) * new_axes] if new_axes else out

    def _select(self, items: Tuple[Any, ...]) -> Any:
        """Read what ints and slices pick (see :meth:`DtReader.read_selection`);
        ``None`` and index arrays (whose dimension is read whole) are then
        applied by the framework, every dimension in its place, so that numpy's
        rules for mixing them with ints and slices hold."""
        shape: List[int] = self._entry["shape"]
        selection: List[Tuple[int, int, int]] = []
        after: List[Any] = []  # applied to what is read: 0 drops an int's dimension, None adds one
        flips: List[int] = []  # dimensions picked with a negative step, read forwards
        for item in items:
            if item is None:
                after.append(None)
                continue
            dim = len(selection)
            if dim == len(shape):
                raise IndexError(f"too many indices for tensor {self._name!r} of {len(shape)} dimensions")
            n = shape[dim]
            if isinstance(item, slice):
                picked = range(*item.indices(n))
                if len(picked) <= 1:  # the step does not matter (and may not fit 64 bits)
                    selection.append((picked[0] if picked else 0, 1, len(picked)))
                elif picked.step < 0:
                    selection.append((picked[-1], -picked.step, len(picked)))
                    flips.append(dim)
                else:
                    selection.append((picked[0], picked.step, len(picked)))
                after.append(slice(None))
            elif _is_index(item):
                index = operator.index(item)
                if not -n <= index < n:
                    raise IndexError(f"index {index} is out of range for dimension {dim} of size {n}")
                selection.append((index % n, 1, 1))
                after.append(0)
            else:  # an index array or a one-dimensional mask: the dimension whole, then the framework
                selection.append((0, 1, n))
                after.append(item)
        selection += [(0, 1, n) for n in shape[len(selection) :]]
        buf = self._file._reader.read_selection(self._name, selection)
        out = convert(buf, self._entry["dtype"], [count for _, _, count in selection], self._framework)
        if flips:
            out = _flip(out, flips, self._framework)
        return out[tuple(after)] if any(not isinstance(a, slice) for a in after) else out

    def _pick_rows(self, key: Any, rest: Tuple[Any, ...]) -> Any:
        """Read the rows ``key`` picks, then index them with ``rest``."""
        rows = len(self)
        if not isinstance(key, (int, slice)) and hasattr(type(key), "__index__"):
            key = _row_number(key)
        if isinstance(key, bool):  # numpy and torch read a bool as a mask, not a row
            raise TypeError("tensor slices take an int, a slice or a tuple, not bool")
        if isinstance(key, int):
            index = key + rows if key < 0 else key
            if not 0 <= index < rows:
                raise IndexError(f"row {key} is out of range for {rows} rows")
            out = read_rows(self._file, self._name, index, index + 1, self._framework)[0]
            return out[rest] if rest else out
        if isinstance(key, slice):
            start, stop, step = key.indices(rows)
            picked = range(start, stop, step)  # O(1) to index, whatever its length
            if not picked:
                out = read_rows(self._file, self._name, 0, 0, self._framework)
            else:
                first, last = picked[0], picked[-1]
                lo, hi = min(first, last), max(first, last) + 1
                block = read_rows(self._file, self._name, lo, hi, self._framework)
                out = block if step == 1 else _every(block, step, self._framework)
            return out[(slice(None), *rest)] if rest else out
        raise TypeError(f"tensor slices take an int, a slice or a tuple, not {type(key).__name__}")


def _expand_ellipsis(items: Tuple[Any, ...], ndim: int) -> Tuple[Any, ...]:
    """``items`` with its ``...`` (at most one) replaced by as many ``:`` as the
    dimensions the other items leave, so that the first item is the rows'."""
    at = [i for i, item in enumerate(items) if item is Ellipsis]
    if not at:
        return items
    if len(at) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    used = sum(1 for item in items if item is not None and item is not Ellipsis)
    fill = (slice(None),) * max(ndim - used, 0)
    return (*items[: at[0]], *fill, *items[at[0] + 1 :])


def _is_index(item: Any) -> bool:
    """Whether ``item`` indexes one position: an int, or a 0-d integer numpy or
    torch scalar (a bool is a mask to numpy and torch, not a position)."""
    if isinstance(item, bool):
        return False
    if isinstance(item, int):
        return True
    try:
        _row_number(item)
    except TypeError:
        return False
    return hasattr(type(item), "__index__")


def _is_wide_mask(item: Any) -> bool:
    """Whether ``item`` is a boolean mask of two or more dimensions, which
    indexes as many dimensions of the tensor."""
    dtype = str(getattr(item, "dtype", ""))
    if isinstance(item, (list, tuple)):
        import numpy as np

        try:
            arr = np.asarray(item)
        except ValueError:  # ragged: the framework says what is wrong
            return False
        dtype, ndim = str(arr.dtype), arr.ndim
    else:
        ndim = getattr(item, "ndim", 0)
    return "bool" in dtype and ndim > 1


def _flip(out: Any, dims: List[int], framework: str) -> Any:
    """``out`` reversed along ``dims`` (a copy, as indexing with a negative step gives)."""
    if framework.lower() in ("numpy", "np"):
        import numpy as np

        return np.flip(out, tuple(dims)).copy()
    return out.flip(dims)


def _row_number(key: Any) -> Any:
    """A numpy or torch integer scalar (0-d) as a Python int. Raises
    ``TypeError`` for a bool scalar or an array of one or more dimensions, even
    of one element: numpy and torch index with those as masks or lists of rows."""
    if getattr(key, "ndim", 0) != 0 or "bool" in str(getattr(key, "dtype", "")):
        raise TypeError(f"tensor slices take an int, a slice or a tuple, not {type(key).__name__} {key!r}")
    return operator.index(key)


def _every(block: Any, step: int, framework: str) -> Any:
    """Every ``step``-th row of ``block``: from its first row for a positive
    step, from its last row backwards for a negative one (a copy, as indexing
    with a step gives)."""
    numpy = framework.lower() in ("numpy", "np")
    if step < 0:
        block = block[::-1] if numpy else block.flip(0)
    picked = block[:: abs(step)]
    return picked.copy() if numpy else picked.contiguous()
