"""Hugging Face Hub integration: push, pull, list, inspect and convert ``.deathtensors`` files.

Needs the ``huggingface`` extra (``pip install deathtensors[huggingface]``);
``import deathtensors`` never imports ``huggingface_hub``, and importing this
module doesn't either: the client is imported by the first call that needs it,
and a missing client raises :class:`ImportError` saying how to install it.

Downloads go through the standard Hugging Face cache (``$HF_HOME/hub``,
``HF_HUB_CACHE``), so every process and library that uses the cache shares
them, and ``HF_HUB_OFFLINE=1`` serves cached files with no network.

Tokens are resolved in this order: the ``token=`` argument, ``HF_TOKEN``,
``HUGGING_FACE_HUB_TOKEN``, then the ``hf auth login`` (``huggingface-cli
login``) cache. Operations that write (push, convert) fail with
:class:`~deathtensors.HubAuthError` before any request when there is none.

Every upload is one commit: a failure anywhere (an LFS upload, the commit
call) leaves the repo unchanged and raises :class:`~deathtensors.HubUploadError`.
Hub failures raise subclasses of :class:`~deathtensors.HubError`; the
client's own exception is kept as ``__cause__``.

Beyond reading whole files, :class:`HubCachedFile` and :func:`hub_file_info`
read the tensor table of a remote file with HTTP range requests (the
preamble and the header only), and :meth:`HubCachedFile.get_tensor` reads
one tensor of a remote file by range (its stored bytes only, compressed or
not), without downloading the file.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import posixpath
import re
import sys
import tempfile
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from .. import _convert, _core, _sharded
from .._frameworks import convert, target_device, to_device
from ..errors import (
    ChecksumError,
    DeathtensorsError,
    FormatError,
    HubAuthError,
    HubConnectionError,
    HubEntryNotFoundError,
    HubError,
    HubRepoNotFoundError,
    HubRevisionNotFoundError,
    HubUploadError,
    InvalidArgumentError,
    NoChecksumError,
    TensorNotFoundError,
)

if TYPE_CHECKING:  # pragma: no cover
    from .. import DtFile

__all__ = [
    "push_to_hub",
    "load_from_hub",
    "push_sharded_to_hub",
    "load_sharded_from_hub",
    "list_repo_models",
    "hub_model_info",
    "hub_file_info",
    "convert_safetensors_on_hub",
    "resolve_token",
    "HubCachedFile",
    "HubShardedReader",
    "INSTALL_HINT",
]

PathLike = Union[str, "os.PathLike[str]"]

#: What to run when ``huggingface_hub`` is missing.
INSTALL_HINT = "pip install deathtensors[huggingface]"
#: File extensions listed as deathtensors files.
DEATHTENSORS_SUFFIXES = (".deathtensors", ".dt")
#: How to log in, in the error raised when a write has no token.
LOGIN_HINT = (
    "log in with `hf auth login` (or `huggingface-cli login`), set HF_TOKEN, or pass token=... "
    "(a write token from https://huggingface.co/settings/tokens)"
)
#: Bytes asked for by the first range request of a remote header: most headers fit, so one request is enough.
HEADER_PROBE_BYTES = 64 * 1024
_REPO_TYPES = ("model", "dataset", "space")
_URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


#: The oldest huggingface_hub the Hub functions work with (its 1.x HTTP stack and error classes).
MIN_HUGGINGFACE_HUB = (1, 0)


def _hf() -> Any:
    minimum = ".".join(map(str, MIN_HUGGINGFACE_HUB))
    needs = f"the Hugging Face Hub functions of deathtensors need huggingface_hub {minimum} or newer"
    try:
        import huggingface_hub
        import huggingface_hub.constants
        import huggingface_hub.errors
        import huggingface_hub.utils
    except ImportError as e:
        if sys.version_info < (3, 9):
            raise ImportError(
                f"{needs}, which needs Python 3.9 or newer (this is Python "
                f"{sys.version_info[0]}.{sys.version_info[1]}); everything else in deathtensors works here"
            ) from e
        raise ImportError(f"{needs}: {INSTALL_HINT}") from e
    version = getattr(huggingface_hub, "__version__", "")
    if _version_tuple(version) < MIN_HUGGINGFACE_HUB:
        raise ImportError(
            f'{needs}, found {version or "an unknown version"}: pip install -U "huggingface_hub>={minimum}"'
        )
    return huggingface_hub


def _version_tuple(version: str) -> Tuple[int, ...]:
    """``"1.8.0rc1"`` -> ``(1, 8, 0)``; the leading numeric parts only."""
    parts: List[int] = []
    for piece in version.split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.end() != len(piece):
            break
    return tuple(parts)


def _pkg() -> Any:
    import deathtensors

    return deathtensors


def resolve_token(token: Optional[str] = None) -> Optional[str]:
    """The token to send: ``token``, ``HF_TOKEN``, ``HUGGING_FACE_HUB_TOKEN``, then the login cache.

    Returns ``None`` when none is set (empty values count as unset).
    """
    if token:
        return token
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        value = os.environ.get(var, "").strip()
        if value:
            return value
    home = os.environ.get("HF_HOME") or _hf().constants.HF_HOME
    path = os.environ.get("HF_TOKEN_PATH") or os.path.join(os.path.expanduser(home), "token")
    try:
        with open(path, encoding="utf-8") as fh:
            cached = fh.read().strip()
    except OSError:
        return None
    return cached or None


def _check_repo_type(repo_type: str) -> str:
    if repo_type not in _REPO_TYPES:
        raise InvalidArgumentError(f"repo_type must be one of {', '.join(_REPO_TYPES)}, not {repo_type!r}")
    return repo_type


def _write_token(token: Optional[str], action: str) -> str:
    resolved = resolve_token(token)
    if resolved is None:
        raise HubAuthError(f"{action} needs a Hugging Face token and none was found: {LOGIN_HINT}")
    return resolved


def _api(token: Optional[str], endpoint: Optional[str]) -> Any:
    return _hf().HfApi(endpoint=endpoint, token=token if token else False)


def _endpoint(endpoint: Optional[str]) -> str:
    return (endpoint or _hf().constants.ENDPOINT).rstrip("/")


@contextlib.contextmanager
def _hub_errors(what: str, upload: bool = False, endpoint: Optional[str] = None) -> Iterator[None]:
    """Turn the client's exceptions into :class:`HubError` subclasses that say what failed
    (``endpoint``: the Hub asked, when not ``HF_ENDPOINT``'s)."""
    hf = _hf()
    errors = hf.errors
    try:
        yield
    except DeathtensorsError:
        raise
    except errors.HFValidationError as e:  # a malformed repo id or file name: the caller's mistake
        raise InvalidArgumentError(f"{what}: {_first_line(e)}") from e
    except errors.RevisionNotFoundError as e:
        raise HubRevisionNotFoundError(f"{what}: revision not found ({_first_line(e)})") from e
    except errors.RepositoryNotFoundError as e:
        raise HubRepoNotFoundError(
            f"{what}: repository not found, or private and the token cannot see it ({_first_line(e)})"
        ) from e
    except errors.RemoteEntryNotFoundError as e:
        raise HubEntryNotFoundError(f"{what}: file not found in the repo ({_first_line(e)})") from e
    except (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled) as e:
        # The client says "not cached" when the Hub refused the token for a file
        # that is not in the cache: that refusal is the failure to report. Any
        # other answer (5xx, 429) is the Hub being unusable, as a lost connection is.
        http = _http_cause(e, errors.HfHubHTTPError)
        status = getattr(getattr(http, "response", None), "status_code", None)
        if http is not None and status in (401, 403):
            raise _http_error(what, http, upload) from e
        cause = f"HTTP {status}: {_first_line(http)}" if http is not None else _first_line(e)
        raise HubConnectionError(
            f"{what}: not in the local cache and the Hub cannot be used (offline mode or no connection): {cause}"
        ) from e
    except json.JSONDecodeError as e:  # an answer that is not the Hub's JSON (a proxy's login page, say)
        raise HubError(
            f"{what} failed: the server's answer is not JSON; is {_endpoint(endpoint)} a Hugging Face Hub? ({e})"
        ) from e
    except Exception as e:
        http = _http_cause(e, errors.HfHubHTTPError)
        if http is not None:
            raise _http_error(what, http, upload) from e
        detail = f"{type(e).__name__}: {e}"
        if upload and (isinstance(e, OSError) or _is_client_error(e)):
            raise HubUploadError(f"{what} failed ({detail}); nothing was committed, the repo is unchanged") from e
        if _is_client_error(e):
            raise HubConnectionError(f"{what} failed: {detail}") from e
        if type(e) is OSError and e.errno is None and _raised_in_client(e):
            # The client's size check of a download ("Consistency check failed"):
            # fewer (or more) bytes came than the Hub announced.
            raise HubConnectionError(
                f"{what}: the download did not have the size the Hub announced ({_first_line(e)}); "
                "try again (force_download=True, or hub-pull --force-download, fetches the file anew)"
            ) from e
        if isinstance(e, (KeyError, TypeError, ValueError, AttributeError)) and _raised_in_client(e):
            # The client read an answer that lacks what a Hub sends (a key, a type).
            raise _malformed(what, endpoint, detail, upload) from e
        raise


def _malformed(what: str, endpoint: Optional[str], detail: str, upload: bool = False) -> HubError:
    """The error for an answer that is not what a Hugging Face Hub sends."""
    message = (
        f"{what} failed: the answer is not what a Hugging Face Hub sends ({detail}); is {_endpoint(endpoint)} one?"
    )
    if upload:
        return HubUploadError(f"{message} Whether the change was made is unknown: look at the repo")
    return HubError(message)


def _http_error(what: str, http: BaseException, upload: bool) -> HubError:
    """The :class:`HubError` for an HTTP error answer: a refused token (401,
    403) is a :class:`HubAuthError`, any other failed upload a
    :class:`HubUploadError`, a read the Hub cannot serve now (5xx, 429) a
    :class:`HubConnectionError`."""
    status = getattr(getattr(http, "response", None), "status_code", None)
    detail = f"HTTP {status}: {_first_line(http)}"
    unchanged = "; nothing was committed, the repo is unchanged" if upload else ""
    if status in (401, 403):
        return HubAuthError(f"{what}: the Hub refused the token ({detail}){unchanged}: {LOGIN_HINT}")
    if upload:
        return HubUploadError(f"{what} failed ({detail}){unchanged}")
    if status is not None and (status >= 500 or status == 429):  # an outage, as a lost connection is
        return HubConnectionError(f"{what} failed ({detail}): the Hub cannot be used now")
    return HubError(f"{what} failed ({detail})")


def _raised_in_client(e: BaseException) -> bool:
    """Whether ``e`` was raised by code of ``huggingface_hub`` (its innermost frame)."""
    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith("huggingface_hub")


def _chain(e: BaseException) -> List[BaseException]:
    """``e`` and its ``__cause__``/``__context__`` chain (at most 20 deep)."""
    out: List[BaseException] = []
    cur: Optional[BaseException] = e
    while cur is not None and len(out) < 20:
        out.append(cur)
        cur = cur.__cause__ or cur.__context__
    return out


def _http_cause(e: BaseException, cls: type) -> Optional[BaseException]:
    """The first exception of ``e``'s chain that is a ``cls``."""
    return next((c for c in _chain(e) if isinstance(c, cls)), None)


def _is_client_error(e: BaseException) -> bool:
    """Whether ``e`` comes from the HTTP stack (a refused connection, a timeout, a failed upload...)."""
    return any(
        type(c).__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "huggingface_hub") for c in _chain(e)
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " ".join(lines[:3]) if lines else type(e).__name__


def _blob_url(endpoint: str, repo_type: str, repo_id: str, revision: Optional[str], path: str) -> str:
    from urllib.parse import quote

    rev = quote(revision or "main", safe="")  # refs/pr/1 is one path segment: refs%2Fpr%2F1
    return f"{endpoint}/{_URL_PREFIX[repo_type]}{repo_id}/blob/{rev}/{quote(path)}"


def _repo_path(path: str, what: str) -> str:
    """``path`` (a file or folder in a repo) as the Hub stores it: without a
    leading ``/`` or ``.`` components and repeated slashes. A path that climbs
    out of the repo (``..``) or into ``.git`` or ``.cache`` is refused up
    front as :class:`InvalidArgumentError` (the client raised a bare
    ``ValueError`` mid-call), and so is one that is not valid UTF-8 (a local
    file's name can be; a repo's paths cannot)."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"{what}: {path!r} is not valid UTF-8, as a path in a repo must be") from None
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if ".." in parts or any(p in (".git", ".cache") for p in parts):
        raise InvalidArgumentError(f"{what}: {path!r} is not a path inside the repo (no '..', '.git' or '.cache')")
    return "/".join(parts)


def _file_in_repo(filename: str, what: str) -> str:
    """:func:`_repo_path` of a file to read, which must name one: a name that
    climbs out of the repo, or names nothing, is refused before any request."""
    name = _repo_path(filename, what)
    if not name:
        raise InvalidArgumentError(f"{what}: {filename!r} names no file in the repo")
    return name


def _check_local(path: str, verify: bool) -> None:
    """Refuse to upload a file that is not a valid deathtensors file (or whose footer does not match)."""
    with _pkg().open(path) as f:
        if verify and f.has_checksum():
            f.verify()


def _commit(
    api: Any,
    repo_id: str,
    operations: List[Any],
    *,
    repo_type: str,
    revision: Optional[str],
    private: Optional[bool],
    message: str,
    create_repo: bool,
    what: str,
    parent_commit: Optional[str] = None,
) -> None:
    """One commit of ``operations``; with ``parent_commit``, only if the branch is still there."""
    if create_repo:
        # The client insists on an SDK for a Space, even one that exists: a new
        # Space that only holds files is a static one.
        sdk = {"space_sdk": "static"} if repo_type == "space" else {}
        with _hub_errors(f"creating {repo_id}", endpoint=api.endpoint):
            api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, **sdk)
    with _hub_errors(what, upload=True, endpoint=api.endpoint):
        api.create_commit(
            repo_id,
            operations=operations,
            commit_message=message,
            repo_type=repo_type,
            revision=revision,
            parent_commit=parent_commit,
        )


# -- push ---------------------------------------------------------------------------------------------


def push_to_hub(
    repo_id: str,
    local_path: PathLike,
    path_in_repo: Optional[str] = None,
    *,
    token: Optional[str] = None,
    revision: Optional[str] = None,
    repo_type: str = "model",
    private: Optional[bool] = None,
    commit_message: Optional[str] = None,
    create_repo: bool = True,
    verify: bool = True,
    endpoint: Optional[str] = None,
) -> str:
    """Upload a ``.deathtensors`` file to a Hub repo in one commit; return its URL on the Hub.

    The file is checked first (its header, and its checksum footer when it
    has one and ``verify`` is true), so a damaged file is never pushed.

    Args:
        repo_id: ``namespace/name``. Created (``private`` or public; a Space
            as a static one) when it does not exist and ``create_repo`` is true.
        local_path: The file (``~`` and ``$VARS`` expanded).
        path_in_repo: Where it goes (default: the file's name).
        token: See :func:`resolve_token`. Required.
        revision: The branch to commit to (default: ``main``).
        repo_type: ``"model"``, ``"dataset"`` or ``"space"``.
        commit_message: Default: ``"Upload {path_in_repo} with deathtensors"``.
        endpoint: The Hub URL (default: ``HF_ENDPOINT`` or huggingface.co).

    Returns:
        ``{endpoint}/{repo_id}/blob/{revision}/{path_in_repo}``.

    Raises:
        HubAuthError: no token (before any request) or a refused one.
        HubUploadError: the upload or the commit failed; the repo is unchanged.
        HubRevisionNotFoundError: ``revision`` is not a branch of the repo.
        FormatError, ChecksumError: the local file is not valid.
    """
    _check_repo_type(repo_type)
    tok = _write_token(token, f"pushing to {repo_id}")
    path = _pkg().expand_path(local_path)
    name = _repo_path(path_in_repo or os.path.basename(path), f"pushing to {repo_id}")
    if not name:
        raise InvalidArgumentError(f"pushing to {repo_id}: path_in_repo {path_in_repo!r} names no file")
    _check_local(path, verify)
    hf = _hf()
    api = _api(tok, endpoint)
    _commit(
        api,
        repo_id,
        [hf.CommitOperationAdd(path_in_repo=name, path_or_fileobj=path)],
        repo_type=repo_type,
        revision=revision,
        private=private,
        message=commit_message or f"Upload {name} with deathtensors",
        create_repo=create_repo,
        what=f"uploading {name} to {repo_id}",
    )
    return _blob_url(_endpoint(endpoint), repo_type, repo_id, revision, name)


def push_sharded_to_hub(
    repo_id: str,
    local_path: PathLike,
    path_in_repo: Optional[str] = None,
    *,
    token: Optional[str] = None,
    revision: Optional[str] = None,
    repo_type: str = "model",
    private: Optional[bool] = None,
    commit_message: Optional[str] = None,
    create_repo: bool = True,
    verify: bool = True,
    endpoint: Optional[str] = None,
) -> str:
    """Upload a sharded checkpoint (every shard and the index) in one commit; return the index's URL.

    ``local_path`` is what :func:`deathtensors.save_sharded` got (its base
    path, e.g. ``big_model.deathtensors``) or the index itself. Every shard
    is checked like :func:`push_to_hub` checks a file. Shards of an earlier
    push with another shard count (``{stem}-NNNNN-of-MMMMM.deathtensors`` in
    the same repo folder, not in the new index) are deleted in the same
    commit, so the repo never holds a mix.

    Args:
        path_in_repo: The repo folder for the files (default: the root).
        Others: as in :func:`push_to_hub`.

    Returns:
        The Hub URL of the index.
    """
    _check_repo_type(repo_type)
    tok = _write_token(token, f"pushing to {repo_id}")
    pkg = _pkg()
    with pkg.open_sharded(local_path) as sr:
        index_path = sr.path
        shards = sr.shards()
        for shard in shards:
            _check_local(sr.shard_path(shard), verify)
    folder = _repo_path(path_in_repo or "", f"pushing to {repo_id}")
    index_name = _repo_path(os.path.basename(index_path), f"pushing to {repo_id}")
    stem = index_name[: -len(_sharded.INDEX_SUFFIX)] if index_name.endswith(_sharded.INDEX_SUFFIX) else None
    hf = _hf()
    api = _api(tok, endpoint)

    def in_repo(name: str) -> str:
        return posixpath.join(folder, name) if folder else name

    ops: List[Any] = [
        hf.CommitOperationAdd(path_in_repo=in_repo(s), path_or_fileobj=os.path.join(os.path.dirname(index_path), s))
        for s in shards
    ]
    ops.append(hf.CommitOperationAdd(path_in_repo=in_repo(index_name), path_or_fileobj=index_path))
    if stem is not None:
        stale = re.compile(re.escape(stem) + r"-\d{5,}-of-\d{5,}" + re.escape(_sharded.SHARD_SUFFIX))
        with contextlib.suppress(HubRepoNotFoundError, HubRevisionNotFoundError):
            with _hub_errors(f"listing {repo_id}", endpoint=api.endpoint):
                existing = api.list_repo_files(repo_id, revision=revision, repo_type=repo_type)
            keep = {in_repo(s) for s in shards}
            for f in existing:
                if posixpath.dirname(f) == folder and stale.fullmatch(posixpath.basename(f)) and f not in keep:
                    ops.append(hf.CommitOperationDelete(path_in_repo=f))
    _commit(
        api,
        repo_id,
        ops,
        repo_type=repo_type,
        revision=revision,
        private=private,
        message=commit_message or f"Upload {index_name} and {len(shards)} shard(s) with deathtensors",
        create_repo=create_repo,
        what=f"uploading {index_name} and {len(shards)} shard(s) to {repo_id}",
    )
    return _blob_url(_endpoint(endpoint), repo_type, repo_id, revision, in_repo(index_name))


# -- pull -----------------------------------------------------------------------------------------------


def _download(
    repo_id: str,
    filename: str,
    *,
    revision: Optional[str],
    repo_type: str,
    token: Optional[str],
    cache_dir: Optional[PathLike],
    local_files_only: bool,
    endpoint: Optional[str],
    max_bytes: Optional[int] = None,
    force_download: bool = False,
) -> str:
    """``hf_hub_download`` with our errors; with ``max_bytes`` (an index: JSON
    read whole into memory), a file the Hub says is larger is refused before
    anything is downloaded."""
    hf = _hf()
    what = f"downloading {filename} from {repo_id}"
    filename = _file_in_repo(filename, what)
    if force_download and local_files_only:
        raise InvalidArgumentError(f"{what}: force_download and local_files_only contradict each other")

    def download(local_only: bool) -> str:
        return str(
            hf.hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                repo_type=repo_type,
                token=resolve_token(token) or False,
                cache_dir=cache_dir,
                local_files_only=local_only,
                force_download=force_download and not local_only,
                endpoint=endpoint,
                library_name="deathtensors",
                library_version=_core.__version__,
            )
        )

    with _hub_errors(what, endpoint=endpoint):
        if max_bytes is not None and not local_files_only and not hf.constants.HF_HUB_OFFLINE:
            url = hf.hf_hub_url(repo_id, filename, repo_type=repo_type, revision=revision, endpoint=endpoint)
            try:
                meta = hf.get_hf_file_metadata(
                    url,
                    token=resolve_token(token) or False,
                    library_name="deathtensors",
                    library_version=_core.__version__,
                    endpoint=endpoint,
                )
            except Exception as e:
                if force_download or _names_a_missing_thing(e):
                    raise
                # The Hub cannot be asked (down, no connection, a 5xx): a cached
                # copy serves, as hf_hub_download serves a single file.
                try:
                    return download(local_only=True)
                except Exception:
                    raise e from None
            if meta.size is not None and meta.size > max_bytes:
                raise FormatError(
                    f"{filename} of {repo_id} is {meta.size} bytes, over the limit of {max_bytes} bytes "
                    "for a sharded checkpoint's index; nothing was downloaded"
                )
        return download(local_only=local_files_only)


def _names_a_missing_thing(e: BaseException) -> bool:
    """Whether the Hub answered that the repo, revision or file does not exist,
    or that the caller's arguments are malformed: answers a cached copy must not hide."""
    errors = _hf().errors
    missing = (errors.RepositoryNotFoundError, errors.RevisionNotFoundError, errors.RemoteEntryNotFoundError)
    return isinstance(e, (*missing, errors.HFValidationError))


def _fetch(repo_id: str, name: str, rev: Optional[str], **options: Any) -> str:
    """:func:`_download` with the revision positional: the ``fetch(name, revision)`` of
    sharded reads. A JSON index is refused over :data:`MAX_INDEX_BYTES` before it is fetched."""
    if name.endswith(".json"):
        options.setdefault("max_bytes", _sharded.MAX_INDEX_BYTES)
    return _download(repo_id, name, revision=rev, **options)


def load_from_hub(
    repo_id: str,
    filename: str,
    *,
    revision: Optional[str] = None,
    repo_type: str = "model",
    token: Optional[str] = None,
    verify: bool = False,
    cache_dir: Optional[PathLike] = None,
    local_files_only: bool = False,
    endpoint: Optional[str] = None,
    force_download: bool = False,
) -> DtFile:
    """Download a ``.deathtensors`` file into the Hugging Face cache (once) and open it lazily.

    Returns a :class:`deathtensors.DtFile` (a context manager); only the
    tensors asked for are read from the cached file. With ``verify=True`` the
    checksum footer is checked on open (:class:`~deathtensors.ChecksumError`
    on a mismatch, :class:`~deathtensors.NoChecksumError` when there is none).
    ``force_download=True`` fetches the file again even when it is cached
    (to replace a cached copy that was damaged).

    Raises:
        HubRepoNotFoundError, HubRevisionNotFoundError, HubEntryNotFoundError:
            the repo, revision or file does not exist.
        HubConnectionError: the Hub cannot be reached (or offline mode) and
            the file is not cached, or the download was cut short.
        InvalidArgumentError: ``filename`` is not a file inside the repo
            (``..``, ``.git``, empty).
    """
    _check_repo_type(repo_type)
    path = _download(
        repo_id,
        filename,
        revision=revision,
        repo_type=repo_type,
        token=token,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        endpoint=endpoint,
        force_download=force_download,
    )
    return _open_cached(path, verify)


def _open_cached(path: str, verify: bool) -> DtFile:
    """Open a file of the cache; a footer that does not match says how to fetch it anew."""
    try:
        return _pkg().open(path, verify=verify)
    except NoChecksumError:
        raise
    except ChecksumError as e:
        raise ChecksumError(
            f"{e} (the copy in the Hugging Face cache; force_download=True, or hub-pull --force-download, "
            "fetches it again)"
        ) from e


def _index_name(filename: str) -> str:
    if filename.endswith(".json"):
        return filename
    return _sharded._stem(filename) + _sharded.INDEX_SUFFIX


def _snapshot_commit(path: str, filename: str) -> Optional[str]:
    """The commit a cache path belongs to (``.../snapshots/<commit>/<filename>``), if it has that shape."""
    parts = os.path.normpath(path).split(os.sep)
    depth = len(filename.split("/"))
    if len(parts) > depth + 1 and parts[-depth - 2] == "snapshots":
        return parts[-depth - 1]
    return None


class HubShardedReader(_sharded.ShardedReader):
    """A sharded checkpoint on the Hub, read lazily (see :func:`load_sharded_from_hub`).

    The index is downloaded when it is opened; a shard is downloaded (into
    the Hugging Face cache) the first time one of its tensors is asked for.
    Every shard comes from the commit the index came from, so a push that
    lands meanwhile cannot mix two versions.
    """

    # Shards are pinned by the index's commit, and downloaded only when used.
    _pins_shard_files = False

    def __init__(
        self,
        index_path: str,
        *,
        repo_id: str,
        index_in_repo: str,
        fetch: Callable[[str, Optional[str]], str],
        revision: Optional[str],
        verify: bool = False,
    ) -> None:
        super().__init__(index_path, verify=verify)
        self.repo_id = repo_id
        self.index_in_repo = index_in_repo
        self.commit = _snapshot_commit(index_path, index_in_repo)
        self._fetch = fetch
        self._revision = self.commit or revision
        self._downloaded: Dict[str, str] = {}  # shard -> local path, in download order

    def _shard_file(self, shard: str) -> str:
        # A shard visited once (get_tensors, all_stats and verify close the
        # shards they open) is not asked of the Hub again.
        local = self._downloaded.get(shard)
        if local is None:
            folder = posixpath.dirname(self.index_in_repo)
            local = self._fetch(posixpath.join(folder, shard) if folder else shard, self._revision)
            self._downloaded[shard] = local
        return local

    def downloaded_shards(self) -> List[str]:
        """Shard file names downloaded (or found in the cache) by this reader, in order."""
        return list(self._downloaded)


def load_sharded_from_hub(
    repo_id: str,
    filename: str,
    *,
    revision: Optional[str] = None,
    repo_type: str = "model",
    token: Optional[str] = None,
    verify: bool = False,
    cache_dir: Optional[PathLike] = None,
    local_files_only: bool = False,
    endpoint: Optional[str] = None,
    force_download: bool = False,
) -> HubShardedReader:
    """Open a sharded checkpoint on the Hub: the index now, each shard when first needed.

    ``filename`` is the checkpoint's base name (``big_model.deathtensors``)
    or its index (``big_model.deathtensors.index.json``), possibly in a repo
    folder. ``get_tensor`` downloads only the shard holding that tensor.
    ``verify=True`` checks each shard's footer when it is opened.
    ``force_download=True`` fetches the index, and each shard when it is
    first needed, again even when they are cached.

    Returns:
        A :class:`HubShardedReader` (a :class:`deathtensors.ShardedReader`).
    """
    _check_repo_type(repo_type)
    index_in_repo = _index_name(_file_in_repo(filename, f"reading {filename} of {repo_id}"))

    fetch = functools.partial(
        _fetch,
        repo_id,
        repo_type=repo_type,
        token=token,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        endpoint=endpoint,
        force_download=force_download,
    )
    index_path = fetch(index_in_repo, revision)
    return HubShardedReader(
        index_path, repo_id=repo_id, index_in_repo=index_in_repo, fetch=fetch, revision=revision, verify=verify
    )


# -- listing and info ---------------------------------------------------------------------------------


def list_repo_models(
    repo_id: str,
    *,
    revision: Optional[str] = None,
    repo_type: str = "model",
    token: Optional[str] = None,
    endpoint: Optional[str] = None,
) -> List[str]:
    """The paths of every ``.deathtensors`` (and legacy ``.dt``) file in a repo, in the repo's order."""
    _check_repo_type(repo_type)
    api = _api(resolve_token(token), endpoint)
    with _hub_errors(f"listing {repo_id}", endpoint=endpoint):
        files = api.list_repo_files(repo_id, revision=revision, repo_type=repo_type)
    if not all(isinstance(f, str) for f in files):
        raise _malformed(f"listing {repo_id}", endpoint, "a file path that is not a string")
    return [f for f in files if f.endswith(DEATHTENSORS_SUFFIXES)]


def hub_model_info(
    repo_id: str,
    *,
    revision: Optional[str] = None,
    repo_type: str = "model",
    token: Optional[str] = None,
    endpoint: Optional[str] = None,
) -> Dict[str, Any]:
    """Repo metadata: ``id``, ``sha``, ``downloads``, ``likes``, ``private``, ``deathtensors_files``,
    ``sharded_indexes`` (deathtensors indexes) and ``files`` (every file)."""
    _check_repo_type(repo_type)
    api = _api(resolve_token(token), endpoint)
    what = f"reading the info of {repo_id}"
    with _hub_errors(what, endpoint=endpoint):
        info = api.repo_info(repo_id, revision=revision, repo_type=repo_type)
    names = [getattr(s, "rfilename", None) for s in (getattr(info, "siblings", None) or [])]
    counts = {k: getattr(info, k, None) or 0 for k in ("downloads", "likes")}
    files = [f for f in names if isinstance(f, str)]
    if len(files) != len(names):
        raise _malformed(what, endpoint, "a file name that is not a string")
    if not isinstance(getattr(info, "id", None), str):
        raise _malformed(what, endpoint, "no repo id")
    if not all(type(v) is int for v in counts.values()):
        raise _malformed(what, endpoint, f"counts that are not integers: {counts}")
    return {
        "id": info.id,
        "sha": getattr(info, "sha", None),
        "repo_type": repo_type,
        **counts,
        "private": getattr(info, "private", None),
        "deathtensors_files": [f for f in files if f.endswith(DEATHTENSORS_SUFFIXES)],
        "sharded_indexes": [f for f in files if f.endswith(_sharded.INDEX_SUFFIX)],
        "files": files,
    }


class HubCachedFile:
    """One ``.deathtensors`` file in a Hub repo, read from the Hugging Face cache or by HTTP range.

    Nothing is fetched when it is created. :meth:`header` (and :meth:`keys`,
    :meth:`info`) read the tensor table with range requests — the preamble and
    header only — unless the file is already in the cache; :meth:`get_tensor`
    reads one tensor by range (its stored bytes only; a compressed tensor is
    decoded from its chunks); :meth:`download` / :meth:`open` fetch
    the whole file once, into the shared cache. :attr:`bytes_fetched` counts
    the body bytes of the range requests made.

    A range read is checked against the file's header but not against its
    checksum footer (that needs the whole file): use ``open(verify=True)``
    for that.

    A branch or tag is resolved to its commit on the first read (one ``HEAD``
    request, none in offline mode or when ``revision`` is a commit hash),
    and every later read is of that commit: a push made meanwhile can neither
    mix two versions of the file under one header nor leave a cached copy of
    an older commit standing in for the branch.
    """

    def __init__(
        self,
        repo_id: str,
        filename: str,
        *,
        revision: Optional[str] = None,
        repo_type: str = "model",
        token: Optional[str] = None,
        cache_dir: Optional[PathLike] = None,
        endpoint: Optional[str] = None,
    ) -> None:
        with _hub_errors(f"reading {filename} of {repo_id}", endpoint=endpoint):
            _hf().utils.validate_repo_id(repo_id)
        self.repo_id = repo_id
        self.filename = _file_in_repo(filename, f"reading {filename} of {repo_id}")
        self.revision = revision
        self.repo_type = _check_repo_type(repo_type)
        self._token = token
        self._cache_dir = cache_dir
        self._endpoint = endpoint
        self._desc: Optional[Dict[str, Any]] = None
        self._probe: Optional[Tuple[bytearray, int]] = None
        #: The commit every read is of, once resolved (see the class docstring).
        self._commit: Optional[str] = revision if _is_commit_hash(revision) else None
        self.bytes_fetched = 0

    def __repr__(self) -> str:
        return f"HubCachedFile({self.repo_id!r}, {self.filename!r}, revision={self.revision!r})"

    @property
    def url(self) -> str:
        """The file's ``resolve`` URL (of the resolved commit, once there is one)."""
        with _hub_errors(f"reading {self.filename} of {self.repo_id}", endpoint=self._endpoint):
            return str(
                _hf().hf_hub_url(
                    self.repo_id,
                    self.filename,
                    repo_type=self.repo_type,
                    revision=self._commit or self.revision,
                    endpoint=self._endpoint,
                )
            )

    @property
    def cached_path(self) -> Optional[str]:
        """The file's path in the cache, if it was downloaded already (no request).

        Before the first read resolves the revision, a branch means whichever
        commit the cache last saw it at."""
        with _hub_errors(f"reading {self.filename} of {self.repo_id}", endpoint=self._endpoint):
            found = _hf().try_to_load_from_cache(
                self.repo_id,
                self.filename,
                cache_dir=self._cache_dir,
                revision=self._commit or self.revision,
                repo_type=self.repo_type,
            )
        return found if isinstance(found, str) else None

    def _resolve(self) -> None:
        """Pin reads to the commit the revision names now (one ``HEAD`` request, once)."""
        hf = _hf()
        if self._commit is not None or hf.constants.HF_HUB_OFFLINE:
            return
        with _hub_errors(f"reading {self.filename} of {self.repo_id}", endpoint=self._endpoint):
            meta = hf.get_hf_file_metadata(
                self.url,
                token=resolve_token(self._token) or False,
                library_name="deathtensors",
                library_version=_core.__version__,
                endpoint=self._endpoint,
            )
        if not _is_commit_hash(meta.commit_hash):
            # It becomes part of URLs and cache paths: a name like ".." would lead elsewhere.
            raise HubError(
                f"the Hub named no valid commit for {self.filename} of {self.repo_id} "
                f"(X-Repo-Commit {meta.commit_hash!r}; a commit is 40 hex digits)"
            )
        self._commit = meta.commit_hash

    def download(self, local_files_only: bool = False, force_download: bool = False) -> str:
        """Download the whole file into the cache (once, or again with ``force_download``); return its path."""
        return _download(
            self.repo_id,
            self.filename,
            revision=self._commit or self.revision,
            repo_type=self.repo_type,
            token=self._token,
            cache_dir=self._cache_dir,
            local_files_only=local_files_only,
            endpoint=self._endpoint,
            force_download=force_download,
        )

    def open(self, verify: bool = False) -> DtFile:
        """:meth:`download`, then open the cached file (a :class:`deathtensors.DtFile`)."""
        return _open_cached(self.download(), verify)

    # -- range reads --------------------------------------------------------------------------------
    def _range(self, start: int, end: int) -> Tuple[bytearray, int]:
        """Bytes ``[start, end)`` and the file's total size, by one range request.

        The body is received into one buffer of the range's size (the core
        copies it once more, into the tensor's own buffer): a tensor read
        costs about twice its size at the peak, not four times."""
        hf = _hf()
        headers = hf.utils.build_hf_headers(
            token=resolve_token(self._token) or False,
            library_name="deathtensors",
            library_version=_core.__version__,
        )
        headers["Range"] = f"bytes={start}-{end - 1}"
        headers["Accept-Encoding"] = "identity"
        want = end - start
        what = f"reading {self.filename} of {self.repo_id}"

        def same_size(total: int) -> None:
            if self._probe is not None and total != self._probe[1]:
                raise HubError(
                    f"{self.filename} of {self.repo_id} changed size on the Hub while it was read "
                    f"({self._probe[1]} then {total} bytes)"
                )

        with _hub_errors(what, endpoint=self._endpoint):
            # The client's download timeout, per socket read: a server that stops
            # sending fails the read (HubConnectionError) instead of hanging it.
            timeout = hf.constants.HF_HUB_DOWNLOAD_TIMEOUT
            with hf.utils.get_session().stream(
                "GET", self.url, headers=headers, follow_redirects=True, timeout=timeout
            ) as r:
                unsatisfiable = re.fullmatch(r"bytes \*/(\d{1,100})", r.headers.get("Content-Range", "").strip())
                if r.status_code == 416 and unsatisfiable and start >= int(unsatisfiable.group(1)):
                    # A range past the end (an empty file): no bytes, and the core says the file is short.
                    same_size(int(unsatisfiable.group(1)))
                    return bytearray(), int(unsatisfiable.group(1))
                hf.utils.hf_raise_for_status(r)
                total = _total_size(r.headers.get("Content-Range"), r.status_code, r.headers.get("Content-Length"))
                same_size(total)
                if r.status_code == 206 and not r.headers.get("Content-Range", "").startswith(f"bytes {start}-"):
                    raise HubError(f"the Hub answered range {r.headers.get('Content-Range')!r}, not bytes={start}-")
                if r.status_code == 200 and start > 0:
                    raise HubError("the Hub ignored an HTTP range request; download the file instead")
                data = bytearray(want)
                view = memoryview(data)
                got = 0
                for piece in r.iter_bytes():
                    n = min(len(piece), want - got)
                    view[got : got + n] = piece[:n]
                    got += n
                    if got >= want:
                        break
                view.release()
        self.bytes_fetched += got
        if got < want and start + got < total:
            # The file has those bytes, but the answer stopped short (a dropped
            # connection, a broken proxy): the Hub's failure, not the file's.
            raise HubConnectionError(
                f"{what}: the Hub sent {got} of the {want} bytes asked for at offset {start} "
                f"of a {total}-byte file; try again"
            )
        if got < want:
            del data[got:]  # a range past the end of the file: the core reports the file as short
        return data, total

    def header(self) -> Dict[str, Any]:
        """The file's description: ``file_size``, ``codec``, ``checksum``, ``metadata``, ``tensors``.

        The same shape as the local reader's; read from the cache when the
        file is there, otherwise with at most two range requests. The header
        is validated by the same Rust code as a local open (typed errors).
        """
        if self._desc is not None:
            return self._desc

        self._resolve()
        local = self.cached_path
        if local is not None:
            with _pkg().open(local) as f:
                self._desc = json.loads(f._reader.describe())
            return self._desc
        total, fetch = self._fetcher(keep=True)
        self._desc = json.loads(_core.read_header(total, fetch))
        return self._desc

    def _fetcher(self, keep: bool = False) -> Tuple[int, Callable[[int, int], bytearray]]:
        """The file's size and a ``fetch(offset, length)`` that serves the file's
        start from memory: the first :data:`HEADER_PROBE_BYTES` (one range
        request, made once), plus, with ``keep`` (header reads), the rest of a
        header longer than that, fetched once and kept, so that reading a
        tensor later does not fetch the header again. Anything else is a range
        request of its own."""
        probe = self._probe if self._probe is not None else self._range(0, HEADER_PROBE_BYTES)
        self._probe = probe
        total = probe[1]

        def fetch(offset: int, length: int) -> bytearray:
            first = self._probe[0] if self._probe else bytearray()
            end = offset + length
            if end <= len(first):
                return first[offset:end]
            if keep and offset <= len(first):
                first += self._range(len(first), end)[0]
                self._probe = (first, total)
                return first[offset:end]
            return self._range(offset, end)[0]

        return total, fetch

    def info_text(self) -> str:
        """What ``deathtensors info`` prints for this file, read as :meth:`header` reads it
        (from the cache when the file is there, else by range)."""
        self._resolve()
        label = f"{self.repo_id}/{self.filename}" + (f" @ {self.revision}" if self.revision else "")
        local = self.cached_path
        if local is not None:
            with open(local, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                return str(_core.info_text(label, size, lambda offset, n: os.pread(fh.fileno(), n, offset)))
        total, fetch = self._fetcher(keep=True)
        return str(_core.info_text(label, total, fetch))

    def keys(self) -> List[str]:
        """Tensor names, in saved order (reads the header)."""
        return [t["name"] for t in self.header()["tensors"] if t.get("part_of") is None]

    def info(self, name: str) -> Dict[str, Any]:
        """A tensor's entry (``dtype``, ``shape``, ``nbytes``, ``file_offset``, ``stored_nbytes``...)."""
        for t in self.header()["tensors"]:
            if t["name"] == name and t.get("part_of") is None:
                return dict(t)
        raise TensorNotFoundError(f"no tensor named {name!r} in {self.filename} of {self.repo_id}")

    def get_tensor(self, name: str, framework: str = "torch", device: Any = None) -> Any:
        """One tensor: from the cached file if present, else by range requests.

        Without a cached copy, the header is read by range and then the
        tensor's stored bytes with one more range request, compressed or
        not; the Rust reader decodes them (chunks in parallel) with the same
        checks as a local read. Non-dense tensors (sparse layouts) are read
        from the downloaded file. ``device`` is as in
        :meth:`deathtensors.DtFile.get_tensor`.
        """
        dev = target_device(device, framework)
        self._resolve()
        local = self.cached_path
        if local is None:
            entry = self.info(name)
            if entry.get("layout") is None:
                total, fetch = self._fetcher()
                buf = _core.read_remote_tensor(total, fetch, name)
                return to_device(convert(buf, entry["dtype"], entry["shape"], framework), dev)
            local = self.download()
        with _pkg().open(local) as f:
            return to_device(f.get_tensor(name, framework=framework), dev)


def _is_commit_hash(revision: Optional[str]) -> bool:
    """Whether ``revision`` is a full commit hash (40 hex digits), which names one version for good."""
    return revision is not None and len(revision) == 40 and all(c in "0123456789abcdef" for c in revision)


def _total_size(content_range: Optional[str], status: int, length: Optional[str]) -> int:
    size = None
    if status == 206 and content_range:
        m = re.fullmatch(r"bytes \d{1,100}-\d{1,100}/(\d{1,100})", content_range.strip())
        if m:
            size = int(m.group(1))
    elif status == 200 and length is not None and length.isdigit() and len(length) <= 100:
        size = int(length)
    if size is not None:
        if size >= 2**63:  # no file is that large: a hostile or broken server
            raise HubError(f"the Hub claims a file size of {size} bytes, which no file can have")
        return size
    raise HubError(f"the Hub gave no file size (Content-Range {content_range!r}, status {status})")


def hub_file_info(
    repo_id: str,
    filename: str,
    *,
    revision: Optional[str] = None,
    repo_type: str = "model",
    token: Optional[str] = None,
    endpoint: Optional[str] = None,
) -> Dict[str, Any]:
    """The tensor table of a remote ``.deathtensors`` file, read by HTTP range without downloading it.

    Returns :meth:`HubCachedFile.header` plus ``repo_id``, ``filename`` and
    ``bytes_fetched`` (the bytes the range requests returned).
    """
    f = HubCachedFile(repo_id, filename, revision=revision, repo_type=repo_type, token=token, endpoint=endpoint)
    return _file_info(f)


def _file_info(f: HubCachedFile) -> Dict[str, Any]:
    """:func:`hub_file_info` of an existing :class:`HubCachedFile`."""
    out = dict(f.header())
    out.update({"repo_id": f.repo_id, "filename": f.filename, "bytes_fetched": f.bytes_fetched})
    return out


# -- conversion -------------------------------------------------------------------------------------

#: How far a streamed conversion reads ahead of a read that follows on from
#: the one before: the tensors of a source are read in order, and small ones
#: then share one range request instead of one each.
STREAM_READ_AHEAD_BYTES = 8 << 20


class _ReadAhead:
    """A ``fetch(offset, length)`` over another that reads ahead: a read that
    starts where the one before ended and is shorter than ``block`` fetches
    ``block`` bytes, and later reads are served from them, in part when they
    run past their end (only the rest is fetched, read ahead again if the
    read follows on). Other reads (the samples the writer takes from the
    middle of tensors, tensors written in an order that is not their bytes')
    are fetched as asked. At most ``block`` bytes are held; reads that go
    forward through the file fetch no byte twice."""

    def __init__(self, fetch: Callable[[int, int], bytearray], total: int, block: int) -> None:
        self._fetch = fetch
        self._total = total
        self._block = block
        self._start = 0
        self._buf = bytearray()
        self._next = -1

    def __call__(self, offset: int, length: int) -> Union[bytes, bytearray, memoryview]:
        end = offset + length
        sequential, self._next = offset == self._next, end
        at, held_end = offset - self._start, self._start + len(self._buf)
        if 0 <= at and end <= held_end:
            return memoryview(self._buf)[at : at + length]
        head = b""
        if 0 <= at < len(self._buf):  # starts in what is held: fetch only the rest
            head, offset, length = bytes(memoryview(self._buf)[at:]), held_end, end - held_end
        if sequential and length < self._block:
            self._start, self._buf = offset, self._fetch(offset, max(length, min(self._block, self._total - offset)))
            rest: Union[bytearray, memoryview] = memoryview(self._buf)[:length]  # short if the answer is
        else:
            rest = self._fetch(offset, length)
        return head + rest if head else rest


def _import_streamed(f: HubCachedFile, dst: str, options: Tuple[Optional[str], Optional[int], Optional[str]]) -> None:
    """Convert the safetensors file ``f`` to ``dst`` (``options``: codec, level,
    checksum): from the cache when it is there, otherwise read by range as it
    is written."""
    f._resolve()
    local = f.cached_path
    if local is not None:
        _core.import_foreign(_convert._CONVERTER, local, dst, *options)
        return
    total, fetch = f._fetcher()
    label = f"{f.filename} of {f.repo_id}"
    reads = _ReadAhead(fetch, total, STREAM_READ_AHEAD_BYTES)
    _core.import_remote(_convert._CONVERTER, label, total, reads, dst, *options)


def convert_safetensors_on_hub(
    repo_id: str,
    safetensors_filename: str,
    *,
    deathtensors_filename: Optional[str] = None,
    compress: Union[bool, str] = False,
    compress_level: Optional[int] = None,
    checksum: Union[bool, str] = True,
    delete_original: bool = False,
    revision: Optional[str] = None,
    repo_type: str = "model",
    token: Optional[str] = None,
    commit_message: Optional[str] = None,
    cache_dir: Optional[PathLike] = None,
    endpoint: Optional[str] = None,
) -> str:
    """Convert a ``.safetensors`` file (or sharded checkpoint) of a repo to ``.deathtensors``, in one commit.

    The source is read from the Hub by HTTP range, tensor by tensor, as the
    conversion writes it into a temporary folder: no copy of it is downloaded
    (nor kept in the Hugging Face cache), and memory stays bounded whatever
    its size (the reads in flight and the writer's buffers: tens of MiB). A
    source already in the cache is converted from there instead. Then one
    commit adds the result and, with
    ``delete_original=True``, deletes the source. A failure leaves the repo
    unchanged, and so does a branch that moved on while the conversion ran
    (the commit names the source's commit as its parent; the Hub refuses it,
    and this raises :class:`HubUploadError`).

    Args:
        safetensors_filename: ``model.safetensors``, or the index of a sharded
            checkpoint (``model.safetensors.index.json``): every shard and the
            index are converted, uploaded (and deleted) together.
        deathtensors_filename: The path of the result in the repo (default: the
            source path with ``.deathtensors``; for a checkpoint, the base path
            whose index ``{stem}.deathtensors.index.json`` is written).
        compress, compress_level, checksum: As in :func:`deathtensors.from_safetensors`.
        Others: as in :func:`push_to_hub`.

    Returns:
        The Hub URL of the uploaded file (or index).
    """
    _check_repo_type(repo_type)
    what = f"converting in {repo_id}"
    safetensors_filename = _file_in_repo(safetensors_filename, what)
    if deathtensors_filename is not None:
        deathtensors_filename = _file_in_repo(deathtensors_filename, what)
    tok = _write_token(token, what)
    options = _convert._import_options(checksum, compress, compress_level)
    hf = _hf()
    sharded = safetensors_filename.endswith(".index.json")
    remote_file = functools.partial(
        HubCachedFile, repo_id, repo_type=repo_type, token=tok, cache_dir=cache_dir, endpoint=endpoint
    )
    folder = posixpath.dirname(safetensors_filename)
    sources = [safetensors_filename]
    if sharded:
        # The index alone is downloaded (into the cache), with the same checks (size,
        # UTF-8 JSON, duplicate keys, a regular file) and FormatError as a local one.
        index = _fetch(
            repo_id,
            safetensors_filename,
            revision,
            repo_type=repo_type,
            token=tok,
            cache_dir=cache_dir,
            local_files_only=False,
            endpoint=endpoint,
        )
        commit = _snapshot_commit(index, safetensors_filename) or revision
        doc = _sharded._read_index(index)
        sources += [posixpath.join(folder, s) if folder else s for s in sorted(set(doc["weight_map"].values()))]
    else:
        source = remote_file(safetensors_filename, revision=revision)
        source._resolve()
        commit = source._commit or revision
    if deathtensors_filename is None:
        base = safetensors_filename
        for suffix in (".safetensors.index.json", ".safetensors"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
                break
        deathtensors_filename = base + ".deathtensors"
    out_folder = posixpath.dirname(deathtensors_filename)

    def refuse_overwriting(targets: List[str]) -> None:
        overwritten = sorted(set(targets) & set(sources))
        if overwritten:
            raise InvalidArgumentError(
                f"converting {safetensors_filename} of {repo_id} would write {overwritten[0]}, a file it converts "
                "(and replace the source); give another deathtensors_filename"
            )

    refuse_overwriting([deathtensors_filename])  # before anything is read; shard names are known later
    with tempfile.TemporaryDirectory(prefix="deathtensors-hub-") as tmp:
        dst = os.path.join(tmp, posixpath.basename(deathtensors_filename))
        if sharded:

            def convert_shard(shard: str, out: str) -> None:
                _import_streamed(remote_file(posixpath.join(folder, shard), revision=commit), out, options)

            written = _convert._import_sharded(index, dst, *options, convert_shard=convert_shard)
        else:
            _import_streamed(source, dst, options)
            written = dst
        if sharded:
            with _pkg().open_sharded(written) as sr:
                files = [*sr.shards(), os.path.basename(sr.path)]
            targets = [posixpath.join(out_folder, n) if out_folder else n for n in files]
        else:
            files, targets = [os.path.basename(written)], [deathtensors_filename]
        refuse_overwriting(targets)
        result = targets[-1]
        ops: List[Any] = [
            hf.CommitOperationAdd(path_in_repo=t, path_or_fileobj=os.path.join(tmp, n)) for n, t in zip(files, targets)
        ]
        if delete_original:
            ops.extend(hf.CommitOperationDelete(path_in_repo=s) for s in sources)
        api = _api(tok, endpoint)
        message = commit_message or (
            f"Convert {safetensors_filename} to {result} with deathtensors"
            + (" (and delete the original)" if delete_original else "")
        )
        _commit(
            api,
            repo_id,
            ops,
            repo_type=repo_type,
            revision=revision,
            private=None,
            message=message,
            create_repo=False,
            what=f"uploading {result} to {repo_id}",
            # The commit the source came from: if the branch moved on meanwhile (a newer
            # source pushed), the commit is refused rather than deleting or shadowing it.
            parent_commit=commit if _is_commit_hash(commit) else None,
        )
    return _blob_url(_endpoint(endpoint), repo_type, repo_id, revision, result)
