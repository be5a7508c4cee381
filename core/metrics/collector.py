"""The Prometheus collector: metric families built, at each scrape, from a loop snapshot, the tally and the disk.

Names follow Prometheus' conventions: a `mavail_` prefix, base units in the
name (`_bytes`, `_seconds`), `_total` on counters. Labels stay bounded: a
status, a state, a reason or a check type come from small fixed sets, and a
`model_id` label appears only on the `mavail_model_*` families, which are
served only while the catalog has at most `metrics.per_model_max` models.
docs/metrics.md lists every family.
"""

from __future__ import annotations

import shutil
from typing import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from mavail.core.metrics.figures import MetricsPorts, Snapshot
from mavail.core.tally import Counts

__all__ = ["EngineCollector"]


def _sum_by(counts: dict[tuple[str, ...], float], index: int | None) -> dict[str, float]:
    """Counts keyed by label tuples, summed over every label but the one at `index` (None: one grand total under "")."""
    out: dict[str, float] = {}
    for labels, n in counts.items():
        key = "" if index is None else labels[index]
        out[key] = out.get(key, 0) + n
    return out


class EngineCollector(Collector):
    """Builds every `mavail_*` family at each scrape (prometheus_client calls `collect` in its listener thread).

    `snapshot()` asks the event loop for a `Snapshot` and returns None when the loop did not answer in time;
    then `mavail_up` is 0 and only what is read off the loop is served (counts, disk, build info)."""

    def __init__(self, ports: MetricsPorts, snapshot: Callable[[], Snapshot | None]) -> None:
        self._ports = ports
        self._snapshot = snapshot

    def describe(self) -> Iterable[Metric]:
        """Nothing: the families are built at collection (registering must not take a snapshot)."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every family, from one snapshot and one copy of the tally."""
        p = self._ports
        snap = self._snapshot()
        counts = p.tally.snapshot()
        info = InfoMetricFamily("mavail_build", "The engine's version.")
        info.add_metric([], {"version": p.version})
        yield info
        yield GaugeMetricFamily("mavail_up", "1 when the engine's event loop answered this scrape in time, else 0.", value=1 if snap else 0)
        yield GaugeMetricFamily("mavail_engine_start_time_seconds", "When the engine started, Unix time.", value=p.started_at)
        yield from self._counters(counts, snap)
        yield from self._disk()
        if snap is not None:
            yield from self._loop_figures(snap)

    def _counters(self, counts: Counts, snap: Snapshot | None) -> Iterator[Metric]:
        received = counts.get("download_bytes", {})
        yield CounterMetricFamily("mavail_download_bytes", "Bytes downloads received from the network since the engine started.",
                                  value=sum(received.values()))
        retries = CounterMetricFamily("mavail_download_retries", "Retries downloads made, by reason.", labels=["reason"])
        by_reason = {r: 0.0 for r in self._ports.retry_reasons} | _sum_by(counts.get("download_retries", {}), 1)
        for reason, n in sorted(by_reason.items()):
            retries.add_metric([reason], n)
        yield retries
        failures = CounterMetricFamily("mavail_download_failures", "Downloads that failed, by error code.", labels=["reason"])
        for reason, n in sorted(_sum_by(counts.get("download_failures", {}), 1).items()):
            failures.add_metric([reason], n)
        yield failures
        checks = CounterMetricFamily("mavail_health_checks", "Health checks run, by type and outcome (the model's overall health, "
                                     "or failed/cancelled).", labels=["type", "outcome"])
        for (check_type, outcome), n in sorted(counts.get("health_checks", {}).items()):
            checks.add_metric([check_type, outcome], n)
        yield checks
        repairs = CounterMetricFamily("mavail_repairs", "Repairs run, by outcome.", labels=["outcome"])
        for outcome in ("completed", "failed"):
            repairs.add_metric([outcome], counts.get("repairs", {}).get((outcome,), 0))
        yield repairs
        yield CounterMetricFamily("mavail_repair_bytes", "Bytes repairs fetched from the network.",
                                  value=sum(counts.get("repair_bytes", {}).values()))
        if snap is not None and snap.models is not None:
            per_model = CounterMetricFamily("mavail_model_download_bytes", "Bytes received for the model since the engine started.",
                                            labels=["model_id"])
            by_model = _sum_by(received, 0)
            for m in snap.models:
                per_model.add_metric([m.model_id], by_model.get(m.model_id, 0))
            yield per_model

    def _disk(self) -> Iterator[Metric]:
        try:
            du = shutil.disk_usage(self._ports.models_dir)
        except OSError:
            return  # no figure rather than a made-up one; the engine logs the disk's problems elsewhere
        yield GaugeMetricFamily("mavail_disk_free_bytes", "Free bytes on the file system of the models folder (for this user).",
                                value=du.free)
        yield GaugeMetricFamily("mavail_disk_size_bytes", "Size of the file system of the models folder.", value=du.total)

    @staticmethod
    def _loop_figures(s: Snapshot) -> Iterator[Metric]:
        models = GaugeMetricFamily("mavail_models", "Catalog models by availability status.", labels=["status"])
        for status, n in s.by_status.items():
            models.add_metric([status], n)
        yield models
        yield GaugeMetricFamily("mavail_corrupted_models", "Models whose files were found damaged (by a check or by their sizes).",
                                value=s.corrupted)
        downloads = GaugeMetricFamily("mavail_downloads", "Live downloads by state.", labels=["state"])
        for state, n in s.downloads_by_state.items():
            downloads.add_metric([state], n)
        yield downloads
        yield GaugeMetricFamily("mavail_download_rate_bytes_per_second", "Measured rate of every running download together.",
                                value=s.download_rate_bytes_per_s)
        yield GaugeMetricFamily("mavail_download_remaining_bytes", "Bytes live downloads still have to fetch.", value=s.download_remaining_bytes)
        yield GaugeMetricFamily("mavail_queue_requests", "Requests waiting in the queue for a model.", value=s.queue_length)
        yield GaugeMetricFamily("mavail_queue_oldest_wait_seconds", "How long the oldest queued request has waited (0: none waits).",
                                value=s.queue_oldest_wait_s)
        yield GaugeMetricFamily("mavail_leases", "Leases held (models in use by a generation).", value=s.leases)
        yield GaugeMetricFamily("mavail_storage_used_bytes", "Bytes of the catalog's model files installed.", value=s.used_bytes)
        yield GaugeMetricFamily("mavail_storage_min_free_bytes", "The free-space floor (storage.min_free_gb).", value=s.min_free_bytes)
        yield GaugeMetricFamily("mavail_storage_max_bytes", "The models' ceiling (storage.max_gb; 0 = none).", value=s.max_bytes)
        yield GaugeMetricFamily("mavail_catalog_models", "Models in the catalog.", value=s.models_total)
        yield GaugeMetricFamily("mavail_per_model_labels", "1 while the mavail_model_* families (model_id label) are served: the catalog "
                                "has at most metrics.per_model_max models.", value=1 if s.models is not None else 0)
        if s.models is None:
            return
        status = GaugeMetricFamily("mavail_model_status", "1 for the model's availability status, 0 for the others.",
                                   labels=["model_id", "status"])
        size = GaugeMetricFamily("mavail_model_size_bytes", "The model's size.", labels=["model_id"])
        corrupted = GaugeMetricFamily("mavail_model_corrupted", "1 when the model's files were found damaged.", labels=["model_id"])
        leases = GaugeMetricFamily("mavail_model_leases", "Leases held on the model.", labels=["model_id"])
        for m in s.models:
            for st in s.by_status:
                status.add_metric([m.model_id, st], 1 if st == m.status else 0)
            size.add_metric([m.model_id], m.size_bytes)
            corrupted.add_metric([m.model_id], 1 if m.corrupted else 0)
            leases.add_metric([m.model_id], m.leases)
        yield from (status, size, corrupted, leases)
