"""Health scores and their formulas (the same text is in docs/health.md).

integrity_score
    Share of the model's bytes verified good:
    ``sum(good_bytes of each file) / sum(expected size of each file)``.
    A file counts whole when a full check proved its sha256 (or every recorded
    piece) and its size, mtime and inode are unchanged since; a file with broken
    pieces counts its good pieces only; a missing, unreadable or symlinked file,
    or one changed since it was verified, counts 0. 1.0 means every byte is
    known good. The score is None (not measured) for a model that is not
    installed (missing, removed) and for one none of whose bytes was ever
    verified, by its download or by a full check, unless a check found a
    defect (then the measured share stands, possibly 0).

performance_score
    From the model's own generation records (analytics.record: duration and
    success), against its own baseline, never against other models:
    ``baseline`` = median duration of its first ``BASELINE_N`` successful runs,
    ``recent`` = median duration of its last ``RECENT_N`` successful runs,
    ``ratio = recent / baseline``,
    ``speed = 1`` if ratio <= 1, else ``max(0, 1 - (ratio - 1) / (critical_ratio - 1))``,
    ``success_rate`` = successes / runs among its last ``RECENT_N`` runs,
    ``performance_score = speed * success_rate``.
    None (unknown) with fewer than ``health.performance_min_samples`` successful runs.
    A ``performance_degraded`` issue is raised when ``ratio >= health.performance_degraded_ratio``
    or ``success_rate < health.performance_min_success_rate``.

overall_health (per model)
    ``corrupted`` when any critical issue stands (missing, truncated, extended,
    changed bytes, unreadable, symlink, not a regular file);
    else ``degraded`` when any warning stands (changed since verified, never
    verified, performance degraded) or integrity_score < 1;
    else ``healthy`` when the model has been checked or its files were verified
    at download; ``unknown`` when the model is not installed or nothing is known.

model score (for the system figure)
    ``integrity_score * (performance_score if known else 1)``; None when the
    integrity_score is None.

system_health
    ``overall_score`` = mean model score over the checked models (those with an
    integrity_score), None while no model has been checked; ``checked_models``
    is how many it averages. Counts of healthy / degraded / corrupted / unknown
    models (a model that is not installed is unknown, never healthy);
    ``last_system_check`` = the most recent check of any model.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

BASELINE_N = 20
RECENT_N = 10


@dataclass(frozen=True)
class Sample:
    """One generation: when, how long it took, whether it succeeded."""

    at: float
    duration_s: float
    success: bool


@dataclass(frozen=True)
class Performance:
    """The performance figures of one model."""

    score: float | None
    baseline_s: float | None
    recent_s: float | None
    ratio: float | None
    success_rate: float | None
    samples: int
    degraded: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form."""
        return {"performance_score": self.score, "baseline_generation_time_s": self.baseline_s, "recent_generation_time_s": self.recent_s,
                "slowdown_ratio": self.ratio, "recent_success_rate": self.success_rate, "samples": self.samples, "degraded": self.degraded}


def performance(samples: Sequence[Sample], degraded_ratio: float, critical_ratio: float, min_success_rate: float, min_samples: int) -> Performance:
    """performance_score as documented above, from samples in any order."""
    ordered = sorted(samples, key=lambda s: s.at)
    ok = [s for s in ordered if s.success and s.duration_s > 0]
    if len(ok) < max(1, min_samples):
        return Performance(None, None, None, None, None, len(ordered), False)
    baseline = statistics.median(s.duration_s for s in ok[:BASELINE_N])
    recent = statistics.median(s.duration_s for s in ok[-RECENT_N:])
    last = ordered[-RECENT_N:]
    success_rate = sum(1 for s in last if s.success) / len(last)
    ratio = recent / baseline if baseline > 0 else 1.0
    if ratio <= 1.0:
        speed = 1.0
    else:
        speed = max(0.0, 1.0 - (ratio - 1.0) / max(critical_ratio - 1.0, 1e-9))
    score = round(speed * success_rate, 4)
    degraded = ratio >= degraded_ratio or success_rate < min_success_rate
    return Performance(score, baseline, recent, round(ratio, 4), round(success_rate, 4), len(ordered), degraded)


def integrity_score(files: Iterable[Any]) -> float:
    """sum(good_bytes) / sum(size) over FileResults (1.0 for a model of empty files)."""
    files = list(files)
    total = sum(f.size for f in files)
    if total == 0:
        return 1.0 if files and all(f.state == "ok" for f in files) else 0.0
    return round(min(1.0, sum(min(f.good_bytes, f.size) for f in files) / total), 6)


def overall_health(installed: bool, known: bool, issues: Iterable[Any], integrity: float) -> str:
    """healthy | degraded | corrupted | unknown, as documented above."""
    if not installed:
        return "unknown"
    severities = {i.severity for i in issues}
    if "critical" in severities:
        return "corrupted"
    if "warning" in severities or integrity < 1.0:
        return "degraded"
    return "healthy" if known else "unknown"


def measured(installed: bool, known: bool, has_critical: bool) -> bool:
    """Whether a model's integrity_score was measured (else it is None, as documented above)."""
    return installed and (known or has_critical)


def model_score(integrity: float | None, perf: float | None) -> float | None:
    """integrity_score × performance_score (the latter taken as 1 when unknown); None when integrity is unmeasured."""
    if integrity is None:
        return None
    return round(integrity * (perf if perf is not None else 1.0), 6)


def system_health(models: Sequence[dict[str, Any]], last_check: str | None) -> dict[str, Any]:
    """The system_health block of `health.status` over per-model health dicts."""
    installed = [m for m in models if m.get("installed")]
    scores = [s for s in (model_score(m.get("integrity_score"), m.get("performance_score")) for m in installed) if s is not None]
    return {
        "overall_score": round(sum(scores) / len(scores), 4) if scores else None,
        "checked_models": len(scores),
        "healthy_models": sum(1 for m in models if m["overall_health"] == "healthy"),
        "degraded_models": sum(1 for m in models if m["overall_health"] == "degraded"),
        "corrupted_models": sum(1 for m in models if m["overall_health"] == "corrupted"),
        "unknown_models": sum(1 for m in models if m["overall_health"] == "unknown"),
        "installed_models": len(installed),
        "last_system_check": last_check,
    }
