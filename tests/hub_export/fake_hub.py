"""A loopback stand-in for the Hugging Face Hub's upload endpoints, for offline tests of `push`.

It implements exactly the requests huggingface_hub 2.x makes for ``create_repo`` + ``create_branch`` +
``upload_folder`` with Xet disabled (read from ``hf_api.py``, ``_commit_api.py`` and ``lfs.py``):

- ``POST /api/repos/create``                          create a repo (409 when it exists)
- ``GET  /api/models/{repo}``                          repo info (used by create_repo after a 401/403)
- ``POST /api/models/{repo}/branch/{branch}``         create a branch from main
- ``POST /api/validate-yaml``                         README.md metadata check
- ``POST /api/models/{repo}/preupload/{rev}``         "regular" or "lfs" per file
- ``POST /{repo}.git/info/lfs/objects/batch``          LFS batch API (basic transfer + verify action)
- ``PUT  /_lfs/{oid}``  ``POST /_lfs/{oid}/verify``    the LFS object store (sha256 checked)
- ``POST /api/models/{repo}/commit/{rev}``            NDJSON commit: header, file (base64), lfsFile

Everything it receives is stored in memory (``repos[repo_id]["branches"][branch][path] -> bytes``). It listens on
127.0.0.1 on a random port, requires ``Authorization: Bearer <token>`` on the API, and shuts itself down after
``max_seconds`` even if a test forgets to stop it.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml

LFS_THRESHOLD = 10 * 1024 * 1024  # the Hub stores files from 10 MB on in LFS
BINARY_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".onnx", ".msgpack", ".png", ".jpg", ".npz")
MAX_BODY = 64 * 1024 * 1024

_REPO = r"(?P<repo>[^/]+/[^/]+)"
ROUTES = [
    ("POST", re.compile(r"^/api/repos/create$"), "create_repo"),
    ("POST", re.compile(r"^/api/validate-yaml$"), "validate_yaml"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$"), "preupload"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$"), "commit"),
    ("POST", re.compile(rf"^/api/models/{_REPO}/branch/(?P<branch>[^/]+)$"), "create_branch"),
    ("GET", re.compile(rf"^/api/models/{_REPO}$"), "repo_info"),
    ("POST", re.compile(rf"^/{_REPO}\.git/info/lfs/objects/batch$"), "lfs_batch"),
    ("PUT", re.compile(r"^/_lfs/(?P<oid>[0-9a-f]{64})$"), "lfs_put"),
    ("POST", re.compile(r"^/_lfs/(?P<oid>[0-9a-f]{64})/verify$"), "lfs_verify"),
]


class FakeHub:
    """The server and what it stored. Use as a context manager."""

    def __init__(self, token: str, *, max_seconds: float = 120.0, forbidden_namespaces: tuple[str, ...] = ()):
        self.token = token
        self.max_seconds = max_seconds
        self.forbidden_namespaces = set(forbidden_namespaces)
        self.repos: dict[str, dict[str, Any]] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.lfs_paths: set[str] = set()  # paths committed as lfsFile
        self.commits: list[dict[str, Any]] = []
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status)
        self.authorized_requests = 0
        self.lock = threading.RLock()
        self._server: ThreadingHTTPServer | None = None
        self._timer: threading.Timer | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()
        self._timer = threading.Timer(self.max_seconds, self.stop)  # bounded: never outlives a test run
        self._timer.daemon = True
        self._timer.start()
        return self

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()
            server.server_close()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return dict(self.repos[repo_id]["branches"][branch])


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"
    timeout = 30  # a stuck client cannot hold a handler thread forever

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass

    # ------------------------------------------------------------------ plumbing
    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            total = 0
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    break
                total += size
                if total > MAX_BODY:
                    raise ValueError("body too large")
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise ValueError("body too large")
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, payload: Any = None, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(payload if payload is not None else {}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)
        with self.fake.lock:
            self.fake.requests.append((self.command, urlsplit(self.path).path, status))

    def _error(self, status: int, message: str, code: str | None = None) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._send(status, {"error": message}, headers)

    def _dispatch(self) -> None:
        path = urlsplit(self.path).path
        for method, pattern, name in ROUTES:
            match = pattern.match(path)
            if method == self.command and match:
                try:
                    body = self._body()
                except ValueError as err:
                    self._error(413, str(err))
                    return
                args = {k: unquote(v) for k, v in match.groupdict().items()}
                if not name.startswith("lfs_put") and not name.startswith("lfs_verify"):
                    if self.headers.get("Authorization") != f"Bearer {self.fake.token}":
                        self._error(401, "Invalid credentials in Authorization header")
                        return
                    with self.fake.lock:
                        self.fake.authorized_requests += 1
                getattr(self, f"h_{name}")(body, **args)
                return
        self._body()
        self._error(404, f"no route for {self.command} {path}")

    do_GET = do_POST = do_PUT = _dispatch

    def _repo(self, repo: str, rev: str | None = None) -> dict[str, Any] | None:
        entry = self.fake.repos.get(repo)
        if entry is None:
            self._error(404, "Repository not found", "RepoNotFound")
            return None
        if rev is not None and rev not in entry["branches"]:
            self._error(404, "Invalid rev id", "RevisionNotFound")
            return None
        return entry

    # ------------------------------------------------------------------ endpoints
    def h_create_repo(self, body: bytes) -> None:
        payload = json.loads(body)
        org, name = payload.get("organization"), payload["name"]
        if org in self.fake.forbidden_namespaces:
            self._error(403, "You don't have the rights to create a model under this namespace")
            return
        repo_id = f"{org or 'user'}/{name}"
        with self.fake.lock:
            if repo_id in self.fake.repos:  # the Hub answers 409 with the repo's url
                self._send(409, {"error": "You already created this model repo", "url": f"{self.fake.url}/{repo_id}"},
                           {"X-Error-Message": "You already created this model repo"})
                return
            self.fake.repos[repo_id] = {
                "private": payload.get("visibility") == "private" or bool(payload.get("private")),
                "branches": {"main": {}},
            }
        self._send(200, {"url": f"{self.fake.url}/{repo_id}", "name": repo_id, "id": uuid.uuid4().hex})

    def h_repo_info(self, body: bytes, repo: str) -> None:
        if self._repo(repo) is not None:
            self._send(200, {"id": repo, "modelId": repo, "sha": "0" * 40, "private": self.fake.repos[repo]["private"]})

    def h_create_branch(self, body: bytes, repo: str, branch: str) -> None:
        entry = self._repo(repo)
        if entry is None:
            return
        with self.fake.lock:
            if branch in entry["branches"]:
                self._error(409, "Reference already exists")
                return
            entry["branches"][branch] = dict(entry["branches"]["main"])
        self._send(200, {})

    def h_validate_yaml(self, body: bytes) -> None:
        content = json.loads(body)["content"]
        match = re.match(r"^---\n(.*?)\n---\n", content, flags=re.DOTALL)
        try:
            meta = yaml.safe_load(match.group(1)) if match else None
        except yaml.YAMLError as err:
            self._send(400, {"errors": [{"message": f"invalid YAML: {err}"}]})
            return
        if not isinstance(meta, dict):
            self._send(200, {"errors": [], "warnings": [{"message": "empty or missing yaml metadata"}]})
            return
        self._send(200, {"errors": [], "warnings": []})

    def h_preupload(self, body: bytes, repo: str, rev: str) -> None:
        if self._repo(repo, rev) is None:
            return
        files = []
        for f in json.loads(body)["files"]:
            sample = base64.b64decode(f["sample"])
            lfs = f["size"] >= LFS_THRESHOLD or f["path"].endswith(BINARY_SUFFIXES) or b"\x00" in sample
            files.append({"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
        self._send(200, {"files": files})

    def h_lfs_batch(self, body: bytes, repo: str) -> None:
        if self._repo(repo) is None:
            return
        payload = json.loads(body)
        objects = []
        for obj in payload["objects"]:
            entry: dict[str, Any] = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.fake.lfs_objects:
                entry["actions"] = {
                    "upload": {"href": f"{self.fake.url}/_lfs/{obj['oid']}"},
                    "verify": {"href": f"{self.fake.url}/_lfs/{obj['oid']}/verify"},
                }
            objects.append(entry)
        self._send(200, {"transfer": "basic", "objects": objects})

    def h_lfs_put(self, body: bytes, oid: str) -> None:
        if hashlib.sha256(body).hexdigest() != oid:
            self._error(400, "sha256 of the uploaded content does not match the oid")
            return
        with self.fake.lock:
            self.fake.lfs_objects[oid] = body
        self._send(200, {})

    def h_lfs_verify(self, body: bytes, oid: str) -> None:
        payload = json.loads(body)
        blob = self.fake.lfs_objects.get(oid)
        if blob is None or len(blob) != payload.get("size"):
            self._error(404, "object not found or wrong size")
            return
        self._send(200, {})

    def h_commit(self, body: bytes, repo: str, rev: str) -> None:
        entry = self._repo(repo, rev)
        if entry is None:
            return
        if not self.headers.get("Content-Type", "").startswith("application/x-ndjson"):
            self._error(400, "commit payload must be NDJSON")
            return
        header: dict[str, Any] = {}
        changes: dict[str, bytes] = {}
        lfs_paths = set()
        for line in body.splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                header = value
            elif key == "file":
                changes[value["path"]] = base64.b64decode(value["content"])
            elif key == "lfsFile":
                blob = self.fake.lfs_objects.get(value["oid"])
                if blob is None or ("size" in value and len(blob) != value["size"]):
                    self._error(400, f"LFS object {value['oid']} for {value['path']} was not uploaded")
                    return
                changes[value["path"]] = blob
                lfs_paths.add(value["path"])
            else:
                self._error(400, f"unsupported commit operation {key!r}")
                return
        if not header.get("summary"):
            self._error(400, "commit summary is required")
            return
        oid = hashlib.sha1(body).hexdigest()
        with self.fake.lock:
            entry["branches"][rev].update(changes)
            self.fake.lfs_paths |= lfs_paths
            self.fake.commits.append({"repo": repo, "branch": rev, "summary": header["summary"], "oid": oid,
                                      "paths": sorted(changes)})
        self._send(200, {"commitUrl": f"{self.fake.url}/{repo}/commit/{oid}", "commitOid": oid,
                         "pullRequestUrl": None})
