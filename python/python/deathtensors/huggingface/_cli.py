"""The ``hub-*`` commands of ``python -m deathtensors``.

The Rust command tree (``deathtensors_cli``) parses and checks the arguments
and hands them to ``deathtensors._cli``, which calls :func:`run`; this module
does the Hub work and prints the result. Exit codes follow the rest of the CLI: 0 success, 1 a
failed Hub operation or a bad or unverifiable file, 2 a usage error
(including a missing ``huggingface_hub``). Errors are one line on stderr.
Progress bars (the Hugging Face client's) show only on a terminal and never
with ``--json``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any, Callable, Dict, List, Optional

from .._cli import EXIT_FAILED, EXIT_USAGE, error_text, fail, human, print_result, shown
from ..errors import DeathtensorsError, HubConnectionError, HubEntryNotFoundError, HubError, InvalidArgumentError


def _common(req: Dict[str, Any]) -> Dict[str, Any]:
    return {"revision": req.get("revision"), "repo_type": req.get("repo_type") or "model", "token": req.get("token")}


def _push(hub: Any, req: Dict[str, Any]) -> Any:
    path = req["path"]
    full = os.path.expanduser(os.path.expandvars(path))
    sharded = full.endswith(".json") or not os.path.isfile(full)
    kw = dict(_common(req), private=req.get("private") or None, commit_message=req.get("message"))
    if sharded:
        try:
            url = hub.push_sharded_to_hub(req["repo_id"], path, req.get("path_in_repo"), **kw)
        except FileNotFoundError as e:
            if full.endswith(".json") or os.path.exists(full):
                raise
            raise FileNotFoundError(f"{path}: no such file, and no sharded checkpoint index for it") from e
    else:
        url = hub.push_to_hub(req["repo_id"], path, req.get("path_in_repo"), **kw)
    return {"repo_id": req["repo_id"], "url": url, "sharded": sharded}


def _pull(hub: Any, req: Dict[str, Any]) -> Any:
    name = req["filename"]
    kw = dict(_common(req), force_download=bool(req.get("force_download")))
    verify = bool(req.get("verify"))
    files: List[str] = []
    single_failed: Optional[HubError] = None
    if not name.endswith(".json"):
        try:
            with hub.load_from_hub(req["repo_id"], name, verify=verify, **kw) as f:
                files = [f.path]
        except (HubEntryNotFoundError, HubConnectionError) as e:
            # Not a file of that name, or (offline, no connection) not one in the
            # cache: the name may be a sharded checkpoint's base name.
            if not name.endswith(hub.DEATHTENSORS_SUFFIXES):
                raise
            single_failed = e
    if not files:  # a sharded checkpoint: the index, then every shard
        try:
            with hub.load_sharded_from_hub(req["repo_id"], name, verify=verify, **kw) as sr:
                for shard in sr.shards():
                    sr.open_shard(shard)  # downloads, opens (and verifies when asked) the shard
                files = [sr.path, *[sr.shard_path(s) for s in sr.shards()]]
        except HubEntryNotFoundError as e:
            if single_failed is None:
                raise
            if isinstance(single_failed, HubConnectionError):
                raise single_failed from None
            raise HubEntryNotFoundError(
                f"{name} is not in {req['repo_id']}, and neither is a sharded checkpoint index for it ({e})"
            ) from single_failed
        except HubConnectionError:
            if single_failed is None:
                raise
            raise single_failed from None
    local_dir = req.get("local_dir")
    if local_dir:
        dest = os.path.expanduser(os.path.expandvars(local_dir))
        os.makedirs(dest, exist_ok=True)
        copies = []
        for p in files:  # cache paths keep the repo's file names
            target = os.path.join(dest, os.path.basename(p))
            shutil.copyfile(p, target)
            copies.append(target)
        files = copies
    return {"repo_id": req["repo_id"], "filename": name, "paths": files, "verified": verify}


def _list(hub: Any, req: Dict[str, Any]) -> Any:
    return hub.list_repo_models(req["repo_id"], **_common(req))


class _FileInfo(dict):  # type: ignore[type-arg]
    """``hub-info REPO FILE``'s result: the JSON of :func:`hub_file_info`, and
    (``text``) the table local ``deathtensors info`` prints, from the same header."""

    text = ""


def _info(hub: Any, req: Dict[str, Any]) -> Any:
    if req.get("filename"):
        f = hub.HubCachedFile(req["repo_id"], req["filename"], **_common(req))
        result = _FileInfo(hub._file_info(f))
        fetched = result["bytes_fetched"]
        how = f"header read by range: {human(fetched)} fetched" if fetched else "read from the local cache"
        result.text = f"{f.info_text().rstrip()}\n({how})"
        return result
    return hub.hub_model_info(req["repo_id"], **_common(req))


def _convert(hub: Any, req: Dict[str, Any]) -> Any:
    checksum: Any = req.get("checksum")
    checksum = True if checksum is None else (False if checksum == "none" else checksum)
    url = hub.convert_safetensors_on_hub(
        req["repo_id"],
        req["filename"],
        deathtensors_filename=req.get("output"),
        compress=req.get("compress") or False,
        compress_level=req.get("level"),
        checksum=checksum,
        delete_original=bool(req.get("delete_original")),
        commit_message=req.get("message"),
        **_common(req),
    )
    deleted = bool(req.get("delete_original"))
    return {"repo_id": req["repo_id"], "source": req["filename"], "url": url, "deleted_original": deleted}


def _text(command: str, result: Any) -> str:
    if command == "hub-push":
        return result["url"]
    if command == "hub-pull":
        return "\n".join(shown(p) for p in result["paths"])
    if command == "hub-list":
        return "\n".join(shown(f) for f in result)
    if command == "hub-convert":
        return result["url"]
    if isinstance(result, _FileInfo):  # hub-info REPO FILE
        return result.text
    lines = [
        f"id: {result['id']}",
        f"sha: {result['sha']}",
        f"downloads: {result['downloads']}",
        f"likes: {result['likes']}",
        f"private: {result['private']}",
        f"deathtensors files ({len(result['deathtensors_files'])}):",
        *[f"  {shown(f)}" for f in result["deathtensors_files"]],
    ]
    if result["sharded_indexes"]:
        lines.append(f"sharded indexes ({len(result['sharded_indexes'])}):")
        lines.extend(f"  {shown(f)}" for f in result["sharded_indexes"])
    return "\n".join(lines)


_COMMANDS: Dict[str, Callable[[Any, Dict[str, Any]], Any]] = {
    "hub-push": _push,
    "hub-pull": _pull,
    "hub-list": _list,
    "hub-info": _info,
    "hub-convert": _convert,
}


def run(req: Dict[str, Any]) -> int:
    """Run one parsed ``hub-*`` command (``req``, its request); print the result; return the exit code."""
    command = req["command"]
    try:
        from .. import huggingface as hub

        hub._hf()
    except ImportError as e:
        return fail(str(e), EXIT_USAGE)
    as_json = bool(req.get("json"))
    if as_json or not sys.stderr.isatty():
        hub._hf().utils.disable_progress_bars()
    try:
        result = _COMMANDS[command](hub, req)
    except InvalidArgumentError as e:
        return fail(str(e), EXIT_USAGE)
    except (DeathtensorsError, OSError) as e:
        return fail(error_text(e), EXIT_FAILED)
    return print_result(json.dumps(result, indent=2, ensure_ascii=False) if as_json else _text(command, result))


__all__: List[str] = ["run"]
