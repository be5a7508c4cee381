"""`hf://ORG/REPO@REVISION` sources: the file list (paths, sizes, hashes) from the Hub's API."""

from __future__ import annotations

import os
from typing import Mapping
from urllib.parse import quote, urlsplit

import httpx

from core.catalog import HF_SOURCE_RE
from core.downloads.transfer import FileJob
from core.errors import SourceUnavailable
from core.paths import is_safe_relative

DEFAULT_ENDPOINT = "https://huggingface.co"


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


async def resolve_hf(client: httpx.AsyncClient, source: str, environ: Mapping[str, str] | None = None, timeout: float = 30.0) -> list[FileJob]:
    """List the files of a Hub repository revision; SourceUnavailable with a reason a person can act on."""
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
    jobs: list[FileJob] = []
    for sib in siblings:
        path = sib.get("rfilename") if isinstance(sib, dict) else None
        if not isinstance(path, str) or not is_safe_relative(path):
            raise SourceUnavailable(f"the Hub lists an unsafe file name {path!r} in {org}/{repo}", source=source)
        lfs = sib.get("lfs") or {}
        size = lfs.get("size", sib.get("size"))
        if not isinstance(size, int) or size < 0:
            raise SourceUnavailable(f"the Hub gives no size for {path} in {org}/{repo}", source=source)
        sha = lfs.get("sha256")
        git = None if sha else sib.get("blobId")
        url = f"{endpoint}/{org}/{repo}/resolve/{quote(rev, safe='')}/{quote(path)}"
        jobs.append(FileJob(path=path, urls=(url,), size=size, sha256=sha.lower() if isinstance(sha, str) else None,
                            git_sha1=git if isinstance(git, str) else None))
    if not jobs:
        raise SourceUnavailable(f"{org}/{repo} at {rev} has no files", source=source)
    return jobs
