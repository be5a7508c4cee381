"""A Hugging Face Hub on 127.0.0.1 for tests: the API, `/resolve` and a storage host, as the real Hub speaks them.

Two origins, each its own server:

- the Hub (`endpoint`, what `HF_ENDPOINT` points at) serves
  `GET /api/models/<repo>`, `/api/models/<repo>/revision/<rev>` (with
  `?blobs=true`: sizes, blob ids and `lfs.sha256`) and
  `/api/models/<repo>/tree/<rev>[/<path>]` (`?recursive=true`, entries with
  `oid`, `size` and `lfs.oid`), and `HEAD|GET /<repo>/resolve/<rev>/<path>`:
  an LFS file answers `302` with an absolute `Location` on the storage host
  and `X-Repo-Commit`, `X-Linked-Etag` (the quoted sha256), `X-Linked-Size`
  and `ETag`; a plain (non-LFS) file is served by the Hub itself with its
  git blob id as ETag, Range supported.
- the storage host (`storage`, a `Mirror`) serves LFS blobs at
  `lfs/<sha256>` only through signed URLs (`Expires`, `Signature`); an expired
  or forged signature answers 403, and it records any `Authorization` it is
  sent (`storage_auth_seen`). Its `Mirror` faults and counters work as usual.
- the bridge host (`bridge`, a third origin) plays the Hub's newer storage
  backend: files committed with `bridge=` are redirected there instead, under
  the same rules.

Refusals carry `X-Error-Code` and `X-Error-Message` with the statuses the Hub
uses: a missing or private repository is `RepoNotFound` (401 without a token,
404 with one), a gated one answers `/resolve` with `GatedRepo` (401 without a
token, 403 with a token that has not accepted the terms), a missing revision is
`RevisionNotFound` (404), a missing file `EntryNotFound` (404, with
`X-Repo-Commit`), and an unknown token 401 "Invalid credentials in
Authorization header". `huggingface_hub`'s own `hf_hub_download` and
`snapshot_download` accept it (tests/test_hub_emulation.py proves it).

    with Hub() as hub:
        sha = hub.add_repo("acme/m", {"config.json": b"{}", "w.safetensors": Synthetic("w", 4 * MIB)})
        env = {"HF_ENDPOINT": hub.endpoint}
        hub.resolves[("acme/m", "w.safetensors")]   # resolve requests seen for that file
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping
from urllib.parse import parse_qs, quote, unquote, urlsplit

from mavail.testing.mirror import MIB, Mirror, Synthetic, _content, _Handler

__all__ = ["Hub", "HubRepo", "MIB", "Synthetic", "git_blob_sha1", "lfs_pointer"]

PLAIN_SUFFIXES = (".json", ".md", ".txt", ".gitattributes", ".py", ".yaml", ".yml")


def git_blob_sha1(data: bytes) -> str:
    """The git object id of a blob with these bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The text of the git-lfs pointer file git stores for an LFS file."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


@dataclass
class _File:
    content: Any
    lfs: bool
    bridge: bool = False  # stored on the newer backend: /resolve redirects to the bridge host instead

    @property
    def size(self) -> int:
        return self.content.size

    @property
    def sha256(self) -> str:
        return self.content.sha256()

    @property
    def blob_id(self) -> str:
        """The git blob id: of the pointer for an LFS file, of the bytes otherwise."""
        if self.lfs:
            return git_blob_sha1(lfs_pointer(self.sha256, self.size))
        return git_blob_sha1(self.content.read(0, self.size))


@dataclass
class HubRepo:
    """One model repository: commits (sha -> files), branches, who may read it, and its metadata."""

    repo_id: str
    commits: dict[str, dict[str, _File]] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    gated: str | bool = False  # "auto" / "manual" when gated
    private: bool = False
    access: set[str] = field(default_factory=set)  # tokens that may read a private repo or accepted a gate
    pipeline_tag: str | None = None
    tags: list[str] = field(default_factory=list)
    siblings_override: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # commit -> raw siblings

    def commit_of(self, rev: str) -> str | None:
        """The commit a branch name or full commit sha names, or None."""
        if rev in self.branches:
            return self.branches[rev]
        return rev if rev in self.commits else None


class _HubHandler(_Handler):
    """The Hub origin's handler: the API and `/resolve`; plain files are served by the mirror code beneath."""

    hub: "Hub"
    _extra: dict[str, str]

    def end_headers(self) -> None:
        for k, v in getattr(self, "_extra", {}).items():
            self.send_header(k, v)
        self._extra = {}
        super().end_headers()

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None, path: str = "") -> None:
        self._simple(status, json.dumps(body).encode(), {"Content-Type": "application/json", **(headers or {})}, path=path)

    def _refuse(self, status: int, code: str | None, message: str, path: str, extra: dict[str, str] | None = None) -> None:
        headers = {"X-Error-Message": message, **(extra or {})}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers, path=path)

    def _serve(self, head: bool) -> None:
        hub = self.hub
        split = urlsplit(self.path)
        segs = [unquote(s) for s in split.path.strip("/").split("/")]
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        token = None
        auth = self.headers.get("Authorization") or ""
        if auth.lower().startswith("bearer "):
            token = auth[7:].strip()
        raw = "/".join(segs)
        with hub._lock:
            hub.via.append((raw, self.headers.get("Via")))
        if token is not None and token not in hub.tokens:
            return self._refuse(401, None, "Invalid credentials in Authorization header", raw)
        if len(segs) >= 4 and segs[0] == "api" and segs[1] == "models":
            hub._count_api(raw)
            return self._api(segs[2] + "/" + segs[3], segs[4:], query, token, raw)
        if len(segs) >= 5 and segs[2] == "resolve":
            return self._resolve(segs[0] + "/" + segs[1], segs[3], "/".join(segs[4:]), token, head, raw)
        return self._refuse(404, None, "Sorry, we can't find the page you are looking for.", raw)

    def _repo(self, repo_id: str, token: str | None, raw: str) -> HubRepo | None:
        repo = self.hub.repos.get(repo_id)
        if repo is None or (repo.private and token not in repo.access):
            # the Hub does not tell a private repository from a missing one
            self._refuse(404 if token else 401, "RepoNotFound", "Repository not found", raw)
            return None
        return repo

    def _api(self, repo_id: str, rest: list[str], query: dict[str, str], token: str | None, raw: str) -> None:
        repo = self._repo(repo_id, token, raw)
        if repo is None:
            return
        if not rest:
            kind, rev, sub = "info", "main", ""
        elif rest[0] in ("revision", "tree") and len(rest) >= 2:
            kind, rev, sub = ("info" if rest[0] == "revision" else "tree"), rest[1], "/".join(rest[2:])
        else:
            return self._refuse(404, None, "Sorry, we can't find the page you are looking for.", raw)
        commit = repo.commit_of(rev)
        if commit is None:
            return self._refuse(404, "RevisionNotFound", f"Invalid rev id: {rev}", raw)
        files = repo.commits[commit]
        if kind == "info":
            return self._json(200, self.hub._info(repo, commit, blobs=query.get("blobs", "").lower() in ("1", "true")), path=raw)
        recursive = query.get("recursive", "").lower() in ("1", "true")
        prefix = sub.strip("/") + "/" if sub.strip("/") else ""
        if prefix and not any(p.startswith(prefix) for p in files):
            return self._refuse(404, "EntryNotFound", f"{sub} does not exist on \"{rev}\"", raw, {"X-Repo-Commit": commit})
        out: list[dict[str, Any]] = []
        dirs: set[str] = set()
        for p in sorted(files):
            if not p.startswith(prefix):
                continue
            rel = p[len(prefix):]
            parts = rel.split("/")
            for i in range(1, len(parts)):
                d = prefix + "/".join(parts[:i])
                if d not in dirs and (recursive or i == 1):
                    dirs.add(d)
                    out.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d})
            if len(parts) > 1 and not recursive:
                continue
            f = files[p]
            entry: dict[str, Any] = {"type": "file", "oid": f.blob_id, "size": f.size, "path": p}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": len(lfs_pointer(f.sha256, f.size))}
            out.append(entry)
        self._json(200, out, path=raw)

    def _resolve(self, repo_id: str, rev: str, path: str, token: str | None, head: bool, raw: str) -> None:
        hub = self.hub
        hub._count_resolve(repo_id, path, self.command, rev, token)
        repo = self._repo(repo_id, token, raw)
        if repo is None:
            return
        commit = repo.commit_of(rev)
        if commit is None:
            return self._refuse(404, "RevisionNotFound", f"Invalid rev id: {rev}", raw)
        if repo.gated and token not in repo.access:
            if token is None:
                return self._refuse(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access to it and be "
                                    "authenticated to access it. Please log in.", raw)
            return self._refuse(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in the authorized list. "
                                f"Visit {hub.endpoint}/{repo_id} to ask for access.", raw)
        f = repo.commits[commit].get(path)
        if f is None:
            return self._refuse(404, "EntryNotFound", "Entry not found", raw, {"X-Repo-Commit": commit})
        common = {"X-Repo-Commit": commit, "Access-Control-Expose-Headers": "X-Repo-Commit,X-Linked-Etag,X-Linked-Size,ETag"}
        if f.lfs:
            headers = {**common, "Location": hub.signed_url(f.sha256, bridge=f.bridge), "X-Linked-Etag": f'"{f.sha256}"',
                       "X-Linked-Size": str(f.size), "ETag": f'"{f.blob_id}"'}
            return self._simple(302, b"", headers, path=raw)
        self._extra = {**common, "ETag": f'"{f.blob_id}"'}  # the Hub's ETag of a plain file is its git blob id
        self.path = "/" + quote(f"plain/{repo_id}/{commit}/{path}")
        super()._serve(head)


class Hub:
    """The test Hub and its storage host. Start with `start()` or `with Hub() as hub:`."""

    def __init__(self, host: str = "127.0.0.1", clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.repos: dict[str, HubRepo] = {}
        self.tokens: set[str] = set()
        self.url_ttl_s = 3600.0
        self._key = secrets.token_bytes(16)
        self._lock = threading.Lock()
        self.resolves: Counter[tuple[str, str]] = Counter()  # (repo, path) -> resolve requests
        self.resolve_log: list[tuple[str, str, str, str, bool]] = []  # (method, repo, revision, path, with a token)
        self.api_calls: list[str] = []
        self.via: list[tuple[str, str | None]] = []  # (path, its Via header): what came through a proxy
        self.storage_auth_seen: list[str] = []  # storage paths that were sent an Authorization header
        self.storage = Mirror(host)
        self.storage.gate = self._storage_gate
        self.bridge = Mirror(host)  # the newer storage backend's bridge host: another origin, the same signed URLs
        self.bridge.gate = self._storage_gate
        self.front = Mirror(host)
        self.front.handler_class = type("HubHandler", (_HubHandler,), {"hub": self})
        self._n = 0

    # --- lifecycle -------------------------------------------------------------
    def start(self) -> "Hub":
        """Start both servers."""
        self.storage.start()
        self.bridge.start()
        self.front.start()
        return self

    def stop(self) -> None:
        """Stop both servers."""
        self.front.stop()
        self.bridge.stop()
        self.storage.stop()

    def __enter__(self) -> "Hub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """The Hub's base URL without a trailing slash (what `HF_ENDPOINT` is set to)."""
        return self.front.base_url.rstrip("/")

    # --- content ------------------------------------------------------------------
    def add_repo(self, repo_id: str, files: Mapping[str, Any], *, branch: str = "main", gated: str | bool = False,
                 private: bool = False, lfs: Callable[[str], bool] | None = None, pipeline_tag: str | None = None,
                 tags: list[str] | None = None, bridge: Callable[[str], bool] | None = None) -> str:
        """Create a repository with one commit of `files` (bytes or Synthetic) on `branch`; return the commit sha.

        A file is stored with LFS unless its name ends like a config or text file (`lfs` decides otherwise).
        """
        repo = HubRepo(repo_id, gated=gated, private=private, pipeline_tag=pipeline_tag, tags=list(tags or []))
        with self._lock:
            self.repos[repo_id] = repo
        return self.commit(repo_id, files, branch=branch, lfs=lfs, bridge=bridge)

    def commit(self, repo_id: str, files: Mapping[str, Any], *, branch: str = "main", lfs: Callable[[str], bool] | None = None,
               keep: bool = False, bridge: Callable[[str], bool] | None = None) -> str:
        """A new commit on `branch` whose tree is `files` (`keep`: the branch's files, updated by `files`); return its sha.

        `bridge` says which LFS files are on the newer backend (served by the bridge host)."""
        repo = self.repos[repo_id]
        is_lfs = lfs or (lambda p: not p.endswith(PLAIN_SUFFIXES))
        tree: dict[str, _File] = dict(repo.commits.get(repo.branches.get(branch, ""), {})) if keep else {}
        for p, data in files.items():
            c = _content(data)
            tree[p] = _File(c, is_lfs(p), bridge is not None and bridge(p))
        with self._lock:
            self._n += 1
            sha = hashlib.sha1(f"{repo_id}:{branch}:{self._n}:{secrets.token_hex(4)}".encode()).hexdigest()
        for p, f in tree.items():
            if f.lfs:
                (self.bridge if f.bridge else self.storage).add(f"lfs/{f.sha256}", f.content)
            else:
                self.front.add(f"plain/{repo_id}/{sha}/{p}", f.content)
                self.front.faults(f"plain/{repo_id}/{sha}/{p}").etag = False  # the handler sends the blob id instead
        with self._lock:
            repo.commits[sha] = tree
            repo.branches[branch] = sha
        return sha

    def grant(self, repo_id: str, token: str) -> None:
        """Make `token` valid and let it read `repo_id` (accepted the gate, or a member of a private repository)."""
        self.tokens.add(token)
        self.repos[repo_id].access.add(token)

    def set_siblings(self, repo_id: str, siblings: list[dict[str, Any]] | None, rev: str = "main") -> None:
        """Answer the info of `rev` with `siblings` as given (None: the real ones): listings the Hub should never send."""
        repo = self.repos[repo_id]
        commit = repo.commit_of(rev)
        assert commit is not None
        if siblings is None:
            repo.siblings_override.pop(commit, None)
        else:
            repo.siblings_override[commit] = [dict(s) for s in siblings]

    def blob_path(self, repo_id: str, path: str, rev: str = "main") -> str:
        """The storage host's path of an LFS file (for its faults and counters)."""
        repo = self.repos[repo_id]
        commit = repo.commit_of(rev)
        assert commit is not None
        return f"lfs/{repo.commits[commit][path].sha256}"

    def file_sha256(self, repo_id: str, path: str, rev: str = "main") -> str:
        """The sha256 of a file at a revision."""
        repo = self.repos[repo_id]
        commit = repo.commit_of(rev)
        assert commit is not None
        return repo.commits[commit][path].sha256

    # --- signed storage URLs -----------------------------------------------------------
    def _sign(self, path: str, expires: int) -> str:
        return hmac.new(self._key, f"{path}:{expires}".encode(), hashlib.sha256).hexdigest()

    def signed_url(self, sha256: str, bridge: bool = False) -> str:
        """An absolute storage (or bridge) URL for a blob, valid for `url_ttl_s`."""
        path = f"lfs/{sha256}"
        expires = int(self.clock() + self.url_ttl_s)
        host = self.bridge if bridge else self.storage
        return f"{host.url(path)}?Expires={expires}&Signature={self._sign(path, expires)}&Key-Pair-Id=TEST"

    def expire_urls(self) -> None:
        """Make every storage URL signed so far refused (as if each had expired)."""
        self._key = secrets.token_bytes(16)

    def _storage_gate(self, path: str, query: str, headers: Mapping[str, str]) -> tuple[int, bytes] | None:
        if headers.get("Authorization"):
            with self._lock:
                self.storage_auth_seen.append(path)
        q = {k: v[-1] for k, v in parse_qs(query).items()}
        try:
            expires = int(q.get("Expires", ""))
        except ValueError:
            return 403, b"<Error><Code>AccessDenied</Code><Message>Missing signature</Message></Error>"
        if not hmac.compare_digest(q.get("Signature", ""), self._sign(path, expires)):
            return 403, b"<Error><Code>AccessDenied</Code><Message>Invalid signature</Message></Error>"
        if self.clock() >= expires:
            return 403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
        return None

    # --- counters --------------------------------------------------------------------
    def _count_resolve(self, repo_id: str, path: str, method: str, rev: str, token: str | None) -> None:
        with self._lock:
            self.resolves[(repo_id, path)] += 1
            self.resolve_log.append((method, repo_id, rev, path, token is not None))

    def _count_api(self, raw: str) -> None:
        with self._lock:
            self.api_calls.append(raw)

    def reset_counters(self) -> None:
        """Zero the Hub's, the storage host's and the bridge's counters, once the answers under way are counted."""
        for m in (self.front, self.storage, self.bridge):
            m.wait_idle(2.0)
        with self._lock:
            self.resolves.clear()
            self.resolve_log.clear()
            self.api_calls.clear()
            self.via.clear()
            self.storage_auth_seen.clear()
        self.storage.reset_counters()
        self.bridge.reset_counters()
        self.front.reset_counters()

    def storage_bytes(self) -> int:
        """Body bytes the storage and bridge hosts have sent since the last reset."""
        return sum(self.storage.bytes_served.values()) + sum(self.bridge.bytes_served.values())

    # --- the API's answers -------------------------------------------------------------
    def _info(self, repo: HubRepo, commit: str, blobs: bool) -> dict[str, Any]:
        files = repo.commits[commit]
        siblings: list[dict[str, Any]] = []
        for p in sorted(files):
            f = files[p]
            sib: dict[str, Any] = {"rfilename": p}
            if blobs:
                sib["blobId"] = f.blob_id
                sib["size"] = f.size
                if f.lfs:
                    sib["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": len(lfs_pointer(f.sha256, f.size))}
            siblings.append(sib)
        if commit in repo.siblings_override:
            siblings = repo.siblings_override[commit]
        org = repo.repo_id.split("/")[0]
        return {"_id": hashlib.sha1(repo.repo_id.encode()).hexdigest()[:24], "id": repo.repo_id, "modelId": repo.repo_id,
                "author": org, "sha": commit, "lastModified": "2025-07-28T00:00:00.000Z", "createdAt": "2025-07-01T00:00:00.000Z",
                "private": repo.private, "gated": repo.gated, "disabled": False, "downloads": 0, "likes": 0,
                "library_name": "diffusers", "tags": repo.tags, "pipeline_tag": repo.pipeline_tag, "siblings": siblings,
                "usedStorage": sum(f.size for f in files.values())}
