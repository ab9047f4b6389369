"""Type stubs of the Rust extension ``deathtensors._core``."""

import sys
from typing import Any, Callable, List, Optional, Tuple, Union, final

__all__ = [
    "__version__",
    "TENSOR_ALIGNMENT",
    "DEFAULT_CHUNK_BYTES",
    "Buffer",
    "Reader",
    "MappedBuffer",
    "file_mode_for",
    "save",
    "append",
    "repack",
    "plugins",
    "dtypes",
    "codec_and_checksum_ids",
    "cli_main",
    "read_header",
    "info_text",
    "read_remote_tensor",
    "diff_files",
    "MANIFEST_VERSION",
    "manifest_json",
    "write_manifest",
    "read_manifest",
    "manifest_sidecar_path",
    "import_foreign",
    "import_remote",
    "export_foreign",
    "converter_extensions",
    "MAX_INDEX_BYTES",
    "INDEX_SUFFIX",
    "INDEX_FORMAT",
    "read_sharded_index",
    "resolve_sharded_index",
    "checkpoint_index",
    "checkpoint_stem",
    "foreign_index",
]
__version__: str
TENSOR_ALIGNMENT: int
DEFAULT_CHUNK_BYTES: int

@final
class Buffer:
    """Rust-owned bytes exposed through the buffer protocol."""

    def __len__(self) -> int: ...
    if sys.version_info >= (3, 12):  # the buffer protocol, as typing sees it (PEP 688)
        def __buffer__(self, flags: int, /) -> memoryview: ...
        def __release_buffer__(self, buffer: memoryview, /) -> None: ...

@final
class MappedBuffer:
    """A tensor's bytes in a private (copy-on-write) memory map of its file."""

    def __len__(self) -> int: ...
    if sys.version_info >= (3, 12):  # the buffer protocol, as typing sees it (PEP 688)
        def __buffer__(self, flags: int, /) -> memoryview: ...
        def __release_buffer__(self, buffer: memoryview, /) -> None: ...
    def mapping_range(self) -> Tuple[int, int]: ...

@final
class Reader:
    """An open file (thread-safe)."""

    def __new__(cls, path: str, max_header_len: Optional[int] = None) -> Reader: ...
    def describe(self) -> str: ...
    def describe_file(self) -> str: ...
    def tensor_names(self) -> Tuple[List[str], List[str]]: ...
    def describe_tensor(self, name: str) -> str: ...
    def read(self, name: str) -> Buffer: ...
    def read_many(self, names: List[str]) -> List[Buffer]: ...
    def read_bytes(self, name: str) -> bytes: ...
    def read_range(self, name: str, start: int, length: int) -> Buffer: ...
    def read_selection(self, name: str, selection: List[Tuple[int, int, int]]) -> Buffer: ...
    def map(self, name: str) -> MappedBuffer: ...
    def file_identity(self) -> Tuple[int, int]: ...
    def decoded_bytes(self) -> int: ...
    def stats(self, name: str) -> str: ...
    def all_stats(self) -> str: ...
    def stored_nbytes(self, names: List[str]) -> int: ...
    def verify(self) -> None: ...
    def stored_digest(self) -> Optional[str]: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...

def file_mode_for(path: str) -> int: ...
def save(
    path: str,
    entries: List[Tuple[Any, ...]],
    global_metadata: Optional[str] = None,
    codec: Optional[str] = None,
    level: Optional[int] = None,
    checksum: Optional[str] = None,
    chunk_bytes: Optional[int] = None,
    filter: Optional[str] = None,  # noqa: A002
    durable: bool = True,
) -> None: ...
def append(
    path: str,
    entries: List[Tuple[Any, ...]],
    extra_global_metadata: Optional[str] = None,
    overwrite: bool = False,
) -> None: ...
def repack(
    src: str,
    dst: str,
    set_codec: bool = False,
    codec: Optional[str] = None,
    level: Optional[int] = None,
    set_checksum: bool = False,
    checksum: Optional[str] = None,
    durable: bool = True,
) -> None: ...

MANIFEST_VERSION: int

def manifest_json(path: str) -> str: ...
def write_manifest(dt_path: str, manifest_path: Optional[str] = None) -> str: ...
def read_manifest(manifest_path: str) -> str: ...
def manifest_sidecar_path(dt_path: str) -> str: ...
def import_foreign(
    converter: str,
    src: str,
    dst: str,
    codec: Optional[str] = None,
    level: Optional[int] = None,
    checksum: Optional[str] = None,
) -> None: ...
def import_remote(
    converter: str,
    label: str,
    file_len: int,
    fetch: Callable[[int, int], _Fetched],
    dst: str,
    codec: Optional[str] = None,
    level: Optional[int] = None,
    checksum: Optional[str] = None,
) -> None: ...
def export_foreign(converter: str, src: str, dst: str) -> None: ...
def converter_extensions() -> List[Tuple[str, List[str]]]: ...
def diff_files(
    path_a: str, path_b: str, rtol: float = 0.0, atol: float = 0.0, window_bytes: Optional[int] = None
) -> Tuple[str, List[Optional[float]]]: ...
def plugins() -> List[Tuple[str, str, str, str]]: ...
def dtypes() -> List[Tuple[str, int, str, Optional[str], Optional[str]]]: ...
def codec_and_checksum_ids() -> Tuple[List[str], List[str]]: ...
def cli_main(argv: List[str]) -> int: ...

#: What a ``fetch(offset, length)`` of the remote reads returns: any bytes-like object.
_Fetched = Union[bytes, bytearray, memoryview]

def read_header(file_len: int, fetch: Callable[[int, int], _Fetched], max_header_len: Optional[int] = None) -> str: ...
def info_text(
    label: str, file_len: int, fetch: Callable[[int, int], _Fetched], max_header_len: Optional[int] = None
) -> str: ...
def read_remote_tensor(
    file_len: int, fetch: Callable[[int, int], _Fetched], name: str, max_header_len: Optional[int] = None
) -> Buffer: ...

# -- sharded checkpoints (deathtensors::sharded) --------------------------------

MAX_INDEX_BYTES: int
INDEX_SUFFIX: str
INDEX_FORMAT: str

def read_sharded_index(path: str, max_bytes: int, deathtensors: bool = True) -> str: ...
def resolve_sharded_index(path: str) -> str: ...
def checkpoint_index(path: str) -> Optional[str]: ...
def checkpoint_stem(path: str) -> str: ...
def foreign_index(path: str, extension: str) -> Optional[str]: ...
