"""Adapters between framework objects (torch, numpy) and raw bytes.

torch and numpy are imported only when a function here needs them. The dtype
correspondence comes from the Rust registry (each dtype plugin names its torch
and numpy equivalents), so adding a dtype plugin needs no change here.
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Dict, List, Sequence, Tuple

from . import _core
from .errors import InvalidArgumentError, UnsupportedDtypeError

#: What ``get_tensor(framework=...)`` accepts.
TORCH_NAMES = ("torch", "pt", "pytorch")
NUMPY_NAMES = ("numpy", "np")


@functools.lru_cache(maxsize=None)
def _dtype_table() -> Tuple[Tuple[str, int, str, Any, Any], ...]:
    return tuple(_core.dtypes())


@functools.lru_cache(maxsize=None)
def _torch_maps() -> Tuple[Dict[str, Any], Dict[Any, str]]:
    import torch

    by_id: Dict[str, Any] = {}
    for dtype_id, _size, _kind, torch_name, _np in _dtype_table():
        if torch_name and hasattr(torch, torch_name):
            by_id[dtype_id] = getattr(torch, torch_name)
    return by_id, {v: k for k, v in by_id.items()}


@functools.lru_cache(maxsize=None)
def _numpy_maps() -> Tuple[Dict[str, Any], Dict[str, str]]:
    import numpy as np

    by_id: Dict[str, Any] = {}
    for dtype_id, _size, _kind, _torch, numpy_name in _dtype_table():
        if numpy_name:
            by_id[dtype_id] = np.dtype(numpy_name)
    return by_id, {v.str: k for k, v in by_id.items()}


def _is_torch(obj: Any) -> bool:
    """Whether ``obj`` is a torch tensor, a subclass's included (without importing
    torch: an object cannot be a tensor unless torch is loaded)."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.Tensor)


def _is_numpy(obj: Any) -> bool:
    """Whether ``obj`` is a numpy array (a subclass's included) or a numpy scalar."""
    np = sys.modules.get("numpy")
    return np is not None and isinstance(obj, (np.ndarray, np.generic))


def prepare(name: str, value: Any) -> Tuple[str, List[int], Any]:
    """Return ``(dtype_id, shape, contiguous CPU object)`` for a torch tensor or numpy array."""
    if _is_torch(value):
        import torch

        if getattr(value, "is_nested", False):
            raise InvalidArgumentError(
                f"tensor {name!r} is a nested tensor; save its components (tensor.unbind()) as tensors of their own"
            )
        if value.layout != torch.strided:
            raise InvalidArgumentError(
                f"tensor {name!r} has layout {value.layout}; dense (strided) and sparse COO tensors can be saved"
            )
        by_dtype = _torch_maps()[1]
        if value.dtype not in by_dtype:
            raise UnsupportedDtypeError(f"tensor {name!r}: torch dtype {value.dtype} has no deathtensors dtype")
        t = value.detach()
        if t.device.type == "meta":
            raise InvalidArgumentError(f"tensor {name!r} is on the meta device: it has no data to save")
        if t.device.type != "cpu":
            t = t.cpu()
        if t.is_conj():
            t = t.resolve_conj()
        if t.is_neg():
            t = t.resolve_neg()
        t = t.contiguous()
        if t.dtype == torch.bool and t.numel():
            raw = t.view(torch.uint8)
            if bool((raw > 1).any()):  # true to torch, but the format stores 0x00 and 0x01 only
                t = raw != 0
        return by_dtype[value.dtype], list(t.shape), t
    if _is_numpy(value):
        import numpy as np

        if isinstance(value, np.ma.MaskedArray):
            raise InvalidArgumentError(
                f"tensor {name!r} is a numpy masked array, whose mask would be lost: "
                "save its .data and np.ma.getmaskarray() as two tensors"
            )
        arr = np.asarray(value)  # numpy scalars become 0-d arrays
        shape = list(arr.shape)  # before ascontiguousarray, which turns 0-d into 1-d
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")
        by_str = _numpy_maps()[1]
        if arr.dtype.str not in by_str:
            raise UnsupportedDtypeError(f"tensor {name!r}: numpy dtype {arr.dtype} has no deathtensors dtype")
        if arr.dtype == np.bool_ and arr.size and arr.view(np.uint8).max() > 1:
            arr = arr.view(np.uint8) != 0  # true to numpy, but the format stores 0x00 and 0x01 only
        return by_str[arr.dtype.str], shape, arr
    raise InvalidArgumentError(
        f"tensor {name!r} is a {type(value).__name__}; expected a torch.Tensor or a numpy.ndarray "
        "(use save_file for raw bytes)"
    )


def to_torch(buf: Any, dtype_id: str, shape: Sequence[int]) -> Any:
    """View a Rust-owned buffer as a torch tensor (no copy)."""
    import torch

    tdtype = _torch_maps()[0].get(dtype_id)
    if tdtype is None:
        raise UnsupportedDtypeError(f"this torch ({torch.__version__}) has no dtype for {dtype_id}")
    if len(buf) == 0:
        return torch.empty(tuple(shape), dtype=tdtype)
    return torch.frombuffer(buf, dtype=torch.uint8).view(tdtype).reshape(tuple(shape))


def to_numpy(buf: Any, dtype_id: str, shape: Sequence[int]) -> Any:
    """View a Rust-owned buffer as a numpy array (no copy)."""
    import numpy as np

    npdtype = _numpy_maps()[0].get(dtype_id)
    if npdtype is None:
        raise UnsupportedDtypeError(
            f"numpy has no {dtype_id} dtype; load it with framework='torch' (pip install deathtensors[torch]), "
            "or read its raw bytes with get_bytes()"
        )
    try:
        return np.frombuffer(buf, dtype=npdtype).reshape(tuple(shape))
    except ValueError as e:  # more dimensions than this numpy holds (64, or 32 before numpy 2)
        raise InvalidArgumentError(
            f"numpy cannot hold a tensor of {len(shape)} dimensions ({e}); load it with framework='torch'"
        ) from None


def target_device(device: Any, framework: str) -> Any:
    """The ``torch.device`` that ``device=`` asks loaded tensors to move to, or
    ``None`` to keep them in host memory (``device=None`` or a CPU device).

    Checked before anything is read: a device other than the CPU needs the
    torch framework and must name a device this torch can use (a zero-size
    tensor is made on it, so an unusable one fails here, not after reading).

    Raises:
        InvalidArgumentError: not a device, not usable by this torch, or not
            the CPU with ``framework="numpy"``.
    """
    if device is None:
        return None
    if not isinstance(framework, str) or framework.lower() not in TORCH_NAMES:
        if str(device).partition(":")[0] == "cpu":  # "cpu", "cpu:0", torch.device("cpu"): where numpy arrays are
            return None
        raise InvalidArgumentError(f"device={device!r} needs framework='torch' (numpy arrays live in host memory)")
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise InvalidArgumentError(f"device={device!r} is not a torch device: {e}") from None
    if dev.type == "cpu":
        return None
    try:
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError) as e:  # torch's "not compiled with CUDA", "invalid device ordinal"...
        raise InvalidArgumentError(f"device={device!r} cannot be used by this torch: {e}") from e
    return dev


def to_device(tensor: Any, device: Any) -> Any:
    """``tensor`` moved to ``device`` (from :func:`target_device`; ``None`` keeps it)."""
    return tensor if device is None else tensor.to(device)


def convert(buf: Any, dtype_id: str, shape: Sequence[int], framework: str) -> Any:
    """Dispatch on the framework name."""
    if not isinstance(framework, str):
        raise InvalidArgumentError(f"framework must be 'torch' or 'numpy', not {framework!r}")
    fw = framework.lower()
    if fw in TORCH_NAMES:
        return to_torch(buf, dtype_id, shape)
    if fw in NUMPY_NAMES:
        return to_numpy(buf, dtype_id, shape)
    raise InvalidArgumentError(f"unknown framework {framework!r}; use 'torch' or 'numpy'")
