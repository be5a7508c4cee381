"""`hf://ORG/REPO@REVISION` sources: the Hub's API, its tokens, its refusals, and the commit a download is pinned to.

The revision is resolved once, at a download's start, to a commit (the API's
`sha`); every file is then fetched from `/resolve/<commit>/<path>`, so a branch
that moves meanwhile changes nothing. Before a file is fetched, one `HEAD` of its
resolve URL (not followed) tells where its bytes are (the storage host's signed
URL, handed to the transfer as `FileJob.located`), cross-checks its size and
sha256 with `X-Linked-Size`/`X-Linked-Etag`, and turns the Hub's `X-Error-Code`
into a message a person can act on. `Authorization` goes only to the Hub's own
origin, never to the storage host a resolve redirects to.
"""

from __future__ import annotations

import asyncio
import os
import re
from dataclasses import dataclass, replace
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Awaitable, Callable, Mapping, Sequence
from urllib.parse import quote, unquote, urljoin, urlsplit

import httpx

from mavail.core.catalog import HF_SOURCE_RE, SHA256_RE
from mavail.core.downloads.http_range import proxy_variable
from mavail.core.downloads.transfer import FileJob
from mavail.core.errors import HubRefused, SourceUnavailable
from mavail.core import hubpins
from mavail.core.hubpins import resolve_url
from mavail.core.paths import is_safe_relative

DEFAULT_ENDPOINT = "https://huggingface.co"
MAX_SIZE = 2 ** 63  # sizes go into SQLite INTEGER columns (signed 64-bit)
_SHA1_RE = re.compile(r"[0-9a-f]{40}")  # with fullmatch: $ would let a trailing newline through
_DEFAULT_PORTS = {"http": 80, "https": 443}


def path_collision(paths: list[str]) -> str | None:
    """Why a list of file paths cannot all be files of one directory tree (a name twice, or a file that is
    also another's directory), or None when they can."""
    seen: set[str] = set()
    for p in paths:
        if p in seen:
            return f"file path {p!r} is listed twice"
        seen.add(p)
    for p in sorted(seen):
        parts = p.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent in seen:
                return f"file path {p!r} collides with the file {parent!r} (it would have to be a directory)"
    return None


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < MAX_SIZE


def _origin(url: str) -> tuple[str, str, int]:
    u = urlsplit(url)
    return u.scheme, (u.hostname or "").lower(), u.port or _DEFAULT_PORTS.get(u.scheme, 0)


def hf_endpoint(environ: Mapping[str, str] | None = None) -> str:
    """`HF_ENDPOINT` without a trailing slash, else the public Hub."""
    env = os.environ if environ is None else environ
    return (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def token_file(environ: Mapping[str, str] | None = None) -> Path:
    """Where the Hub's tools keep the token `hf auth login` writes: `HF_TOKEN_PATH`, else `$HF_HOME/token`
    (`HF_HOME` defaulting to `$XDG_CACHE_HOME/huggingface`, then `~/.cache/huggingface`)."""
    env = os.environ if environ is None else environ
    if env.get("HF_TOKEN_PATH"):
        return Path(env["HF_TOKEN_PATH"]).expanduser()
    return hf_home(env) / "token"


def hf_home(environ: Mapping[str, str] | None = None) -> Path:
    """`HF_HOME`, else `$XDG_CACHE_HOME/huggingface`, else `~/.cache/huggingface`."""
    env = os.environ if environ is None else environ
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser()
    xdg = env.get("XDG_CACHE_HOME") or str(Path(env.get("HOME") or Path.home()) / ".cache")
    return Path(xdg).expanduser() / "huggingface"


def read_token(environ: Mapping[str, str] | None = None) -> tuple[str | None, str]:
    """(token, where it came from): `HF_TOKEN`, then the token file; (None, "") without one. Blocking (reads a file)."""
    env = os.environ if environ is None else environ
    if env.get("HF_TOKEN", "").strip():
        return env["HF_TOKEN"].strip(), "HF_TOKEN"
    path = token_file(env)
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None, ""
    return (text, str(path)) if text else (None, "")


def proxy_mounts(env: Mapping[str, str], verify: Any = True) -> dict[str, httpx.AsyncBaseTransport | None]:
    """httpx mounts for `HTTPS_PROXY`, `HTTP_PROXY` and `ALL_PROXY`, with the hosts of `NO_PROXY` going direct
    (`*` for every host; a name also covers its subdomains; IPs and `localhost` as given)."""
    mounts: dict[str, httpx.AsyncBaseTransport | None] = {}
    every = proxy_variable(env, "all_proxy")
    for scheme in ("http", "https"):
        proxy = proxy_variable(env, f"{scheme}_proxy") or every
        if proxy:
            mounts[f"{scheme}://"] = httpx.AsyncHTTPTransport(proxy=proxy if "://" in proxy else "http://" + proxy, verify=verify)
    if not mounts:
        return {}
    for host in (h.strip() for h in proxy_variable(env, "no_proxy").split(",")):
        if host == "*":
            return {}
        if not host:
            continue
        if "://" in host:
            mounts[host] = None
        elif host.lower() == "localhost" or re.fullmatch(r"[0-9.]+", host):
            mounts[f"all://{host}"] = None
        elif ":" in host and re.fullmatch(r"[0-9a-fA-F:]+", host.strip("[]")):
            mounts[f"all://[{host.strip('[]')}]"] = None
        else:
            host = host.lstrip(".")
            mounts[f"all://{host}"] = None
            mounts[f"all://*.{host}"] = None
    return mounts


def ca_bundle(env: Mapping[str, str]) -> Any:
    """What to verify TLS with: an SSL context from `SSL_CERT_FILE`/`SSL_CERT_DIR` when set, else httpx's default."""
    cafile, capath = env.get("SSL_CERT_FILE") or None, env.get("SSL_CERT_DIR") or None
    if not cafile and not capath:
        return True
    import ssl

    return ssl.create_default_context(cafile=cafile, capath=capath)


class HubAccess:
    """The Hub endpoint, token and API client one engine uses; the token file is read off the loop by `refresh()`."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        """`environ` (None: os.environ) is read at each use, so a test may change the dict it passed."""
        self._environ = environ
        self._file_token: tuple[str | None, str] = (None, "")
        self._client: tuple[tuple[str, ...], httpx.AsyncClient] | None = None
        self._retired: list[httpx.AsyncClient] = []

    def api_client(self) -> httpx.AsyncClient:
        """The HTTP client of API calls and resolves: proxies (`HTTPS_PROXY`, `NO_PROXY`...) and the CA bundle
        (`SSL_CERT_FILE`) from the environment, redirects not followed; rebuilt when those variables change."""
        names = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
        key = tuple(proxy_variable(self.env, n) for n in names) + (self.env.get("SSL_CERT_FILE", ""), self.env.get("SSL_CERT_DIR", ""))
        if self._client is None or self._client[0] != key:
            old = self._client[1] if self._client else None
            verify = ca_bundle(self.env)
            client = httpx.AsyncClient(http1=True, follow_redirects=False, trust_env=False, verify=verify,
                                       mounts=proxy_mounts(self.env, verify), timeout=httpx.Timeout(30.0, pool=None))
            self._client = (key, client)
            if old is not None:
                self._retired.append(old)
        return self._client[1]

    async def aclose(self) -> None:
        """Close the API clients."""
        clients = self._retired + ([self._client[1]] if self._client else [])
        self._retired, self._client = [], None
        for c in clients:
            await c.aclose()

    @property
    def env(self) -> Mapping[str, str]:
        """The environment in use."""
        return os.environ if self._environ is None else self._environ

    @property
    def endpoint(self) -> str:
        """The Hub's base URL."""
        return hf_endpoint(self.env)

    async def refresh(self) -> None:
        """Read the token file again (in a worker thread): a login since the last read takes effect."""
        self._file_token = await asyncio.to_thread(read_token, {k: v for k, v in self.env.items() if k != "HF_TOKEN"})

    @property
    def token(self) -> tuple[str | None, str]:
        """(token, where it came from): `HF_TOKEN` as set now, else the token file as last read."""
        t = self.env.get("HF_TOKEN", "").strip()
        return (t, "HF_TOKEN") if t else self._file_token

    def headers(self, url: str, endpoint: str | None = None) -> dict[str, str]:
        """`Authorization` for a URL on the Hub's own origin (`endpoint`, default the current one) when a token is
        known; nothing for any other origin (a storage host after a redirect, a mirror)."""
        token = self.token[0]
        if not token or _origin(url) != _origin(endpoint or self.endpoint):
            return {}
        return {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True)
class HubRef:
    """An `hf://` source taken apart: `org/repo` and the revision asked for (a branch, tag or commit)."""

    source: str
    repo_id: str
    revision: str

    @classmethod
    def parse(cls, source: str) -> "HubRef":
        """Parse `hf://ORG/REPO[@REVISION]`; SourceUnavailable when it is not one."""
        m = HF_SOURCE_RE.match(source)
        if not m:
            raise SourceUnavailable(f"{source!r} is not an hf://ORG/REPO@REVISION source", source=source)
        return cls(source, f"{m.group(1)}/{m.group(2)}", m.group(3) or "main")


def matches(path: str, include: Sequence[str] | None, exclude: Sequence[str] | None) -> bool:
    """Whether a repository path is kept by `include`/`exclude` globs, as `huggingface_hub.utils.filter_repo_objects`
    decides (fnmatch, case-sensitive, `*` crossing `/`, a pattern ending in `/` meaning everything below it)."""
    def norm(p: str) -> str:
        p = p.replace("\\", "/")
        return p + "*" if p.endswith("/") else p

    if include is not None and not any(fnmatchcase(path, norm(p)) for p in include):
        return False
    return not (exclude is not None and any(fnmatchcase(path, norm(p)) for p in exclude))


# --- the Hub's refusals -------------------------------------------------------------------------
def refusal(resp: httpx.Response, ref: HubRef, access: HubAccess, *, path: str | None = None, commit: str | None = None,
            endpoint: str | None = None) -> HubRefused | None:
    """The Hub's refusal in `resp` (X-Error-Code, else the status) as a message a person can act on; None for 2xx/3xx."""
    st = resp.status_code
    if st < 400:
        return None
    code = resp.headers.get("x-error-code")
    hub_msg = resp.headers.get("x-error-message") or ""
    ep = endpoint or access.endpoint
    token, where = access.token
    page = f"{ep}/{ref.repo_id}"
    details: dict[str, Any] = {"source": ref.source, "status": st, "hub_error": code, "hub_message": hub_msg[:300]}
    if path:
        details["path"] = path
    if code == "GatedRepo":
        if token:
            msg = (f"{ref.repo_id} is gated and the token from {where} has not been granted access: sign in to {page} with "
                   f"that token's account and accept the licence there (or use a token of an account that has)")
        else:
            msg = (f"{ref.repo_id} is gated: accept the licence at {page} (signed in), then set HF_TOKEN (or run "
                   f"`hf auth login`) to a token of that account")
        return HubRefused(msg, **details)
    if code == "RepoNotFound" or (st == 401 and "invalid credentials" not in hub_msg.lower()):
        if token:
            msg = (f"{ref.repo_id} was not found on {ep}, or the token from {where} cannot read it: check the name in "
                   f"{ref.source!r}; a private repository needs a token with read access to it")
        else:
            msg = (f"{ref.repo_id} was not found on {ep}: check the name in {ref.source!r}; if it is private, set HF_TOKEN "
                   f"(or run `hf auth login`) to a token that can read it")
        details["hub_error"] = code or "RepoNotFound"
        return HubRefused(msg, **details)
    if code == "RevisionNotFound":
        what = f"commit {commit}, which this version is pinned to," if commit else f"revision {ref.revision!r}"
        return HubRefused(f"{ref.repo_id} has no {what} on {ep}: check the revision after '@' in {ref.source!r} (a branch, "
                          f"tag or full commit sha)" + ("; the branch's history may have been rewritten" if commit else ""), **details)
    if code == "EntryNotFound":
        return HubRefused(f"{path or 'a file'} is not in {ref.repo_id} at {commit or ref.revision} on {ep}", **details)
    if st == 401:
        details["hub_error"] = code or "InvalidToken"
        return HubRefused(f"the Hub refused the token from {where or 'the request'} as invalid or expired: set HF_TOKEN to a "
                          f"valid token or log in again (`hf auth login`)", **details)
    if st == 403:
        return HubRefused(f"the Hub refused access to {ref.repo_id} (HTTP 403{': ' + hub_msg if hub_msg else ''}): the token "
                          f"from {where or 'nowhere (none is set)'} may lack the permission", **details)
    if st == 429:
        return HubRefused(f"the Hub is rate-limiting requests for {ref.repo_id} (HTTP 429): wait and resume; a token "
                          f"(HF_TOKEN) raises the limit", **details)
    return HubRefused(f"the Hub answered HTTP {st} for {ref.repo_id}" + (f": {hub_msg}" if hub_msg else ""), **details)


# --- the listing ------------------------------------------------------------------------------
@dataclass(frozen=True)
class HubListing:
    """A repository revision as the API gave it: the commit, the files to fetch, and what the model card says."""

    ref: HubRef
    endpoint: str
    commit: str
    jobs: list[FileJob]
    gated: bool
    private: bool
    pipeline_tag: str | None
    tags: tuple[str, ...]
    skipped: int  # files left out by include/exclude


async def list_revision(client: httpx.AsyncClient, access: HubAccess, source: str, *, commit: str | None = None,
                        endpoint: str | None = None, include: Sequence[str] | None = None, exclude: Sequence[str] | None = None,
                        allow_unverified: bool = False, timeout: float = 30.0) -> HubListing:
    """The files of a Hub repository at its revision (or at `commit`, a pin), filtered by `include`/`exclude`.

    The listing is checked whole before anything is fetched: safe unique names (no file that is also
    another's directory), sizes in [0, 2**63), well-formed hashes, and a hash for every file unless
    `allow_unverified` (the catalog entry's flag). Every file's URL names the commit.
    """
    ref = HubRef.parse(source)
    ep = (endpoint or access.endpoint).rstrip("/")
    rev = commit or ref.revision
    api = f"{ep}/api/models/{ref.repo_id}/revision/{quote(rev, safe='')}"
    repo = ref.repo_id
    try:
        resp = await client.get(api, params={"blobs": "true"}, headers=access.headers(api, ep), timeout=timeout)
    except httpx.HTTPError:
        raise SourceUnavailable(f"cannot reach the Hub at {ep} (check HF_ENDPOINT, the network and HTTPS_PROXY)", source=source,
                                endpoint=ep) from None
    refused = refusal(resp, ref, access, commit=commit, endpoint=ep)
    if refused is not None:
        raise refused
    if resp.status_code != 200:
        raise SourceUnavailable(f"the Hub answered HTTP {resp.status_code} for {repo}", source=source, status=resp.status_code)
    try:
        info = resp.json()
        siblings = info["siblings"]
    except (ValueError, KeyError, TypeError):
        raise SourceUnavailable(f"the Hub's answer for {repo} has no file list", source=source) from None
    if not isinstance(siblings, list):
        raise SourceUnavailable(f"the Hub's answer for {repo} has no file list", source=source)
    sha = info.get("sha")
    if not (isinstance(sha, str) and _SHA1_RE.fullmatch(sha)):
        raise SourceUnavailable(f"the Hub's answer for {repo} at {rev} names no commit (sha {str(sha)[:50]!r})", source=source)
    if commit and sha != commit:
        raise SourceUnavailable(f"the Hub answered commit {sha} when asked for the pinned commit {commit} of {repo}", source=source)
    jobs: list[FileJob] = []
    skipped = 0
    for sib in siblings:
        path = sib.get("rfilename") if isinstance(sib, dict) else None
        if not isinstance(path, str) or not is_safe_relative(path) or len(path) > 1024:
            raise SourceUnavailable(f"the Hub lists an unsafe file name {path!r} in {repo}", source=source)
        assert isinstance(sib, dict)
        if not matches(path, include, exclude):
            skipped += 1
            continue
        lfs = sib.get("lfs")
        if lfs is not None and not isinstance(lfs, dict):
            raise SourceUnavailable(f"the Hub's entry for {path} in {repo} is malformed", source=source, path=path)
        lfs = lfs or {}
        size = lfs.get("size", sib.get("size"))
        if not _is_size(size):
            raise SourceUnavailable(f"the Hub gives no usable size for {path} in {repo} ({str(size)[:40]!r}): "
                                    f"a size must be an integer from 0 to 2**63-1", source=source, path=path)
        digest = lfs.get("sha256")
        if digest is not None and not (isinstance(digest, str) and SHA256_RE.fullmatch(digest.lower())):
            raise SourceUnavailable(f"the Hub gives a malformed sha256 for {path} in {repo}", source=source, path=path)
        git = None if digest else sib.get("blobId")
        if git is not None and not (isinstance(git, str) and _SHA1_RE.fullmatch(git.lower())):
            raise SourceUnavailable(f"the Hub gives a malformed blob id for {path} in {repo}", source=source, path=path)
        if digest is None and git is None and not allow_unverified:
            raise SourceUnavailable(f"the Hub gives neither a sha256 nor a blob id for {path} in {repo}, so its bytes "
                                    f"cannot be verified; set allow_unverified = true on the catalog entry to install it anyway",
                                    source=source, path=path)
        jobs.append(FileJob(path=path, urls=(resolve_url(ep, repo, sha, path),), size=size,
                            sha256=digest.lower() if isinstance(digest, str) else None,
                            git_sha1=git.lower() if isinstance(git, str) else None))
    problem = path_collision([j.path for j in jobs])
    if problem:
        raise SourceUnavailable(f"the Hub's file list for {repo} at {rev} is refused: {problem}", source=source)
    if not jobs:
        why = f" ({skipped} left out by include/exclude)" if skipped else ""
        raise SourceUnavailable(f"{repo} at {rev} has no files to fetch{why}", source=source)
    gated = info.get("gated")
    tags = info.get("tags")
    return HubListing(ref=ref, endpoint=ep, commit=sha, jobs=jobs, gated=bool(gated) and gated != "false",
                      private=info.get("private") is True,
                      pipeline_tag=info.get("pipeline_tag") if isinstance(info.get("pipeline_tag"), str) else None,
                      tags=tuple(t for t in tags if isinstance(t, str)) if isinstance(tags, list) else (), skipped=skipped)


# --- one file's location ----------------------------------------------------------------------------
def parse_resolve_url(url: str) -> tuple[str, str, str, str] | None:
    """(endpoint, repo_id, revision, path) of a Hub resolve URL, or None."""
    u = urlsplit(url)
    m = re.match(r"^/([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", u.path)
    if not m:
        return None
    return f"{u.scheme}://{u.netloc}", m.group(1), unquote(m.group(2)), unquote(m.group(3))


async def locate(client: httpx.AsyncClient, access: HubAccess, job: FileJob, *, timeout: float = 30.0,
                 preflight: bool = False) -> FileJob:
    """One `HEAD` of an LFS file's resolve URL, not followed: the job with `located` set to where its bytes are.

    Raises HubRefused with the Hub's reason (gated, missing, ...), and SourceUnavailable when the Hub's
    `X-Linked-Size` or `X-Linked-Etag` contradicts the listing. A job that is not a Hub resolve URL, or
    is already located, is returned as is; so is a plain git file (no sha256: the Hub serves it itself,
    and its one GET is its one resolve) unless `preflight` asks for the Hub's verdict anyway; a network
    error leaves locating to the transfer.
    """
    if job.located or len(job.urls) != 1 or (job.sha256 is None and not preflight):
        return job
    url = job.urls[0]
    parts = parse_resolve_url(url)
    if parts is None:
        return job
    ep, repo_id, commit, path = parts
    ref = HubRef(f"hf://{repo_id}", repo_id, commit)
    try:
        resp = await client.head(url, headers={"Accept-Encoding": "identity", **access.headers(url, ep)}, timeout=timeout,
                                 follow_redirects=False)
    except httpx.HTTPError:
        return job
    refused = refusal(resp, ref, access, path=path, commit=commit, endpoint=ep)
    if refused is not None:
        if resp.status_code in (429,) or resp.status_code >= 500:
            return job  # passing trouble: the transfer retries
        raise refused
    linked_size = resp.headers.get("x-linked-size")
    if linked_size is not None and linked_size.isdigit() and int(linked_size) != job.size:
        raise SourceUnavailable(f"the Hub says {path} of {repo_id} has {linked_size} bytes, its listing said {job.size}", path=path)
    etag = (resp.headers.get("x-linked-etag") or "").strip().removeprefix("W/").strip('"').lower()
    if job.sha256 and SHA256_RE.fullmatch(etag) and etag != job.sha256:
        raise SourceUnavailable(f"the Hub says {path} of {repo_id} has sha256 {etag}, its listing said {job.sha256}", path=path)
    if resp.status_code in (301, 302, 303, 307, 308) and resp.headers.get("location"):
        return replace(job, located=((url, urljoin(url, resp.headers["location"])),))
    return job


# --- the pinned listing of a model version ---------------------------------------------------------
async def resolve_pinned(db: Any, client: httpx.AsyncClient, access: HubAccess, spec: Any, now: float,
                         on_disk: Callable[[FileJob], Awaitable[bool]] | None = None) -> HubListing:
    """The files of an `hf://` model version at the commit it is pinned to; the first resolve pins it.

    A version whose pin was made from the same source (and so is being resumed, repaired, or
    downloaded again) lists that commit (on the endpoint in use now, which the pin then records for
    repairs); otherwise the revision is resolved now and the commit recorded. The first file not already on disk (`on_disk`: a cache
    holds its blob) is then located (one HEAD), so a gated or otherwise refused repository is told
    before the download is queued; with every file on disk, nothing is asked of the Hub but the listing.
    """
    await access.refresh()
    pin = await db.read(lambda conn: hubpins.read(conn, spec.id, spec.version))
    kwargs = {"include": spec.include, "exclude": spec.exclude, "allow_unverified": spec.allow_unverified}
    if pin is not None and pin.source == spec.source:
        # the commit is the Hub's wherever it is served from: an endpoint changed since (a mirror) serves it too
        listing = await list_revision(client, access, spec.source, commit=pin.commit, **kwargs)
        if listing.endpoint != pin.endpoint:
            moved = replace(pin, endpoint=listing.endpoint)
            await db.write(lambda conn: hubpins.write(conn, moved))
    else:
        listing = await list_revision(client, access, spec.source, **kwargs)
        new = hubpins.HubPin(spec.id, spec.version, spec.source, listing.endpoint, listing.commit, now)
        await db.write(lambda conn: hubpins.write(conn, new))
    jobs = list(listing.jobs)
    missing = [k for k, j in enumerate(jobs) if not (on_disk is not None and await on_disk(j))]
    if missing:
        i = next((k for k in missing if jobs[k].sha256), missing[0])  # an LFS file, whose HEAD also locates it
        jobs[i] = await locate(client, access, jobs[i], preflight=True)
    return replace(listing, jobs=jobs)


# --- has the branch moved? ----------------------------------------------------------------------
@dataclass(frozen=True)
class BranchMove:
    """An installed `hf://` version pinned to a commit its revision no longer names."""

    model_id: str
    version: str
    revision: str
    pinned_commit: str
    latest_commit: str


async def branch_moves(db: Any, client: httpx.AsyncClient, access: HubAccess, specs: Mapping[str, Any],
                       current: Mapping[str, str], timeout: float = 30.0) -> list[BranchMove]:
    """For each model in use (`current`: model_id -> version) from an `hf://` source whose revision is a branch or tag:
    whether the revision now points at another commit than the version's pin (one small API call each).
    A model the Hub cannot answer for now is left out (its check says nothing rather than something false)."""
    await access.refresh()
    pins = await db.read(lambda conn: hubpins.read_many(conn, list(current)))
    out: list[BranchMove] = []
    for mid, version in sorted(current.items()):
        spec = specs.get(mid)
        pin = pins.get((mid, version))
        if spec is None or pin is None or spec.source != pin.source:
            continue
        ref = HubRef.parse(spec.source)
        if _SHA1_RE.fullmatch(ref.revision):
            continue  # pinned by the catalog itself: nothing can move
        api = f"{pin.endpoint}/api/models/{ref.repo_id}/revision/{quote(ref.revision, safe='')}"
        try:
            resp = await client.get(api, headers=access.headers(api, pin.endpoint), timeout=timeout)
            sha = resp.json().get("sha") if resp.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            continue
        if isinstance(sha, str) and _SHA1_RE.fullmatch(sha) and sha != pin.commit:
            out.append(BranchMove(mid, version, ref.revision, pin.commit, sha))
    return out
