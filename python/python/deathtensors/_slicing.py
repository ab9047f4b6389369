"""Slices of a tensor, read lazily: ``f.get_tensor_slice`` (rows) and ``f.get_slice(name)[...]``."""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any, List, Optional, Tuple

from ._frameworks import convert, target_device, to_device
from .errors import InvalidArgumentError

if TYPE_CHECKING:  # pragma: no cover
    from . import DtFile


def row_bounds(rows: int, start: Any, count: Any) -> Tuple[int, int]:
    """``[lo, hi)`` rows for ``start``/``count``: a negative start counts from the
    end; the range is clamped to the tensor, as Python slicing clamps.

    ``start`` and ``count`` may be any integers that ``get_slice`` takes as
    positions (``int``, 0-d numpy or torch integer scalars; not bools): they
    are taken as Python ints first, since numpy's fixed-width arithmetic
    would wrap around or turn into floats."""
    if _kind(start) != "int" or _kind(count) != "int":
        raise InvalidArgumentError(
            f"start and count must be integers, not {type(start).__name__} and {type(count).__name__}"
        )
    start, count = operator.index(start), operator.index(count)
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
            except (IndexError, ValueError) as e:  # torch's ValueError: a negative step
                raise IndexError(f"tensor {self._name!r} is 0-d: {e}") from None
        selection, after, flips, empty = _plan(key if isinstance(key, tuple) else (key,), self._entry["shape"])
        buf = self._file._reader.read_selection(self._name, selection)
        out = convert(buf, self._entry["dtype"], [count for _, _, count in selection], self._framework)
        if empty is not None:  # the result is empty: see `_plan`
            out = _broadcast(out, empty, self._framework)
        if flips:
            out = _flip(out, flips, self._framework)
        return out if all(isinstance(a, slice) for a in after) else out[tuple(after)]


def _plan(
    items: Tuple[Any, ...], shape: List[int]
) -> Tuple[List[Tuple[int, int, int]], List[Any], List[int], Optional[List[int]]]:
    """What to read for the index ``items`` of a tensor of ``shape``, and how to finish.

    Returns ``(selection, after, flips, empty)``: ``(start, step, count)`` per
    dimension for :meth:`DtReader.read_selection` (steps positive), the index
    that the framework then applies to what was read, the dimensions to
    reverse before that (picked with a negative step), and, when the result
    is empty whatever is read (a False, an array of no positions, a mask of
    no True), the shape to broadcast the one element read to instead. ``after`` keeps the
    key's every item in its place (an int becomes ``0`` of its one-element
    dimension, a slice ``:``; ``None``, ``...``, bools and index arrays stay),
    so numpy's rules for mixing them hold as they do on the whole tensor; an
    index array's or a mask's dimensions are read whole.

    Raises:
        TypeError: something other than an int or a slice picks the rows
            (an index array, a mask, a bool), which would read every row.
        IndexError: what numpy raises: a position out of range, too many
            indices, two ellipses, an item that is no index (a float, a str).
    """
    kinds = [_kind(item) for item in items]
    if kinds.count("ellipsis") > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    bad = next((item for item, kind in zip(items, kinds) if kind == "bad"), None)
    if bad is not None:  # numpy checks the items' types before anything else
        raise IndexError(
            "only integers, slices (`:`), ellipsis (`...`), None and integer or boolean arrays are valid "
            f"indices, not a {type(bad).__name__}"
        )
    used = sum(_dims_taken(item, kind) for item, kind in zip(items, kinds))
    if used > len(shape):
        raise IndexError(f"too many indices for a tensor of {len(shape)} dimensions: {used} were given")
    fill = len(shape) - used  # the dimensions `...` stands for
    for item, kind in zip(items, kinds):  # what picks the rows?
        if kind in ("slice", "int") or (kind == "ellipsis" and fill):
            break
        if kind in ("bool", "array", "mask"):
            raise TypeError(
                f"tensor slices take an int or a slice for the rows, not a {type(item).__name__} "
                "(numpy and torch read it as a mask or a list of rows, which would read every row)"
            )
    selection: List[Tuple[int, int, int]] = []
    after: List[Any] = []
    flips: List[int] = []
    for item, kind in zip(items, kinds):
        dim = len(selection)
        if kind == "ellipsis":
            selection += [(0, 1, n) for n in shape[dim : dim + fill]]
            after.append(Ellipsis)
        elif kind in ("none", "bool"):  # a new dimension (of one element, or none for False)
            after.append(item)
        elif kind == "slice":
            picked = range(*item.indices(shape[dim]))
            if len(picked) <= 1:  # the step does not matter (and may not fit 64 bits)
                selection.append((picked[0] if picked else 0, 1, len(picked)))
            elif picked.step < 0:
                selection.append((picked[-1], -picked.step, len(picked)))
                flips.append(dim)
            else:
                selection.append((picked[0], picked.step, len(picked)))
            after.append(slice(None))
        elif kind == "int":
            n, index = shape[dim], operator.index(item)
            if not -n <= index < n:
                raise IndexError(f"index {index} is out of range for dimension {dim} of size {n}")
            selection.append((index % n, 1, 1))
            after.append(0)
        else:  # an index array or a mask: its dimensions whole; the framework indexes them
            selection += [(0, 1, n) for n in shape[dim : dim + _dims_taken(item, kind)]]
            after.append(item)
    selection += [(0, 1, n) for n in shape[len(selection) :]]
    if any(_picks_nothing(item, kind) for item, kind in zip(items, kinds)):
        one = [(start, 1, min(count, 1)) for start, _, count in selection]
        return one, after, [], [count for _, _, count in selection]
    return selection, after, flips, None


def _kind(item: Any) -> str:
    """What an index item is: ``none``, ``ellipsis``, ``slice``, ``int`` (a
    position: an int or a 0-d integer scalar), ``bool`` (a 0-d bool: a new
    dimension), ``array`` (integer positions), ``mask`` (a bool array), or
    ``bad``."""
    if item is None:
        return "none"
    if item is Ellipsis:
        return "ellipsis"
    if isinstance(item, slice):
        return "slice"
    if isinstance(item, bool):
        return "bool"
    if isinstance(item, int):
        return "int"
    if isinstance(item, list):
        import numpy as np

        try:
            item = np.asarray(item)
        except ValueError:  # ragged
            return "bad"
        if item.size == 0 and item.dtype == np.float64:  # `[]` indexes as an empty integer array
            return "array"
    dtype = str(getattr(item, "dtype", ""))
    if dtype:
        zero_d = getattr(item, "ndim", 0) == 0
        if "bool" in dtype:
            return "bool" if zero_d else "mask"
        if "int" in dtype:
            return "int" if zero_d else "array"
        return "bad"
    return "int" if hasattr(type(item), "__index__") else "bad"


def _dims_taken(item: Any, kind: str) -> int:
    """How many of the tensor's dimensions an index item of ``kind`` picks from."""
    if kind in ("slice", "int", "array", "bad"):
        return 1
    if kind == "mask":
        if hasattr(item, "ndim"):  # a numpy array or a torch tensor
            return int(item.ndim)
        import numpy as np

        return int(np.ndim(item))  # a list
    return 0  # None, ..., a bool


def _picks_nothing(item: Any, kind: str) -> bool:
    """Whether an index item makes the result empty: a False, an index array
    of no positions, a mask of no True."""
    if kind == "bool":
        return not bool(item)
    if kind not in ("array", "mask"):
        return False
    if hasattr(item, "numel"):  # a torch tensor
        return item.numel() == 0 or (kind == "mask" and not bool(item.any()))
    import numpy as np

    arr = np.asarray(item)
    return arr.size == 0 or (kind == "mask" and not arr.any())


def _broadcast(out: Any, shape: List[int], framework: str) -> Any:
    """``out`` (one element, or none) seen as ``shape``, without copying."""
    if framework.lower() in ("numpy", "np"):
        import numpy as np

        return np.broadcast_to(out, shape)
    return out.expand(shape)


def _flip(out: Any, dims: List[int], framework: str) -> Any:
    """``out`` reversed along ``dims`` (a copy, as indexing with a negative step gives)."""
    if framework.lower() in ("numpy", "np"):
        import numpy as np

        return np.flip(out, tuple(dims)).copy()
    import torch

    if out.element_size() == 1 and out.dtype not in (torch.uint8, torch.int8, torch.bool):
        # torch has no flip of its float8 types: reverse the bytes, which are the elements.
        return out.view(torch.uint8).flip(dims).view(out.dtype)
    return out.flip(dims)
