"""`hf://ORG/REPO@REVISION` sources: the file list (paths, sizes, hashes) from the Hub's API."""

from __future__ import annotations

import os
import re
from typing import Mapping
from urllib.parse import quote, urlsplit

import httpx

from mavail.core.catalog import HF_SOURCE_RE, SHA256_RE
from mavail.core.downloads.transfer import FileJob
from mavail.core.errors import SourceUnavailable
from mavail.core.paths import is_safe_relative

DEFAULT_ENDPOINT = "https://huggingface.co"
MAX_SIZE = 2 ** 63  # sizes go into SQLite INTEGER columns (signed 64-bit)
_SHA1_RE = re.compile(r"[0-9a-f]{40}")  # with fullmatch: $ would let a trailing newline through


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


def hf_endpoint(environ: Mapping[str, str] | None = None) -> str:
    """`HF_ENDPOINT` without a trailing slash, else the public Hub."""
    env = os.environ if environ is None else environ
    return (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hf_headers(url: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The Authorization header for `url` when it is on the Hub endpoint and `HF_TOKEN` is set."""
    env = os.environ if environ is None else environ
    token = env.get("HF_TOKEN")
    if not token:
        return {}
    ep = urlsplit(hf_endpoint(env))
    u = urlsplit(url)
    if (u.scheme, u.netloc) != (ep.scheme, ep.netloc):
        return {}
    return {"Authorization": f"Bearer {token}"}


async def resolve_hf(client: httpx.AsyncClient, source: str, environ: Mapping[str, str] | None = None, timeout: float = 30.0,
                     allow_unverified: bool = False) -> list[FileJob]:
    """List the files of a Hub repository revision; SourceUnavailable with a reason a person can act on.

    The listing is checked whole before anything is fetched: safe unique names (no file that is also
    another's directory), sizes in [0, 2**63), well-formed hashes, and a hash for every file unless
    `allow_unverified` (the catalog entry's flag).
    """
    m = HF_SOURCE_RE.match(source)
    if not m:
        raise SourceUnavailable(f"{source!r} is not an hf://ORG/REPO@REVISION source", source=source)
    org, repo, rev = m.group(1), m.group(2), m.group(3) or "main"
    endpoint = hf_endpoint(environ)
    api = f"{endpoint}/api/models/{org}/{repo}/revision/{quote(rev, safe='')}"
    try:
        resp = await client.get(api, params={"blobs": "true"}, headers=hf_headers(api, environ), timeout=timeout)
    except httpx.HTTPError:
        raise SourceUnavailable(f"cannot reach the Hub at {endpoint} (check HF_ENDPOINT and the network)", source=source, endpoint=endpoint) from None
    if resp.status_code in (401, 403):
        raise SourceUnavailable(f"the Hub refused access to {org}/{repo}: set HF_TOKEN to a token that can read it",
                                source=source, status=resp.status_code)
    if resp.status_code == 404:
        raise SourceUnavailable(f"{org}/{repo} at revision {rev} was not found on {endpoint}", source=source, status=404)
    if resp.status_code != 200:
        raise SourceUnavailable(f"the Hub answered HTTP {resp.status_code} for {org}/{repo}", source=source, status=resp.status_code)
    try:
        siblings = resp.json()["siblings"]
    except (ValueError, KeyError, TypeError):
        raise SourceUnavailable(f"the Hub's answer for {org}/{repo} has no file list", source=source) from None
    if not isinstance(siblings, list):
        raise SourceUnavailable(f"the Hub's answer for {org}/{repo} has no file list", source=source)
    jobs: list[FileJob] = []
    for sib in siblings:
        path = sib.get("rfilename") if isinstance(sib, dict) else None
        if not isinstance(path, str) or not is_safe_relative(path) or len(path) > 1024:
            raise SourceUnavailable(f"the Hub lists an unsafe file name {path!r} in {org}/{repo}", source=source)
        assert isinstance(sib, dict)
        lfs = sib.get("lfs")
        if lfs is not None and not isinstance(lfs, dict):
            raise SourceUnavailable(f"the Hub's entry for {path} in {org}/{repo} is malformed", source=source, path=path)
        lfs = lfs or {}
        size = lfs.get("size", sib.get("size"))
        if not _is_size(size):
            raise SourceUnavailable(f"the Hub gives no usable size for {path} in {org}/{repo} ({str(size)[:40]!r}): "
                                    f"a size must be an integer from 0 to 2**63-1", source=source, path=path)
        sha = lfs.get("sha256")
        if sha is not None and not (isinstance(sha, str) and SHA256_RE.fullmatch(sha.lower())):
            raise SourceUnavailable(f"the Hub gives a malformed sha256 for {path} in {org}/{repo}", source=source, path=path)
        git = None if sha else sib.get("blobId")
        if git is not None and not (isinstance(git, str) and _SHA1_RE.fullmatch(git.lower())):
            raise SourceUnavailable(f"the Hub gives a malformed blob id for {path} in {org}/{repo}", source=source, path=path)
        if sha is None and git is None and not allow_unverified:
            raise SourceUnavailable(f"the Hub gives neither a sha256 nor a blob id for {path} in {org}/{repo}, so its bytes "
                                    f"cannot be verified; set allow_unverified = true on the catalog entry to install it anyway",
                                    source=source, path=path)
        url = f"{endpoint}/{org}/{repo}/resolve/{quote(rev, safe='')}/{quote(path)}"
        jobs.append(FileJob(path=path, urls=(url,), size=size, sha256=sha.lower() if isinstance(sha, str) else None,
                            git_sha1=git.lower() if isinstance(git, str) else None))
    problem = path_collision([j.path for j in jobs])
    if problem:
        raise SourceUnavailable(f"the Hub's file list for {org}/{repo} at {rev} is refused: {problem}", source=source)
    if not jobs:
        raise SourceUnavailable(f"{org}/{repo} at {rev} has no files", source=source)
    return jobs
