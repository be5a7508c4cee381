"""In-memory health records: what the last checks found for each model, and the ids of checks and repairs."""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mavail.core.health import scores
from mavail.core.health.scan import CRITICAL, WARNING, FileResult, Issue, ManifestFile, Verified
from mavail.core.timeutil import iso

RECOMMENDATION_TEXT = {
    "integrity_fix": "health.repair (auto or integrity_fix) re-fetches only the broken pieces of {file}",
    "redownload": "health.repair (auto or redownload) fetches {file} again",
    "fix_permissions": "health.repair (auto) gives the owner read access to {file} again",
    "full_check": "run a full check (health.check check_type full) to verify {file}",
    "review": "review {file}: mavail never deletes files it does not know",
    "performance": "check GPU load, drivers and temperature; consider updating to the latest version",
}


def new_id(prefix: str) -> str:
    """A short random id such as `check_1a2b3c4d5e6f`."""
    return f"{prefix}_{secrets.token_hex(6)}"


@dataclass
class Context:
    """What a check of one model needs from the database: version, manifest, verification records, pieces."""

    model_id: str
    version: str
    base: Path
    manifest: list[ManifestFile]
    verified: dict[str, Verified]
    pieces: dict[str, tuple[int, list[str]]]
    installed: bool  # an installed_versions row exists for (model_id, version)
    has_current: bool  # the model has a current version
    catalog_version: bool  # the version is the catalog's (so its URLs are known)
    piece_algos: dict[str, str] = field(default_factory=dict)  # path -> the algorithm of its recorded pieces


@dataclass
class ModelHealth:
    """The latest known health of one model version, built from its last checks."""

    model_id: str
    version: str
    installed: bool
    files: dict[str, FileResult] = field(default_factory=dict)
    extra: list[Issue] = field(default_factory=list)
    perf: scores.Performance | None = None
    last_check_at: float | None = None
    last_check_id: str | None = None
    last_check_type: str | None = None
    last_quick_at: float | None = None
    last_full_at: float | None = None

    @property
    def issues(self) -> list[Issue]:
        """Every issue: files first, then extra files, then performance."""
        out = [i for f in self.files.values() for i in f.issues]
        out += self.extra
        if self.perf is not None and self.perf.degraded:
            out.append(Issue("performance_degraded", WARNING,
                             f"generations take {self.perf.ratio}x the model's baseline, success rate {self.perf.success_rate}",
                             "performance", None, self.perf.to_dict()))
        return out

    @property
    def integrity(self) -> float:
        """integrity_score (see core.health.scores)."""
        return scores.integrity_score(self.files.values()) if self.files else 0.0

    @property
    def known(self) -> bool:
        """Whether anything was verified (by a check or at download)."""
        return any(f.verified for f in self.files.values()) or self.last_full_at is not None

    @property
    def overall(self) -> str:
        """overall_health (see core.health.scores)."""
        return scores.overall_health(self.installed, self.known, self.issues, self.integrity)

    @property
    def critical(self) -> list[Issue]:
        """The issues that make the model corrupted."""
        return [i for i in self.issues if i.severity == CRITICAL]

    def recommendations(self) -> list[str]:
        """One sentence per distinct recommended action."""
        out: list[str] = []
        for i in self.issues:
            text = RECOMMENDATION_TEXT.get(i.recommendation)
            if text:
                line = text.format(file=i.file or "the model")
                if line not in out:
                    out.append(line)
        return out

    def to_status(self) -> dict[str, Any]:
        """The per-model health block of `health.status`, with version, files and check times."""
        return {
            "model_id": self.model_id,
            "version": self.version,
            "installed": self.installed,
            "overall_health": self.overall,
            "integrity_score": self.integrity,
            "performance_score": self.perf.score if self.perf else None,
            "last_check": iso(self.last_check_at),
            "last_check_id": self.last_check_id,
            "last_quick_check": iso(self.last_quick_at),
            "last_full_check": iso(self.last_full_at),
            "corruption_detected": bool(self.critical),
            "issues": [i.to_dict() for i in self.issues],
            "recommendations": self.recommendations(),
            "files": [f.to_dict() for f in self.files.values()],
            "performance": self.perf.to_dict() if self.perf else None,
        }

    def to_record(self) -> dict[str, Any]:
        """What is stored with a check so the state survives a restart."""
        return {
            "files": [{**f.to_dict(), "issues": [i.to_dict() for i in f.issues]} for f in self.files.values()],
            "extra": [i.to_dict() for i in self.extra],
            "performance": self.perf.to_dict() if self.perf else None,
            "integrity_score": self.integrity,
            "overall_health": self.overall,
            "installed": self.installed,
        }

    @classmethod
    def from_record(cls, model_id: str, version: str, rec: dict[str, Any]) -> "ModelHealth":
        """Inverse of `to_record`."""
        files = {}
        for d in rec.get("files", []):
            fr = FileResult.from_dict(d)
            fr.issues = [Issue.from_dict(i) for i in d.get("issues", [])]
            files[fr.path] = fr
        perf = None
        p = rec.get("performance")
        if p:
            perf = scores.Performance(p["performance_score"], p["baseline_generation_time_s"], p["recent_generation_time_s"], p["slowdown_ratio"],
                                      p["recent_success_rate"], p["samples"], p["degraded"])
        return cls(model_id, version, bool(rec.get("installed", True)), files, [Issue.from_dict(i) for i in rec.get("extra", [])], perf)


@dataclass
class Job:
    """A check or repair the engine is running or has run (kept in memory for status calls)."""

    id: str
    kind: str  # check | repair
    model_id: str
    type: str
    trigger: str
    started_at: float
    status: str = "running"
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    bytes_read: Callable[[], int] | None = None  # a full check's bytes read so far, while it runs

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form for health.check_status; a running full check also says how many bytes it has read."""
        out = {"id": self.id, "kind": self.kind, "model_id": self.model_id, "type": self.type, "trigger": self.trigger, "status": self.status,
               "started_at": iso(self.started_at), "finished_at": iso(self.finished_at), "result": self.result}
        if self.bytes_read is not None:
            out["bytes_read"] = self.bytes_read()
        return out
