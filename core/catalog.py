"""The model catalog: `catalog.toml` plus `catalog.d/*.toml`, parsed into validated records."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from mavail.core.errors import CatalogError, ModelNotFound
from mavail.core.limits import MAX_FILE_BYTES, MAX_VRAM_GB
from mavail.core.paths import is_safe_relative

MODEL_ID_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
SHA256_RE = re.compile(r"[0-9a-f]{64}")
"""A sha256 in hex; use with fullmatch (match with $ would let a trailing newline through)."""
RESOLUTION_RE = re.compile(r"^([1-9][0-9]{1,5})x([1-9][0-9]{1,5})$")
HF_SOURCE_RE = re.compile(r"^hf://([A-Za-z0-9][A-Za-z0-9._-]*)/([A-Za-z0-9][A-Za-z0-9._-]*)(?:@([A-Za-z0-9._/-]+))?$")

MODEL_TYPES = ("text_to_video", "image_to_video", "text_image_to_video")
CAPABILITIES = ("text_to_video", "image_to_video", "text_image_to_video", "high_resolution", "fast_generation", "high_quality")
TIERS = ("low", "medium", "high")
SPEEDS = ("slow", "medium", "fast")


def version_key(version: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key for versions: numeric runs compare as numbers, the rest as text ("1.10" > "1.9")."""
    parts = re.findall(r"\d+|[A-Za-z]+", version)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)  # type: ignore[misc]


@dataclass(frozen=True)
class FileSpec:
    """One file of a model: where it goes, where it comes from, its size and sha256."""

    path: str
    url: str
    size: int
    sha256: str
    mirrors: tuple[str, ...] = ()

    @property
    def urls(self) -> tuple[str, ...]:
        """The primary URL followed by the mirrors, in the order they are tried."""
        return (self.url, *self.mirrors)


@dataclass(frozen=True)
class ModelSpec:
    """One catalog entry: identity, capabilities, VRAM needs and files (or a Hub source)."""

    id: str
    version: str
    display_name: str
    model_type: str
    capabilities: tuple[str, ...]
    quality: str
    speed: str
    family: str | None = None
    vram_gb: dict[str, float] = field(default_factory=dict)
    files: tuple[FileSpec, ...] = ()
    source: str | None = None
    allow_unverified: bool = False  # Hub files without sha256 or blob id may be installed unchecked
    include: tuple[str, ...] | None = None  # Hub files to fetch (globs, huggingface_hub's allow_patterns); None: all
    exclude: tuple[str, ...] | None = None  # Hub files to leave out (globs, huggingface_hub's ignore_patterns)
    origin: str = ""  # "file.toml: models[i]" for messages

    @property
    def size_bytes(self) -> int:
        """Total bytes of the model's files as the catalog gives them."""
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        """The entry as JSON-safe data (files included)."""
        return {
            "id": self.id,
            "version": self.version,
            "display_name": self.display_name,
            "model_type": self.model_type,
            "capabilities": list(self.capabilities),
            "quality": self.quality,
            "speed": self.speed,
            "family": self.family,
            "vram_gb": dict(self.vram_gb),
            "source": self.source,
            "allow_unverified": self.allow_unverified,
            "include": list(self.include) if self.include is not None else None,
            "exclude": list(self.exclude) if self.exclude is not None else None,
            "size_bytes": self.size_bytes,
            "files": [
                {"path": f.path, "url": f.url, "mirrors": list(f.mirrors), "size": f.size, "sha256": f.sha256}
                for f in self.files
            ],
        }


@dataclass(frozen=True)
class Catalog:
    """A validated set of models, keyed by id, in the order the files list them."""

    models: dict[str, ModelSpec]
    files: tuple[str, ...] = ()

    def get(self, model_id: str) -> ModelSpec | None:
        """The entry for `model_id`, or None."""
        return self.models.get(model_id)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self.models.values())

    def __len__(self) -> int:
        return len(self.models)


def _url_ok(url: Any) -> bool:
    return isinstance(url, str) and url.startswith(("http://", "https://")) and len(url) < 4096 and not any(c in url for c in "\r\n\x00 ")


def _parse_file(raw: Any, where: str) -> FileSpec:
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: must be a table", entry=where)
    unknown = set(raw) - {"path", "url", "mirrors", "size", "sha256"}
    if unknown:
        raise CatalogError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}", entry=where)
    path = raw.get("path")
    if not isinstance(path, str) or not is_safe_relative(path) or len(path) > 1024:
        raise CatalogError(f"{where}.path {path!r} is unsafe: it must be relative, without '..', '.', '\\' or empty parts", entry=where)
    url = raw.get("url")
    if not _url_ok(url):
        raise CatalogError(f"{where}.url must be an http(s) URL", entry=where)
    mirrors = raw.get("mirrors", [])
    if not isinstance(mirrors, list) or not all(_url_ok(m) for m in mirrors):
        raise CatalogError(f"{where}.mirrors must be a list of http(s) URLs", entry=where)
    size = raw.get("size")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_FILE_BYTES:
        raise CatalogError(f"{where}.size must be an integer from 0 to {MAX_FILE_BYTES}", entry=where)
    sha = raw.get("sha256")
    if not isinstance(sha, str) or not SHA256_RE.fullmatch(sha.lower()):
        raise CatalogError(f"{where}.sha256 must be 64 hex digits", entry=where)
    return FileSpec(path=path, url=url, size=size, sha256=sha.lower(), mirrors=tuple(mirrors))


def _enum(raw: dict[str, Any], key: str, choices: tuple[str, ...], where: str, default: str | None = None) -> str:
    value = raw.get(key, default)
    if value not in choices:
        raise CatalogError(f"{where}: {key} {value!r} is not one of {', '.join(choices)}", entry=where)
    return str(value)


def parse_model(raw: Any, where: str) -> ModelSpec:
    """Validate one `[[models]]` table; raise CatalogError naming `where` and the key."""
    if not isinstance(raw, dict):
        raise CatalogError(f"{where}: must be a table", entry=where)
    model_id = raw.get("id")
    if not isinstance(model_id, str) or not MODEL_ID_RE.match(model_id):
        raise CatalogError(f"{where}: id {model_id!r} must match [a-z0-9][a-z0-9._-]{{0,127}}", entry=where)
    where = f"{where} (id {model_id!r})"
    allowed = {"id", "version", "display_name", "model_type", "capabilities", "quality", "speed", "family", "vram_gb", "files", "source", "description",
               "allow_unverified", "include", "exclude"}
    unknown = set(raw) - allowed
    if unknown:
        raise CatalogError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}", entry=where)
    version = raw.get("version")
    if not isinstance(version, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$", version):
        raise CatalogError(f"{where}: version must be a short string such as \"1.0.0\"", entry=where)
    display = raw.get("display_name", model_id)
    if not isinstance(display, str):
        raise CatalogError(f"{where}: display_name must be a string", entry=where)
    model_type = _enum(raw, "model_type", MODEL_TYPES, where)
    caps = raw.get("capabilities", [])
    if not isinstance(caps, list) or any(c not in CAPABILITIES for c in caps):
        raise CatalogError(f"{where}: capabilities must be a list drawn from {', '.join(CAPABILITIES)}", entry=where)
    quality = _enum(raw, "quality", TIERS, where, "medium")
    speed = _enum(raw, "speed", SPEEDS, where, "medium")
    family = raw.get("family")
    if family is not None and not isinstance(family, str):
        raise CatalogError(f"{where}: family must be a string", entry=where)
    vram = raw.get("vram_gb", {})
    if not isinstance(vram, dict):
        raise CatalogError(f"{where}: vram_gb must be a table of \"WxH\" = GiB", entry=where)
    for res, gb in vram.items():
        if not RESOLUTION_RE.match(res) or not isinstance(gb, (int, float)) or isinstance(gb, bool) or not 0 < gb <= MAX_VRAM_GB:
            raise CatalogError(f"{where}: vram_gb.{res} must be a number of GiB above 0 and at most {MAX_VRAM_GB:g}, "
                               f"under a \"WxH\" key", entry=where)
    files_raw = raw.get("files")
    source = raw.get("source")
    if (files_raw is None) == (source is None):
        raise CatalogError(f"{where}: give exactly one of files or source", entry=where)
    files: tuple[FileSpec, ...] = ()
    if files_raw is not None:
        if not isinstance(files_raw, list) or not files_raw:
            raise CatalogError(f"{where}: files must be a non-empty list", entry=where)
        files = tuple(_parse_file(f, f"{where}.files[{i}]") for i, f in enumerate(files_raw))
        seen: set[str] = set()
        for f in files:
            # two paths where one is a directory prefix of the other cannot both be files
            lowered = f.path
            if lowered in seen or any(p.startswith(lowered + "/") or lowered.startswith(p + "/") for p in seen):
                raise CatalogError(f"{where}: file path {f.path!r} collides with another file of the model", entry=where)
            seen.add(lowered)
    if source is not None and (not isinstance(source, str) or not HF_SOURCE_RE.match(source)):
        raise CatalogError(f"{where}: source must look like hf://ORG/REPO@REVISION", entry=where)
    allow_unverified = raw.get("allow_unverified", False)
    if not isinstance(allow_unverified, bool):
        raise CatalogError(f"{where}: allow_unverified must be true or false", entry=where)
    patterns: dict[str, tuple[str, ...] | None] = {}
    for key in ("include", "exclude"):
        value = raw.get(key)
        if value is not None and source is None:
            raise CatalogError(f"{where}: {key} applies to a Hub source only (list the files you want instead)", entry=where)
        if value is not None and (not isinstance(value, list) or not value
                                  or not all(isinstance(p, str) and 0 < len(p) <= 512 and "\x00" not in p for p in value)):
            raise CatalogError(f"{where}: {key} must be a non-empty list of glob patterns such as \"*.json\" or \"vae/\"", entry=where)
        patterns[key] = tuple(value) if value is not None else None
    return ModelSpec(
        id=model_id,
        version=version,
        display_name=display,
        model_type=model_type,
        capabilities=tuple(caps),
        quality=quality,
        speed=speed,
        family=family,
        vram_gb={k: float(v) for k, v in vram.items()},
        files=files,
        source=source,
        allow_unverified=allow_unverified,
        include=patterns["include"],
        exclude=patterns["exclude"],
        origin=where,
    )


def parse_catalog_text(text: str, name: str) -> list[ModelSpec]:
    """Parse one catalog file's text; errors name the file and the line or entry."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"{name}: {exc}", file=name) from None
    unknown = set(raw) - {"models"}
    if unknown:
        raise CatalogError(f"{name}: unknown top-level key(s) {', '.join(sorted(unknown))}", file=name)
    models = raw.get("models", [])
    if not isinstance(models, list):
        raise CatalogError(f"{name}: models must be an array of tables ([[models]])", file=name)
    return [parse_model(m, f"{name}: models[{i}]") for i, m in enumerate(models)]


def build_catalog(sources: Iterable[tuple[str, str]]) -> Catalog:
    """Build a catalog from `(name, text)` pairs, refusing duplicate ids across them."""
    models: dict[str, ModelSpec] = {}
    names: list[str] = []
    for name, text in sources:
        names.append(name)
        for spec in parse_catalog_text(text, name):
            if spec.id in models:
                raise CatalogError(f"{spec.origin}: duplicate id, first defined in {models[spec.id].origin}", entry=spec.origin)
            models[spec.id] = spec
    return Catalog(models=models, files=tuple(names))


def catalog_sources(catalog_file: Path, catalog_dir: Path) -> list[Path]:
    """The catalog files to read: `catalog.toml` then `catalog.d/*.toml` in name order."""
    paths = [catalog_file] if catalog_file.exists() else []
    if catalog_dir.is_dir():
        paths.extend(sorted(p for p in catalog_dir.glob("*.toml") if p.is_file()))
    return paths


def load_catalog(catalog_file: Path, catalog_dir: Path) -> Catalog:
    """Read and validate every catalog file of a home; raise CatalogError on the first problem."""
    pairs: list[tuple[str, str]] = []
    for p in catalog_sources(catalog_file, catalog_dir):
        try:
            pairs.append((p.name if p.parent == catalog_file.parent else f"catalog.d/{p.name}", p.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            raise CatalogError(f"{p.name}: cannot read: {exc.__class__.__name__}", file=p.name) from None
    return build_catalog(pairs)


CATALOG_TEMPLATE = """\
# The models this engine knows. Each [[models]] entry names a model, what it can do and its files;
# the format, with a Hub source and include patterns, is in docs/catalog.md. `catalog.reload` reads
# this file (and catalog.d/*.toml) again without a restart. An example entry, commented out:
#
# [[models]]
# id = "wan2.2-ti2v-5b"
# version = "1.0.0"
# display_name = "Wan2.2 TI2V 5B"
# model_type = "text_image_to_video"      # text_to_video | image_to_video | text_image_to_video
# capabilities = ["text_to_video", "image_to_video"]
# quality = "medium"                      # low | medium | high
# speed = "fast"                          # slow | medium | fast
# family = "wan2.2"
#
# [models.vram_gb]                        # estimated peak VRAM (GiB) by resolution
# "1280x704" = 24.0
#
# [[models.files]]
# path = "diffusion_pytorch_model.safetensors"
# url = "https://example.org/wan2.2-ti2v-5b/diffusion_pytorch_model.safetensors"
# size = 104857600                        # bytes
# sha256 = "...64 hex digits..."
"""
"""What a new home's catalog.toml holds: no model, and an example of an entry in comments."""


class LiveCatalog:
    """The catalog in force: the last good load of the catalog files, swapped whole on reload.

    Services read it through `get`, `spec`, `ids` and `models`; a reload that
    fails keeps the old catalog and raises, and `error` says why the files
    could not be read at start.
    """

    def __init__(self, catalog_file: Path, catalog_dir: Path) -> None:
        self._file = catalog_file
        self._dir = catalog_dir
        self.current = Catalog(models={})
        self.error: str | None = None

    @property
    def models(self) -> dict[str, ModelSpec]:
        """Every entry by id, in catalog order (read-only by convention)."""
        return self.current.models

    def get(self, model_id: str) -> ModelSpec | None:
        """The entry for `model_id`, or None."""
        return self.current.models.get(model_id)

    def spec(self, model_id: str) -> ModelSpec:
        """The entry for `model_id`, or ModelNotFound."""
        spec = self.current.models.get(model_id)
        if spec is None:
            raise ModelNotFound(f"model {model_id!r} is not in the catalog", model_id=model_id)
        return spec

    def ids(self) -> list[str]:
        """Every model id in catalog order."""
        return list(self.current.models)

    def __contains__(self, model_id: object) -> bool:
        return model_id in self.current.models

    def __len__(self) -> int:
        return len(self.current.models)

    def load_at_start(self) -> None:
        """Read the files (blocking); a refused catalog leaves the empty one in force and says why in `error`."""
        try:
            self.current = load_catalog(self._file, self._dir)
        except (CatalogError, OSError) as exc:
            self.error = str(exc)

    def reload(self) -> tuple[list[str], list[str]]:
        """Read the files again (blocking) and swap them in if all are valid; (added ids, removed ids).

        CatalogError leaves the catalog in force as it was.
        """
        new = load_catalog(self._file, self._dir)
        old_ids = set(self.current.models)
        self.current = new
        self.error = None
        return sorted(set(new.models) - old_ids), sorted(old_ids - set(new.models))
