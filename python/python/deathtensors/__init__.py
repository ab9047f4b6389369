"""deathtensors: safe, fast, pickle-free tensor storage with a Rust core.

Opening a ``.deathtensors`` file never executes code: the header is JSON,
parsed and validated in Rust, and tensor data is opaque bytes.

>>> import deathtensors as dt
>>> dt.save("model.deathtensors", {"w": torch.zeros(2, 2)}, compress=True, checksum=True)
>>> with dt.open("model.deathtensors", verify=True) as f:
...     w = f.get_tensor("w")
"""

from __future__ import annotations

import json
import operator
import os
from typing import Any, Dict, Iterator, List, Mapping, Optional, Union

from . import _core
from ._convert import _check_level, from_safetensors, repack, to_safetensors
from ._diff import diff
from ._frameworks import convert, prepare, target_device, to_device
from ._manifest import read_manifest, write_manifest
from ._schema import Schema
from ._sharded import ShardedReader, open_sharded, save_sharded
from ._slicing import TensorSlice, read_rows, row_bounds
from ._sparse import is_sparse, load_sparse, sparse_entry
from .errors import (
    ChecksumError,
    DeathtensorsError,
    EncryptedFileError,
    FormatError,
    HubAuthError,
    HubConnectionError,
    HubEntryNotFoundError,
    HubError,
    HubNotFoundError,
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    HubUploadError,
    InvalidArgumentError,
    NoChecksumError,
    PluginError,
    SchemaError,
    TensorNotFoundError,
    UnsupportedDtypeError,
)

__version__: str = _core.__version__

__all__ = [
    "__version__",
    "save",
    "save_file",
    "append",
    "save_sparse",
    "get_sparse",
    "Schema",
    "diff",
    "write_manifest",
    "read_manifest",
    "from_safetensors",
    "to_safetensors",
    "repack",
    "open",
    "DtFile",
    "TensorSlice",
    "save_sharded",
    "open_sharded",
    "ShardedReader",
    "plugins",
    "expand_path",
    "DeathtensorsError",
    "FormatError",
    "EncryptedFileError",
    "ChecksumError",
    "NoChecksumError",
    "PluginError",
    "TensorNotFoundError",
    "InvalidArgumentError",
    "UnsupportedDtypeError",
    "SchemaError",
    "HubError",
    "HubAuthError",
    "HubNotFoundError",
    "HubRepoNotFoundError",
    "HubRevisionNotFoundError",
    "HubEntryNotFoundError",
    "HubConnectionError",
    "HubUploadError",
]

PathLike = Union[str, "os.PathLike[str]"]

#: ``compress=True`` selects this codec.
DEFAULT_CODEC = "zstd"
#: ``checksum=True`` selects this algorithm.
DEFAULT_CHECKSUM = "sha256"


def expand_path(path: PathLike) -> str:
    """Expand ``~`` and ``$VARS`` in a path (done for every path the API takes)."""
    return os.path.expandvars(os.path.expanduser(os.fsdecode(os.fspath(path))))


def _choose(value: Union[bool, str, None], default: str, what: str) -> Optional[str]:
    if value is None or value is False:
        return None
    if value is True:
        return default
    if isinstance(value, str):
        return value
    raise InvalidArgumentError(f"{what} must be a bool or a plugin id string, not {value!r}")


_INT_RANGE = (-(2**63), 2**64 - 1)
#: How json.dumps writes keys that are not strings but JSON constants.
_JSON_KEY_WORDS = {True: "true", False: "false", None: "null"}


def _check_json(value: Any, what: str) -> None:
    """Refuse what JSON cannot carry exactly: integers beyond 64 bits, unencodable strings."""
    if isinstance(value, bool) or value is None or isinstance(value, float):
        return
    if isinstance(value, int):
        if not _INT_RANGE[0] <= value <= _INT_RANGE[1]:
            raise InvalidArgumentError(f"{what}: integer {value} does not fit in 64 bits; store it as a string")
    elif isinstance(value, str):
        _check_text(value, what)
    elif isinstance(value, Mapping):
        seen: Dict[Any, Any] = {}
        for k, v in value.items():
            if isinstance(k, str):
                _check_text(k, what)
            # JSON keys are strings: json.dumps writes 1 as "1" and True as "true", so
            # {1: "a", "1": "b"} would become one key and lose a value.
            key = _JSON_KEY_WORDS.get(k, k) if isinstance(k, bool) or k is None else k
            key = json.dumps(key) if isinstance(key, (int, float)) else key
            if key in seen:
                raise InvalidArgumentError(f"{what}: keys {seen[key]!r} and {k!r} are both the JSON key {key!r}")
            seen[key] = k
            _check_json(v, what)
    elif isinstance(value, (list, tuple)):
        for v in value:
            _check_json(v, what)


def _check_text(text: str, what: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidArgumentError(f"{what}: {text!r} is not valid Unicode ({e.reason})") from None


def _dumps(value: Any, what: str) -> Optional[str]:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(f"{what} must be a dict, not {type(value).__name__}")
    try:
        _check_json(value, what)
        return json.dumps(dict(value), allow_nan=False, ensure_ascii=False)
    except InvalidArgumentError:
        raise  # already says what is wrong (it is a ValueError too)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"{what} must be JSON-serialisable: {e}") from None
    except RecursionError:
        raise InvalidArgumentError(f"{what} is nested too deeply, or contains itself") from None


def _write(
    path: PathLike,
    entries: List[tuple],
    metadata: Optional[Mapping[str, Mapping[str, Any]]],
    global_metadata: Optional[Mapping[str, Any]],
    checksum: Union[bool, str, None],
    compress: Union[bool, str, None],
    compress_level: Optional[int],
    durable: bool = True,
) -> None:
    rows = _rows(entries, metadata)
    codec = _choose(compress, DEFAULT_CODEC, "compress")
    compress_level = _check_level(compress_level)
    _core.save(
        expand_path(path),
        rows,
        global_metadata=_dumps(global_metadata, "global_metadata"),
        codec=codec,
        level=compress_level if codec else None,
        checksum=_choose(checksum, DEFAULT_CHECKSUM, "checksum"),
        durable=bool(durable),
    )


def _rows(entries: List[tuple], metadata: Optional[Mapping[str, Mapping[str, Any]]]) -> List[tuple]:
    """Entry tuples for ``_core``: ``(name, dtype, shape, data, metadata_json, alias_of, layout)``."""
    names = {e[0] for e in entries}
    if metadata is not None and not isinstance(metadata, Mapping):
        raise InvalidArgumentError(f"metadata must be a dict of name -> dict, not {type(metadata).__name__}")
    per_tensor: Dict[str, Any] = dict(metadata or {})
    unknown = sorted(repr(k) for k in set(per_tensor) - names)  # repr: keys need not be str, nor comparable
    if unknown:
        raise InvalidArgumentError(f"metadata names tensors that are not saved: {', '.join(unknown)}")
    return [
        (n, d, s, data, _dumps(per_tensor.get(n), f"metadata[{n!r}]"), alias, layout)
        for n, d, s, data, alias, layout in entries
    ]


def _entries(tensors: Mapping[str, Any]) -> List[tuple]:
    """``(name, dtype_id, shape, data, alias_of, layout)`` per tensor, in order.

    Sparse COO tensors become their values with a ``sparse_coo`` layout and
    their indices as a part.

    Tensors that share one storage (tied weights) and cover all of it with the
    same dtype and shape are saved once: later names become aliases of the
    first. Views of part of a storage are saved as their own bytes.
    """
    _check_mapping(tensors)
    tied = _tied_to(tensors)
    entries = []
    for name, value in tensors.items():
        if is_sparse(value):
            entries.append(sparse_entry(name, value))
            continue
        dtype_id, shape, obj = prepare(name, value)
        if name in tied:
            entries.append((name, dtype_id, shape, None, tied[name], None))
        else:
            entries.append((name, dtype_id, shape, obj, None, None))
    return entries


def _tied_to(tensors: Mapping[str, Any]) -> Dict[str, str]:
    """``{name: earlier name}`` for each tensor that is a second name of an
    earlier one (tied weights): the same whole storage, dtype and shape, and
    the same conj/neg view flags (see :func:`_storage_key`)."""
    first: Dict[tuple, str] = {}
    tied: Dict[str, str] = {}
    for name, value in tensors.items():
        key = None if is_sparse(value) else _storage_key(value)
        if key is None:
            continue
        if key in first:
            tied[name] = first[key]
        else:
            first[key] = name
    return tied


def _storage_key(value: Any) -> Optional[tuple]:
    """Identity of a torch tensor's storage and how it is viewed (dtype, shape
    and view flags) when the tensor covers all of it, else None: two tensors
    with one key hold the same values.

    A conjugate or negative view (``x.conj()`` of a complex tensor,
    ``x._neg_view()``) shares its base's storage but reads as other values,
    so those flags are part of the identity: such a view is saved as its own
    values, never as an alias of its base."""
    if not (hasattr(value, "untyped_storage") and hasattr(value, "storage_offset")):
        return None
    try:
        storage = value.untyped_storage()
        whole = value.storage_offset() == 0 and value.is_contiguous()
        if not whole or value.numel() * value.element_size() != storage.nbytes() or storage.nbytes() == 0:
            return None
        view = (str(value.dtype), tuple(value.shape), value.is_conj(), value.is_neg())
        return (str(value.device), storage.data_ptr(), storage.nbytes(), *view)
    except (RuntimeError, NotImplementedError):  # sparse, meta or other storage-less tensors
        return None


def _check_mapping(tensors: Any) -> None:
    if not isinstance(tensors, Mapping):
        raise InvalidArgumentError(f"tensors must be a dict of name -> tensor, not {type(tensors).__name__}")
    for name in tensors:
        if not isinstance(name, str):
            raise InvalidArgumentError(f"tensor names must be str, not {type(name).__name__} ({name!r})")
        _check_text(name, "tensor name")


def save(
    path: PathLike,
    tensors: Mapping[str, Any],
    metadata: Optional[Mapping[str, Mapping[str, Any]]] = None,
    global_metadata: Optional[Mapping[str, Any]] = None,
    checksum: Union[bool, str] = False,
    compress: Union[bool, str] = False,
    compress_level: Optional[int] = 3,
    durable: bool = True,
) -> None:
    """Save a dict of torch tensors or numpy arrays to ``path``, atomically.

    Args:
        path: Destination (``~`` and ``$VARS`` are expanded).
        tensors: ``{name: tensor}``; order is kept. Non-contiguous tensors are
            made contiguous and GPU tensors are copied to the CPU.
        metadata: Per-tensor metadata, ``{name: {key: any JSON value}}``.
        global_metadata: File metadata, ``{key: any JSON value}``.
        checksum: ``True`` for a SHA-256 footer, or an algorithm id (``"blake3"``).
        compress: ``True`` for zstd, or a codec id (``"lz4"``).
        compress_level: Codec level (zstd: -131072..=22, negative levels being
            its fast modes; lz4 ignores it). ``None`` uses the codec's default;
            a level the codec refuses is an :class:`InvalidArgumentError`.
        durable: fsync the file and its directory before returning (default).
            ``False`` skips the fsyncs: much faster on slow disks, and the
            rename is still atomic for other processes, but after a power
            loss the target may hold the old file or an incomplete new one.

    A save over a file that an append or repack is rewriting waits for it
    to finish before it replaces the file (the new file is written
    meanwhile), so that the rewrite, made from the old contents, does not
    undo the save.

    The tensors' memory is written to the file directly, with the GIL
    released, not copied first: another thread must not free or resize
    their storage (``untyped_storage().resize_(0)``, as FSDP does with
    parameters) until ``save`` returns, or the save reads freed memory.
    Changing their values meanwhile saves a mix of old and new values.

    Raises:
        InvalidArgumentError: bad names, metadata or values (a numpy masked
            array, whose mask would be lost); a header (names, shapes,
            metadata) over the 100 MB that readers accept.
        PluginError: unknown codec or checksum id.
        UnsupportedDtypeError: a dtype deathtensors does not store.
        OSError: the file cannot be written; the target is left untouched.
    """
    _write(path, _entries(tensors), metadata, global_metadata, checksum, compress, compress_level, durable)


def save_file(
    path: PathLike,
    tensors: Mapping[str, Mapping[str, Any]],
    metadata: Optional[Mapping[str, Mapping[str, Any]]] = None,
    global_metadata: Optional[Mapping[str, Any]] = None,
    checksum: Union[bool, str] = False,
    compress: Union[bool, str] = False,
    compress_level: Optional[int] = 3,
) -> None:
    """Save raw bytes: ``tensors`` is ``{name: {"dtype": "F32", "shape": [2, 2], "data": bytes}}``.

    ``data`` is any C-contiguous bytes-like object (``bytes``, ``bytearray``,
    ``memoryview``) holding little-endian elements; its length must equal the
    shape's element count times the dtype's size. Needs neither torch nor numpy.
    Other arguments are as in :func:`save`.
    """
    _check_mapping(tensors)
    entries = []
    for name, spec in tensors.items():
        if not isinstance(spec, Mapping) or not {"dtype", "shape", "data"} <= set(spec):
            raise InvalidArgumentError(f"tensor {name!r} must be a dict with keys 'dtype', 'shape' and 'data'")
        data = spec["data"]
        try:
            view = memoryview(data)
        except TypeError:
            raise InvalidArgumentError(
                f"tensor {name!r}: data must be a bytes-like object, not {type(data).__name__}"
            ) from None
        if not view.c_contiguous:
            data = view.tobytes()  # the elements in C order
        elif view.format != "B" or view.ndim != 1:
            data = view.cast("B")
        entries.append((name, str(spec["dtype"]), _raw_shape(name, spec["shape"]), data, None, None))
    _write(path, entries, metadata, global_metadata, checksum, compress, compress_level)


def _raw_shape(name: str, shape: Any) -> List[int]:
    """A ``save_file`` shape: a list or tuple of non-negative integers."""
    if not isinstance(shape, (list, tuple)):
        raise InvalidArgumentError(f"tensor {name!r}: shape must be a list of ints, not {shape!r}")
    dims = []
    for d in shape:
        if isinstance(d, bool):
            raise InvalidArgumentError(f"tensor {name!r}: shape {shape!r} holds a bool")
        try:
            dim = operator.index(d)  # ints and numpy integers; floats and strings are refused
        except TypeError:
            raise InvalidArgumentError(f"tensor {name!r}: shape {shape!r} holds {d!r}, not an int") from None
        if dim < 0:
            raise InvalidArgumentError(f"tensor {name!r}: shape {shape!r} holds a negative dimension")
        if dim > _INT_RANGE[1]:
            raise InvalidArgumentError(f"tensor {name!r}: shape {shape!r} holds a dimension over 2**64 - 1")
        dims.append(dim)
    return dims


def append(
    path: PathLike,
    tensors: Mapping[str, Any],
    metadata: Optional[Mapping[str, Mapping[str, Any]]] = None,
    extra_global_metadata: Optional[Mapping[str, Any]] = None,
    overwrite: bool = False,
) -> None:
    """Add tensors to an existing file without loading its tensors.

    The old tensors are copied as stored (never decompressed, never in
    Python memory) into a new file that atomically replaces the old one: a
    crash at any moment leaves the old file intact. The file keeps its own
    compression and checksum settings; its footer is recomputed, so a file
    with a footer is verified (one more read of it, alongside the write)
    before it is replaced: the new footer must not vouch for bytes the old
    one says are damaged.
    ``extra_global_metadata`` is merged over the file's global metadata.
    Appends to one file from several threads or processes take turns (an
    exclusive lock on the file), so each adds its tensors to what the others
    wrote and none is lost; a :func:`save` over the file waits for the
    append in progress, so that the append does not undo it.

    Raises:
        InvalidArgumentError: a name already in the file (unless
            ``overwrite=True``, which replaces that tensor in place); the name
            of a stored part of a sparse tensor (``name/__sparse_indices__``),
            overwrite or not; a header over the 100 MB readers accept.
        ChecksumError: the file has a checksum footer that does not match
            its contents; the file is left as it was.
    """
    rows = _rows(_entries(tensors), metadata)
    _core.append(
        expand_path(path),
        rows,
        extra_global_metadata=_dumps(extra_global_metadata, "extra_global_metadata"),
        overwrite=bool(overwrite),
    )


def save_sparse(
    path: PathLike,
    tensors: Mapping[str, Any],
    metadata: Optional[Mapping[str, Mapping[str, Any]]] = None,
    global_metadata: Optional[Mapping[str, Any]] = None,
    checksum: Union[bool, str] = False,
    compress: Union[bool, str] = False,
    compress_level: Optional[int] = 3,
) -> None:
    """Save torch sparse COO tensors (dense tensors may be mixed in); as :func:`save`.

    Each sparse tensor is stored as its values and I64 indices through the
    ``sparse_coo`` layout plugin, coalesced or not, keeping its dense shape.
    """
    save(path, tensors, metadata, global_metadata, checksum, compress, compress_level)


def get_sparse(f: DtFile, name: str) -> Any:
    """The sparse COO tensor ``name`` of the open file ``f``.

    Raises:
        InvalidArgumentError: ``name`` is a dense tensor.
    """
    return load_sparse(f, name)


def _sharded_hint(path: str) -> Optional[str]:
    """What to say when ``path``, which did not open as one file, names a
    sharded checkpoint (its base path or its index); ``None`` otherwise."""
    try:
        index = _core.checkpoint_index(path)
    except (OSError, DeathtensorsError):  # pragma: no cover - an unreadable folder
        return None
    if index is None or not os.path.isfile(index):
        return None
    return f"it names the sharded checkpoint {index!r}: open it with deathtensors.open_sharded"


class _Entries(Mapping[str, Dict[str, Any]]):
    """Tensor entries of an open file by name, in file order, each described
    (by the Rust reader, as JSON) the first time it is asked for: opening a
    file of 200,000 tensors built a dict per tensor, 3.3x the time of
    safetensors' open (see docs/performance.md)."""

    __slots__ = ("_reader", "_known")

    def __init__(self, reader: Any, names: List[str]) -> None:
        self._reader = reader
        self._known: Dict[str, Optional[Dict[str, Any]]] = dict.fromkeys(names)

    def __getitem__(self, name: str) -> Dict[str, Any]:
        entry = self._known[name]  # KeyError for a name the file lacks
        if entry is None:
            entry = self._known[name] = json.loads(self._reader.describe_tensor(name))
        return entry

    def __iter__(self) -> Iterator[str]:
        return iter(self._known)

    def __len__(self) -> int:
        return len(self._known)

    def __contains__(self, name: object) -> bool:
        return name in self._known


class DtFile:
    """A lazily read ``.deathtensors`` file (also opens legacy ``.dt`` files).

    Opening reads and validates the header only; each ``get_*`` call reads just
    the tensor asked for. Use as a context manager, or call :meth:`close`.
    Safe to share between threads.
    """

    def __init__(self, path: PathLike, verify: bool = False) -> None:
        self._open(expand_path(path), verify)

    @classmethod
    def _at(cls, path: str, verify: bool = False) -> DtFile:
        """Open ``path`` as it is, ``~`` and ``$VARS`` not expanded: a path built
        from names a file gave (a shard named by an index), not by the user."""
        f = cls.__new__(cls)
        f._open(path, verify)
        return f

    def _open(self, path: str, verify: bool) -> None:
        self._path = path
        try:
            self._reader = _core.Reader(self._path)
        except (FileNotFoundError, FormatError) as e:
            hint = _sharded_hint(self._path)
            if hint is None:
                raise
            if isinstance(e, FileNotFoundError):
                raise FileNotFoundError(e.errno, f"{e.strerror}; {hint}", e.filename) from e
            raise FormatError(f"{e}; {hint}") from e
        # Codec, checksum and metadata now; each tensor's entry when first asked for.
        self._desc = json.loads(self._reader.describe_file())
        names, parts = self._reader.tensor_names()
        # Listed tensors, and the hidden parts of non-dense ones (sparse indices).
        self._tensors = _Entries(self._reader, names)
        self._parts = _Entries(self._reader, parts)
        if verify:
            self.verify()

    # -- context management -------------------------------------------------
    def __enter__(self) -> DtFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the file handle; later reads raise ValueError."""
        self._reader.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return bool(self._reader.closed)

    @property
    def path(self) -> str:
        """The (expanded) path the file was opened from."""
        return self._path

    # -- header -------------------------------------------------------------
    def keys(self) -> List[str]:
        """Tensor names, in the order they were saved."""
        return list(self._tensors)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._tensors)

    def __contains__(self, name: object) -> bool:
        return name in self._tensors

    def _entry(self, name: str) -> Dict[str, Any]:
        try:
            return self._tensors[name]
        except KeyError:
            raise TensorNotFoundError(f"no tensor named {name!r} in {self._path}") from None

    def _dense_entry(self, name: str, what: str) -> Dict[str, Any]:
        """The entry of ``name``, which ``what`` needs to be a dense tensor."""
        e = self._entry(name)
        if e.get("layout"):
            raise InvalidArgumentError(
                f"tensor {name!r} is sparse: {what} works on dense tensors only; "
                "read it whole with get_tensor or get_sparse"
            )
        return e

    def info(self, name: str) -> Dict[str, Any]:
        """``{name, dtype, shape, nbytes, data_offsets, file_offset, stored_nbytes, chunks, metadata,
        alias_of, layout, part_of}``.

        ``data_offsets`` is ``[begin, end)`` relative to the data region;
        ``chunks`` is the number of compressed chunks (``None`` if uncompressed);
        ``alias_of`` names the tensor a tied weight shares its bytes with;
        ``layout`` describes a sparse tensor (``None`` for a dense one);
        ``part_of`` is always ``None`` here (parts are not tensors of their own).
        """
        e = self._entry(name)
        return json.loads(json.dumps(e))

    def metadata(self) -> Dict[str, Any]:
        """The global metadata."""
        return json.loads(json.dumps(self._desc["metadata"]))

    def has_checksum(self) -> bool:
        """Whether the file ends with a checksum footer."""
        return self._desc["checksum"] is not None

    def is_compressed(self) -> bool:
        """Whether tensors are stored compressed."""
        return self._desc["codec"] is not None

    def checksum_algorithm(self) -> Optional[str]:
        """The footer's algorithm id (``"sha256"``, ``"blake3"``) or ``None``."""
        return self._desc["checksum"]

    def codec(self) -> Optional[str]:
        """The codec id (``"zstd"``, ``"lz4"``) or ``None``."""
        return self._desc["codec"]

    def digest(self) -> Optional[str]:
        """The hex digest stored in the footer, or ``None``."""
        return self._reader.stored_digest()

    # -- data ---------------------------------------------------------------
    def get_bytes(self, name: str) -> bytes:
        """The tensor's raw little-endian bytes."""
        self._entry(name)
        return self._reader.read_bytes(name)

    def get_buffer(self, name: str) -> memoryview:
        """The tensor's bytes as a writable memoryview (no extra copy)."""
        self._entry(name)
        return memoryview(self._reader.read(name))

    def get_tensor(self, name: str, framework: str = "torch", device: Any = None) -> Any:
        """Read one tensor as a ``torch.Tensor`` (default) or ``numpy.ndarray`` (``framework="numpy"``).

        Only this tensor's bytes are read (and decompressed). The result owns
        its memory; it is writable and independent of the file. A sparse
        tensor comes back as a torch sparse COO tensor (see :func:`get_sparse`).
        ``device`` (torch only: ``"cuda"``, ``"cuda:1"``, a ``torch.device``)
        moves the tensor there once read; the default keeps it in host memory.
        """
        e = self._entry(name)
        dev = target_device(device, framework)
        if e.get("layout"):
            return to_device(load_sparse(self, name, framework), dev)
        return to_device(convert(self._reader.read(name), e["dtype"], e["shape"], framework), dev)

    def is_sparse(self, name: str) -> bool:
        """Whether ``name`` is a sparse tensor."""
        return bool(self._entry(name).get("layout"))

    def get_tensor_mmap(self, name: str, framework: str = "torch") -> Any:
        """A zero-copy tensor (or numpy array) whose memory is the mapped file.

        The map is private and copy-on-write: writing to the tensor never
        changes the file. It stays valid after the file is closed, for as long
        as any tensor uses it. Every ``get_tensor_mmap`` of one open file
        shares that map, so a write through one tensor shows in the others
        mapped from the same ``DtFile`` (not in :meth:`get_tensor` copies,
        nor in another ``dt.open`` of the file); clone a tensor you mean to
        change on its own. Only uncompressed files can be mapped; a
        compressed one raises :class:`InvalidArgumentError` (use
        :meth:`get_tensor`). So does a sparse tensor.
        """
        e = self._dense_entry(name, "get_tensor_mmap")
        return convert(self._reader.map(name), e["dtype"], e["shape"], framework)

    def get_tensor_slice(self, name: str, start: int, count: int, framework: str = "torch", device: Any = None) -> Any:
        """Rows ``[start, start + count)`` along the first dimension, reading only those rows.

        A negative ``start`` counts from the end; a range past either end is
        clamped, as Python slicing clamps (so fewer rows may come back). In a
        compressed file only the chunks holding those rows are decompressed.
        0-d and sparse tensors raise :class:`InvalidArgumentError`. ``device``
        is as in :meth:`get_tensor`.
        """
        rows = self._entry(name)["shape"][:1]  # read_rows refuses sparse tensors
        if not rows:
            raise InvalidArgumentError(f"tensor {name!r} is 0-d: it has no rows to slice")
        dev = target_device(device, framework)
        lo, hi = row_bounds(rows[0], start, count)
        return to_device(read_rows(self, name, lo, hi, framework), dev)

    def get_slice(self, name: str, framework: str = "torch", device: Any = None) -> TensorSlice:
        """A lazy handle: ``f.get_slice(name)[a:b]`` reads only rows ``a..b``
        (moved to ``device``, as in :meth:`get_tensor`, when one is given).
        A 0-d tensor has no rows: ``[...]`` or ``[()]`` reads it."""
        return TensorSlice(self, name, framework, device)

    def get_tensors(self, framework: str = "torch", device: Any = None) -> Dict[str, Any]:
        """Every tensor, in saved order (read and decompressed in parallel).

        Tied weights (a name saved as an alias of another) come back as the
        same tensor object, sharing memory as they did when saved.

        With ``device`` (as in :meth:`get_tensor`) each tensor is read and
        moved in turn, so host memory holds one tensor at a time rather than
        the whole file; tied weights are moved once and still share memory.
        Each tensor's chunks are still decoded in parallel, but tensors are
        no longer read side by side: a file of many small tensors loads more
        slowly than to host memory.
        """
        dev = target_device(device, framework)
        if dev is not None:
            moved: Dict[str, Any] = {}

            def load(n: str) -> Any:
                if n not in moved:
                    moved[n] = to_device(self.get_tensor(n, framework), dev)
                return moved[n]

            return {n: load(n if e.get("alias_of") is None else e["alias_of"]) for n, e in self._tensors.items()}
        owners = [n for n, e in self._tensors.items() if e.get("alias_of") is None and not e.get("layout")]
        buffers = self._reader.read_many(owners)
        loaded = {
            n: convert(b, self._tensors[n]["dtype"], self._tensors[n]["shape"], framework)
            for n, b in zip(owners, buffers)
        }
        for n, e in self._tensors.items():
            if e.get("layout"):
                loaded[n] = load_sparse(self, n, framework)
        return {n: loaded[n if e.get("alias_of") is None else e["alias_of"]] for n, e in self._tensors.items()}

    def stats(self, name: str) -> Dict[str, Any]:
        """Statistics of one tensor, computed in Rust over the stored bytes (chunk by chunk).

        Keys: ``name, dtype, shape, nbytes, count, min, max, mean, stddev, nnz,
        nan_count, inf_count``. Floats: ``min/max/mean/stddev`` (population)
        cover finite values only; NaN and ±Inf are counted, never propagated.
        Integers: exact ``min``/``max``. BOOL: ``min``/``max`` are booleans and
        ``mean`` is the fraction true. Complex: ``min/max/mean/stddev`` of
        ``|z|`` plus ``mean_real, mean_imag, stddev_real, stddev_imag``.
        Values are ``None`` when there is nothing to describe (no finite value).
        No Python tensor is created. For a sparse tensor, the stats describe
        its stored values.
        """
        self._entry(name)
        return json.loads(self._reader.stats(name))

    def all_stats(self) -> Dict[str, Dict[str, Any]]:
        """:meth:`stats` of every tensor, in one parallel pass (GIL released)."""
        return {s["name"]: s for s in json.loads(self._reader.all_stats()) if s["name"] in self._tensors}

    def verify(self) -> bool:
        """Check the footer against the file's contents; returns ``True``.

        Raises:
            ChecksumError: the contents do not match the footer.
            NoChecksumError: the file has no footer.
        """
        self._reader.verify()
        return True

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self)} tensors"
        return f"<deathtensors.DtFile {self._path!r} ({state})>"


def open(path: PathLike, verify: bool = False) -> DtFile:  # noqa: A001 - the spec's name
    """Open a file lazily; use as ``with deathtensors.open(path) as f:``.

    With ``verify=True`` the checksum footer is checked first (a file
    without one raises :class:`NoChecksumError`).
    """
    return DtFile(path, verify=verify)


def plugins() -> List[Dict[str, str]]:
    """Every registered plugin: ``[{kind, id, summary, crate}, ...]``."""
    return [{"kind": k, "id": i, "summary": s, "crate": c} for k, i, s, c in _core.plugins()]
