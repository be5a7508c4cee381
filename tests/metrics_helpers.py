"""Helpers for metrics tests: scrape an engine's /metrics and read it with prometheus_client's own parser."""

from __future__ import annotations

from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
"""Every sample of one scrape: {(sample name, sorted labels): value}."""


def parse(text: str) -> Samples:
    """The samples of an exposition, read by prometheus_client's parser (it refuses text that is not the format)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(url: str) -> Samples:
    """GET `url` (an engine's /metrics) and parse it."""
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.get(url)
    r.raise_for_status()
    assert r.headers["content-type"].startswith("text/plain"), r.headers
    return parse(r.text)


def value(samples: Samples, name: str, **labels: Any) -> float | None:
    """The value of the sample `name` with exactly `labels`, or None when the scrape has no such sample."""
    return samples.get((name, tuple(sorted((k, str(v)) for k, v in labels.items()))))


def names(samples: Samples) -> set[str]:
    """Every sample name in a scrape."""
    return {n for n, _ in samples}
