"""A Hugging Face Hub-compatible HTTP server for tests, on 127.0.0.1 only.

It answers what the real ``huggingface_hub`` client sends (see
``../shared/hub-endpoints.md`` of the project): repo creation, preupload,
the LFS batch API and single-part PUT uploads, ndjson commits (regular,
LFS and deleted files), ``resolve`` downloads with ``HEAD``/``GET`` and
``Range``, the tree listing and ``model_info``. Every request is recorded in
:attr:`HubServer.log` (method, path, ``Authorization`` and ``Range`` headers,
status, body bytes sent), so tests can check what the client really asked
for and how many bytes were served.

It is a test double, not a Hub: no Xet storage, no CDN redirects, no
multipart uploads, no rate limits. Commits are atomic: a commit either
applies all its operations or none.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

REPO_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}
URL_PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


@dataclass
class StoredFile:
    """One file of a commit: its bytes, and whether it went through LFS."""

    content: bytes
    lfs: bool

    # Computed once: every resolve answer names them, and range reads come many to a file.
    @functools.cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @functools.cached_property
    def git_oid(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.content) + self.content).hexdigest()  # noqa: S324 - git's id


@dataclass
class Repo:
    """A repository: commits (newest last), branches, and counters."""

    repo_type: str
    repo_id: str
    private: bool = False
    commits: List[Tuple[str, Dict[str, StoredFile]]] = field(default_factory=list)
    branches: Dict[str, str] = field(default_factory=dict)
    downloads: int = 0
    likes: int = 0

    def resolve(self, revision: str) -> Optional[Tuple[str, Dict[str, StoredFile]]]:
        sha = self.branches.get(revision, revision)
        for commit_sha, files in self.commits:
            if commit_sha == sha:
                return commit_sha, files
        return None


@dataclass
class Failure:
    """Answer ``status`` to requests matching ``method`` and ``path`` (a regex), ``times`` times (None: always),
    after letting the first ``skip`` matching requests through."""

    method: str
    path: str
    status: int
    times: Optional[int] = None
    skip: int = 0


class HubServer:
    """A Hub-compatible server on 127.0.0.1 with a random port; start with :meth:`start`.

    Args:
        upload_mode: What preupload answers for every file: ``"regular"``
            (content travels base64 inside the commit, the path a client with
            ``hf_xet`` takes) or ``"lfs"`` (LFS batch + PUT; the client must run
            with ``HF_HUB_DISABLE_XET=1``).
    """

    def __init__(self, upload_mode: str = "regular") -> None:
        self.upload_mode = upload_mode
        self.repos: Dict[Tuple[str, str], Repo] = {}
        self.lfs_objects: Dict[str, bytes] = {}
        self.log: List[Dict[str, Any]] = []
        self.failures: List[Failure] = []
        #: Applied to the body of every whole-file download (a ``GET`` of
        #: ``resolve`` without a range), with the file's path: what a broken
        #: proxy or disk would send. The headers still announce the real file.
        self.tamper: Optional[Callable[[str, bytes], bytes]] = None
        #: ``(n, seconds)``: every range answer that does not start at byte 0
        #: sends only its first ``n`` bytes. With ``seconds`` > 0 it announces
        #: its whole length, then holds the connection that long and closes it
        #: (a server that stalls mid-answer); with 0 its ``Content-Length`` is
        #: ``n`` (a well-formed answer shorter than the range it names: a
        #: broken proxy).
        self.cut_ranges: Optional[Tuple[int, float]] = None
        self.lock = threading.Lock()
        self._httpd: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None
        self._url = ""

    # -- lifecycle --------------------------------------------------------------------------------
    def start(self) -> HubServer:
        handler = type("Handler", (_Handler,), {"hub": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        self._url = f"http://127.0.0.1:{self._httpd.server_address[1]}"
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    @property
    def url(self) -> str:
        """The base URL (kept after :meth:`stop`, so clients can be pointed at a server that is gone)."""
        return self._url

    # -- test helpers -----------------------------------------------------------------------------
    def fail(self, method: str, path: str, status: int, times: Optional[int] = None, skip: int = 0) -> None:
        """Make matching requests fail with ``status`` (see :class:`Failure`)."""
        with self.lock:
            self.failures.append(Failure(method, path, status, times, skip))

    def repo(self, repo_id: str, repo_type: str = "model") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def files(self, repo_id: str, repo_type: str = "model", revision: str = "main") -> Dict[str, bytes]:
        """``{path: bytes}`` of a revision."""
        found = self.repo(repo_id, repo_type).resolve(revision)
        assert found is not None, f"no revision {revision!r}"
        return {p: f.content for p, f in found[1].items()}

    def add_repo(self, repo_id: str, repo_type: str = "model", files: Optional[Dict[str, bytes]] = None) -> Repo:
        """Create a repo directly (no request), with an initial commit of ``files``."""
        with self.lock:
            repo = Repo(repo_type, repo_id)
            self.repos[(repo_type, repo_id)] = repo
            self._commit(repo, "main", {p: StoredFile(b, len(b) > 1024) for p, b in (files or {}).items()}, [])
            return repo

    def requests(self, method: Optional[str] = None, contains: str = "") -> List[Dict[str, Any]]:
        """Logged requests, optionally of one method and whose path contains ``contains``."""
        with self.lock:
            return [r for r in self.log if (method is None or r["method"] == method) and contains in r["path"]]

    def clear_log(self) -> None:
        with self.lock:
            self.log.clear()

    # -- state changes (caller holds the lock) ----------------------------------------------------
    def _commit(self, repo: Repo, branch: str, added: Dict[str, StoredFile], deleted: List[str]) -> str:
        parent = repo.resolve(branch)
        files = dict(parent[1]) if parent else {}
        files.update(added)
        for p in deleted:
            files.pop(p, None)
        seed = f"{repo.repo_id}:{len(repo.commits)}:{time.time_ns()}".encode()
        sha = hashlib.sha1(seed).hexdigest()  # noqa: S324 - an id, not security
        repo.commits.append((sha, files))
        repo.branches[branch] = sha
        return sha


class _Handler(BaseHTTPRequestHandler):
    hub: HubServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        pass

    # -- plumbing ---------------------------------------------------------------------------------
    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _send(
        self,
        status: int,
        body: bytes = b"",
        headers: Optional[Dict[str, str]] = None,
        content_type: str = "application/json",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        sent = 0
        if self.command != "HEAD":
            self.wfile.write(body)
            sent = len(body)
        self._record["status"] = status
        self._record["bytes_sent"] = sent

    def _json(self, status: int, value: Any, headers: Optional[Dict[str, str]] = None) -> None:
        self._send(status, json.dumps(value).encode(), headers)

    def _error(self, status: int, code: str, message: str) -> None:
        self._json(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def _dispatch(self) -> None:
        url = urlsplit(self.path)
        self._record: Dict[str, Any] = {
            "method": self.command,
            "path": unquote(url.path),
            "query": parse_qs(url.query),
            "authorization": self.headers.get("Authorization"),
            "range": self.headers.get("Range"),
            "status": None,
            "bytes_sent": 0,
        }
        with self.hub.lock:
            self.hub.log.append(self._record)
            for f in self.hub.failures:
                if f.method == self.command and re.search(f.path, url.path) and (f.times is None or f.times > 0):
                    if f.skip > 0:
                        f.skip -= 1
                        continue
                    if f.times is not None:
                        f.times -= 1
                    failure: Optional[Failure] = f
                    break
            else:
                failure = None
        body = self._body() if self.command in ("POST", "PUT") else b""
        if failure is not None:
            self._json(failure.status, {"error": f"injected failure {failure.status}"})
            return
        for pattern, methods, handler in _ROUTES:
            m = re.fullmatch(pattern, url.path)
            if m and self.command in methods:
                parts = {k: unquote(v) for k, v in m.groupdict().items() if v is not None}
                handler(self, parts, body, parse_qs(url.query))
                return
        self._json(404, {"error": f"no route for {self.command} {url.path}"})

    do_GET = do_HEAD = do_POST = do_PUT = do_DELETE = _dispatch

    # -- helpers ----------------------------------------------------------------------------------
    def _token(self) -> Optional[str]:
        auth = self.headers.get("Authorization") or ""
        return auth[len("Bearer ") :] if auth.startswith("Bearer ") and len(auth) > len("Bearer ") else None

    def _find(self, parts: Dict[str, str], write: bool = False) -> Optional[Repo]:
        repo_type = REPO_TYPES.get(parts.get("t", "models"), "model")
        if "prefix" in parts:
            repo_type = {"datasets/": "dataset", "spaces/": "space"}.get(parts["prefix"], "model")
        repo = self.hub.repos.get((repo_type, parts["id"]))
        if repo is None or (repo.private and self._token() is None):
            self._error(404, "RepoNotFound", f"Repository Not Found for {parts['id']}")
            return None
        if write and self._token() is None:
            self._json(401, {"error": "Invalid credentials in Authorization header"})
            return None
        return repo

    def _revision(
        self, parts: Dict[str, str], rev: str
    ) -> Tuple[Optional[Repo], Optional[Tuple[str, Dict[str, StoredFile]]]]:
        """The repo and ``(commit, files)`` of ``rev``, or an error answered and a ``None`` (caller holds the lock)."""
        repo = self._find(parts)
        if repo is None:
            return None, None
        found = repo.resolve(rev)
        if found is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        return repo, found

    # -- API ------------------------------------------------------------------------------------------
    def create_repo(self, parts: Dict[str, str], body: bytes, query: Dict[str, List[str]]) -> None:
        if self._token() is None:
            self._json(401, {"error": "Invalid credentials in Authorization header"})
            return
        req = json.loads(body or b"{}")
        repo_id = f"{req['organization']}/{req['name']}" if req.get("organization") else req["name"]
        repo_type = req.get("type") or "model"
        url = f"{self.hub.url}/{URL_PREFIX[repo_type]}{repo_id}"
        with self.hub.lock:
            if (repo_type, repo_id) in self.hub.repos:
                self._json(409, {"error": "You already created this repo", "url": url})
                return
            # huggingface_hub 1.x sends "visibility"; older clients sent "private".
            private = req.get("visibility") == "private" or bool(req.get("private"))
            repo = Repo(repo_type, repo_id, private=private)
            self.hub.repos[(repo_type, repo_id)] = repo
            self.hub._commit(repo, "main", {".gitattributes": StoredFile(b"*.deathtensors filter=lfs\n", False)}, [])
        self._json(200, {"url": url, "name": repo_id})

    def repo_info(self, parts: Dict[str, str], body: bytes, query: Dict[str, List[str]]) -> None:
        with self.hub.lock:
            repo, found = self._revision(parts, parts.get("rev", "main"))
            if repo is None or found is None:
                return
            sha, files = found
            self._json(
                200,
                {
                    "id": repo.repo_id,
                    "sha": sha,
                    "private": repo.private,
                    "downloads": repo.downloads,
                    "likes": repo.likes,
                    "tags": [],
                    "siblings": [{"rfilename": p} for p in sorted(files)],
                },
            )

    def tree(self, parts: Dict[str, str], body: bytes, query: Dict[str, List[str]]) -> None:
        with self.hub.lock:
            repo, found = self._revision(parts, parts["rev"])
            if repo is None or found is None:
                return
            files = found[1]
        base = parts.get("path", "").strip("/")
        recursive = query.get("recursive", ["false"])[0] == "true"
        items: List[Dict[str, Any]] = []
        folders = set()
        for p in sorted(files):
            if base and not p.startswith(base + "/"):
                continue
            rest = p[len(base) + 1 :] if base else p
            if "/" in rest:
                folder = (base + "/" if base else "") + rest.split("/")[0]
                if folder not in folders:
                    folders.add(folder)
                    items.append({"type": "directory", "path": folder, "oid": "0" * 40})
                if not recursive:
                    continue
            f = files[p]
            item: Dict[str, Any] = {"type": "file", "path": p, "size": len(f.content), "oid": f.git_oid}
            if f.lfs:
                item["lfs"] = {"oid": f.sha256, "size": len(f.content), "pointerSize": 134}
            items.append(item)
        if base and not items:
            self._error(404, "EntryNotFound", f"{base} does not exist")
            return
        self._json(200, items)

    def preupload(self, parts: Dict[str, str], body: bytes, query: Dict[str, List[str]]) -> None:
        with self.hub.lock:
            if self._find(parts, write=True) is None:
                return
        req = json.loads(body)
        mode = self.hub.upload_mode
        self._json(
            200, {"files": [{"path": f["path"], "uploadMode": mode, "shouldIgnore": False} for f in req["files"]]}
        )

    def lfs_batch(self, parts: Dict[str, str], body: bytes, query: Dict[str, List[str]]) -> None:
        with self.hub.lock:
            if self._find(parts, write=True) is None:
                return
        req = json.loads(body)
        objects = []
        for o in req["objects"]:
            entry: Dict[str, Any] = {"oid": o["oid"], "size": o["size"]}
            if o["oid"] not in self.hub.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.hub.url}/lfs-upload/{o['oid']}"}}
            objects.append(entry)
        self._send(
            200, json.dumps({"transfer": "basic", "objects": objects}).encode(), None, "application/vnd.git-lfs+json"
        )

    def lfs_upload(self, parts: Dict[str, str], body: bytes, query: Dict[str, List[str]]) -> None:
        if hashlib.sha256(body).hexdigest() != parts["oid"]:
            self._json(400, {"error": "sha256 mismatch"})
            return
        with self.hub.lock:
            self.hub.lfs_objects[parts["oid"]] = body
        self._send(200)

    def commit(self, parts: Dict[str, str], body: bytes, query: Dict[str, List[str]]) -> None:
        with self.hub.lock:
            repo = self._find(parts, write=True)
            if repo is None:
                return
            branch = parts["rev"]
            if branch not in repo.branches:
                self._error(404, "RevisionNotFound", f"Invalid rev id: {branch}")
                return
            added: Dict[str, StoredFile] = {}
            deleted: List[str] = []
            current = repo.resolve(branch)
            existing = current[1] if current else {}
            for line in body.splitlines():
                if not line.strip():
                    continue
                op = json.loads(line)
                key, value = op["key"], op["value"]
                parent = value.get("parentCommit") if key == "header" else None
                if parent and current and parent != current[0]:
                    # What the Hub answers when the branch moved past the given parent.
                    self._json(412, {"error": "A commit has happened since. Please refresh and try again."})
                    return
                if key == "file":
                    added[value["path"]] = StoredFile(base64.b64decode(value["content"]), False)
                elif key == "lfsFile":
                    blob = self.hub.lfs_objects.get(value["oid"])
                    if blob is None:
                        self._json(422, {"error": f"LFS object {value['oid']} was never uploaded"})
                        return
                    added[value["path"]] = StoredFile(blob, True)
                elif key == "deletedFile":
                    if value["path"] not in existing:
                        self._error(404, "EntryNotFound", f"{value['path']} does not exist")
                        return
                    deleted.append(value["path"])
            sha = self.hub._commit(repo, branch, added, deleted)
        prefix = URL_PREFIX[repo.repo_type]
        self._json(200, {"commitUrl": f"{self.hub.url}/{prefix}{repo.repo_id}/commit/{sha}", "commitOid": sha})

    def xet_token(self, parts: Dict[str, str], body: bytes, query: Dict[str, List[str]]) -> None:
        self._json(501, {"error": "this test server has no Xet storage"})

    def validate_yaml(self, parts: Dict[str, str], body: bytes, query: Dict[str, List[str]]) -> None:
        self._json(200, {"errors": [], "warnings": []})

    def resolve(self, parts: Dict[str, str], body: bytes, query: Dict[str, List[str]]) -> None:
        with self.hub.lock:
            repo, found = self._revision(parts, parts["rev"])
            if repo is None or found is None:
                return
            sha, files = found
            f = files.get(parts["path"])
            if f is None:
                self._error(
                    404,
                    "EntryNotFound",
                    f"{parts['path']} does not exist on {parts['rev']}",
                )
                return
            if self.command == "GET":
                repo.downloads += 1
        headers = {"X-Repo-Commit": sha, "Accept-Ranges": "bytes"}
        if f.lfs:
            headers["X-Linked-Etag"] = f'"{f.sha256}"'
            headers["X-Linked-Size"] = str(len(f.content))
            headers["ETag"] = f'"{f.sha256}"'
        else:
            headers["ETag"] = f'"{f.git_oid}"'
        data = f.content
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-(\d*)", rng or "")
        if m is None:
            if self.command == "GET" and self.hub.tamper is not None:
                data = self.hub.tamper(parts["path"], data)
            self._send(200, data, headers, "application/octet-stream")
            return
        start = int(m.group(1))
        end = min(int(m.group(2)) if m.group(2) else len(data) - 1, len(data) - 1)
        if start >= len(data) or start > end:
            headers["Content-Range"] = f"bytes */{len(data)}"
            self._send(416, b"", headers, "application/octet-stream")
            return
        headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        if self.hub.cut_ranges is not None and start > 0 and self.command == "GET":
            keep, hold = self.hub.cut_ranges
            self.send_response(206)
            for k, v in {**headers, "Content-Length": str(end + 1 - start if hold > 0 else keep)}.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data[start : start + keep])
            self.wfile.flush()
            self._record.update(status=206, bytes_sent=keep)
            time.sleep(hold)
            self.close_connection = True
            return
        self._send(206, data[start : end + 1], headers, "application/octet-stream")


_ID = r"(?P<id>[^/]+/[^/]+)"
_T = r"(?P<t>models|datasets|spaces)"
_PREFIX = r"(?P<prefix>datasets/|spaces/)?"
_ROUTES: List[Tuple[str, Tuple[str, ...], Callable[..., None]]] = [
    (r"/api/repos/create", ("POST",), _Handler.create_repo),
    (r"/api/validate-yaml", ("POST",), _Handler.validate_yaml),
    (rf"/api/{_T}/{_ID}", ("GET",), _Handler.repo_info),
    (rf"/api/{_T}/{_ID}/revision/(?P<rev>[^/]+)", ("GET",), _Handler.repo_info),
    (rf"/api/{_T}/{_ID}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", ("GET",), _Handler.tree),
    (rf"/api/{_T}/{_ID}/preupload/(?P<rev>[^/]+)", ("POST",), _Handler.preupload),
    (rf"/api/{_T}/{_ID}/commit/(?P<rev>[^/]+)", ("POST",), _Handler.commit),
    (rf"/api/{_T}/{_ID}/xet-write-token/(?P<rev>[^/]+)", ("GET",), _Handler.xet_token),
    (rf"/{_PREFIX}{_ID}\.git/info/lfs/objects/batch", ("POST",), _Handler.lfs_batch),
    (r"/lfs-upload/(?P<oid>[0-9a-f]{64})", ("PUT",), _Handler.lfs_upload),
    (rf"/{_PREFIX}{_ID}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", ("GET", "HEAD"), _Handler.resolve),
]
