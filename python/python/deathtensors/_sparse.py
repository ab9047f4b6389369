"""Sparse COO tensors, stored through the ``sparse_coo`` layout plugin.

A sparse tensor ``name`` is two ordinary tensor entries: its values (under
``name``, carrying a ``layout`` object with the dense shape) and its I64
indices (under ``name + INDICES_SUFFIX``, marked ``part_of`` it). Readers
list it once. Coalesced or not, any dtype, any number of sparse and dense
dimensions.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Tuple

from ._frameworks import TORCH_NAMES, convert, prepare
from .errors import FormatError, InvalidArgumentError

if TYPE_CHECKING:  # pragma: no cover
    from . import DtFile

#: The layout plugin id.
LAYOUT_ID = "sparse_coo"
#: Entry name of a sparse tensor's indices, after the tensor's name.
INDICES_SUFFIX = "/__sparse_indices__"


def is_sparse(value: Any) -> bool:
    """Whether ``value`` is a torch sparse COO tensor."""
    layout = getattr(value, "layout", None)
    return layout is not None and str(layout) == "torch.sparse_coo"


def sparse_entry(name: str, value: Any) -> Tuple[Any, ...]:
    """``(name, dtype, shape, values, alias_of, layout)`` for a sparse COO tensor."""
    t = value.detach()
    if t.device.type == "meta":
        raise InvalidArgumentError(f"tensor {name!r} is on the meta device: it has no data to save")
    if t.device.type != "cpu":
        t = t.cpu()
    # _indices()/_values() work whether or not the tensor is coalesced (indices()/values() need it).
    values_dtype, values_shape, values = prepare(name, t._values())
    idx_dtype, idx_shape, indices = prepare(name, t._indices())
    layout = (
        LAYOUT_ID,
        list(t.shape),
        json.dumps({"coalesced": bool(t.is_coalesced())}),
        [("indices", name + INDICES_SUFFIX, idx_dtype, idx_shape, indices)],
    )
    return (name, values_dtype, values_shape, values, None, layout)


def load_sparse(f: DtFile, name: str, framework: str = "torch") -> Any:
    """Rebuild the sparse tensor ``name`` of ``f`` (torch only)."""
    e = f._entry(name)
    layout = e.get("layout")
    if not layout or layout.get("id") != LAYOUT_ID:
        raise InvalidArgumentError(f"tensor {name!r} is not sparse; use get_tensor")
    if not isinstance(framework, str):
        raise InvalidArgumentError(f"framework must be 'torch' or 'numpy', not {framework!r}")
    if framework.lower() not in TORCH_NAMES:
        raise InvalidArgumentError(f"sparse tensor {name!r} loads with framework='torch' only (numpy has no sparse)")
    import torch

    idx_name = layout["parts"]["indices"]
    idx = f._parts[idx_name]
    indices = convert(f._reader.read(idx_name), idx["dtype"], idx["shape"], "torch")
    values = convert(f._reader.read(name), e["dtype"], e["shape"], "torch")
    coalesced = bool(layout.get("params", {}).get("coalesced", False))
    try:
        return torch.sparse_coo_tensor(
            indices, values, tuple(layout["shape"]), check_invariants=True, is_coalesced=coalesced or None
        )
    except RuntimeError as err:  # indices out of bounds, wrong coalesced claim...
        raise FormatError(f"sparse tensor {name!r} is invalid: {err}") from None
