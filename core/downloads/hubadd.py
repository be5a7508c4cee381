"""Adding a Hub model to the catalog without writing TOML: read the repository, write a validated entry in catalog.d/.

`add_from_hub` takes an `hf://ORG/REPO[@REV]` source or the name of a shipped model
(`core.known_models`), reads the revision's files, sizes, hashes and commit from the API (the
same checks as a download's listing, include/exclude applied), maps the model card's
`pipeline_tag` to a model type, and writes `catalog.d/<id>.toml`, parsed back before it is
put in place. The catalog is then reloaded by the caller.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import httpx
import tomlkit

from mavail.core import safefs
from mavail.core.catalog import MODEL_ID_RE, MODEL_TYPES, ModelSpec, parse_catalog_text
from mavail.core.downloads.hf import HubAccess, HubRef, list_revision, locate
from mavail.core.errors import Conflict, HubRefused, InvalidParams
from mavail.core.known_models import KNOWN_MODELS

PIPELINE_TYPES = {"text-to-video": "text_to_video", "image-to-video": "image_to_video", "text-image-to-video": "text_image_to_video"}


@dataclass(frozen=True)
class AddedModel:
    """What `add_from_hub` wrote: the id, the file, the source and what the Hub said of it."""

    model_id: str
    file: str
    source: str
    commit: str
    files: int
    size_bytes: int
    gated: bool
    access: str  # "ok", or why the files cannot be fetched yet (a gated repository without access)
    entry: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"model_id": self.model_id, "file": self.file, "source": self.source, "commit": self.commit, "files": self.files,
                "size_bytes": self.size_bytes, "gated": self.gated, "access": self.access, "entry": self.entry}


def default_id(repo_id: str) -> str:
    """A catalog id from a repository name: lowercased, other characters as '-'."""
    name = re.sub(r"[^a-z0-9._-]+", "-", repo_id.split("/")[-1].lower()).strip("-._") or "model"
    return name[:128]


async def add_from_hub(*, client: httpx.AsyncClient, access: HubAccess, catalog: Mapping[str, ModelSpec], home: Path,
                       catalog_dir: Path, source: str, model_id: str | None = None, include: Sequence[str] | None = None,
                       exclude: Sequence[str] | None = None, version: str = "1", display_name: str | None = None,
                       model_type: str | None = None) -> AddedModel:
    """Write `catalog_dir/<id>.toml` for a Hub repository (or a shipped model's name); Conflict if the id is taken."""
    known = KNOWN_MODELS.get(source.lower()) if not source.startswith("hf://") else None
    if known is None and not source.startswith("hf://"):
        raise InvalidParams(f"{source!r} is neither an hf://ORG/REPO[@REV] source nor a known model "
                            f"({', '.join(sorted(KNOWN_MODELS))})", field="source")
    src = known.source if known else source
    ref = HubRef.parse(src)
    mid = model_id or (known.name if known else default_id(ref.repo_id))
    if not MODEL_ID_RE.match(mid):
        raise InvalidParams(f"model id {mid!r} must match [a-z0-9][a-z0-9._-]{{0,127}}", field="model_id")
    if mid in catalog:
        raise Conflict(f"the catalog already has a model {mid!r} ({catalog[mid].origin}); choose another id", model_id=mid)
    if include is not None and not include:
        include = None
    exclude_all = list(exclude or []) + [p for p in (known.exclude if known else ()) if p not in (exclude or [])]
    await access.refresh()
    listing = await list_revision(client, access, src, include=include, exclude=exclude_all or None)
    state = "ok"
    try:
        first = next((j for j in listing.jobs if j.sha256), listing.jobs[0])
        await locate(client, access, first, preflight=True)
    except HubRefused as exc:
        if exc.details.get("hub_error") != "GatedRepo":
            raise
        state = exc.message
    kind = model_type or (known.model_type if known else PIPELINE_TYPES.get(listing.pipeline_tag or "", "text_to_video"))
    if kind not in MODEL_TYPES:
        raise InvalidParams(f"model type {kind!r} is not one of {', '.join(MODEL_TYPES)}", field="model_type")
    entry: dict[str, Any] = {"id": mid, "version": version, "display_name": display_name or (known.display_name if known else ref.repo_id),
                             "model_type": kind}
    if known:
        entry.update(capabilities=list(known.capabilities), quality=known.quality, speed=known.speed, family=known.family)
        if known.vram_gb:
            entry["vram_gb"] = dict(known.vram_gb)
    else:
        entry["capabilities"] = [kind]
    entry["source"] = src
    if include:
        entry["include"] = list(include)
    if exclude_all:
        entry["exclude"] = exclude_all
    size = sum(j.size for j in listing.jobs)
    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"written by `mavail add` from {ref.repo_id} at commit {listing.commit}: {len(listing.jobs)} files, "
                            f"{size} bytes"))
    if known and known.vram_source:
        doc.add(tomlkit.comment(f"vram_gb: {known.vram_source}"))
    table = tomlkit.aot()
    table.append(tomlkit.item(entry))
    doc["models"] = table
    text = tomlkit.dumps(doc)
    name = f"{mid}.toml"
    parse_catalog_text(text, name)  # what is written is what the catalog accepts
    path = catalog_dir / name

    def write() -> None:
        if safefs.exists(home, path):
            raise Conflict(f"{path} already exists; choose another id", model_id=mid, file=str(path))
        safefs.ensure_dir(home, catalog_dir)
        safefs.atomic_write(home, path, text.encode(), mode=0o644)

    await asyncio.to_thread(write)
    return AddedModel(mid, str(path), src, listing.commit, len(listing.jobs), size, listing.gated, state, entry)
