"""A real Prometheus server (Debian's `prometheus` package) scrapes an engine; its HTTP API returns the engine's figures.
promtool checks the alert rules, runs their unit tests and lints the exposition; the docs name every family served."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
from pathlib import Path
from typing import Any, AsyncIterator

import contextlib

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mavail.rpc.client import AsyncClient
from mavail.testing.mirror import Mirror, Synthetic
from tests.dlhelpers import wait_status, write_home
from tests.helpers import ROOT, running_engine, wait_until
from tests.test_metrics import ON, _flip_byte

MIB = 1024 * 1024
WHY = "needs Debian's prometheus package (apt-get install prometheus; .ci/run installs it)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def prometheus(tmp: Path, target_port: int) -> AsyncIterator[str]:
    """A Prometheus server scraping 127.0.0.1:`target_port` every second with the project's alert rules; yields its URL."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip(WHY)
    tmp.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "docs/mavail-alerts.yml", tmp / "mavail-alerts.yml")
    (tmp / "prometheus.yml").write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        "rule_files: [mavail-alerts.yml]\n"
        f"scrape_configs:\n  - job_name: mavail\n    static_configs: [{{targets: ['127.0.0.1:{target_port}']}}]\n")
    port = _free_port()
    log = open(tmp / "prometheus.log", "wb")
    proc = subprocess.Popen([binary, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(timeout=5) as c:
            async def ready() -> bool:
                assert proc.poll() is None, (tmp / "prometheus.log").read_text()[-2000:]
                try:
                    return (await c.get(url + "/-/ready")).status_code == 200
                except httpx.TransportError:
                    return False

            await wait_until(ready, timeout=20, interval=0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()


async def query(url: str, promql: str) -> list[dict[str, Any]]:
    """The vector an instant query returns through Prometheus' HTTP API."""
    async with httpx.AsyncClient(timeout=5) as c:
        r = await c.get(url + "/api/v1/query", params={"query": promql})
    body = r.json()
    assert body["status"] == "success", body
    return body["data"]["result"]


async def wait_query(url: str, promql: str, want: float, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Wait until the query's one sample equals `want` (each scrape is a second apart)."""
    last: list[dict[str, Any]] = []

    async def holds() -> bool:
        nonlocal last
        last = await query(url, promql)
        return len(last) == 1 and float(last[0]["value"][1]) == want

    try:
        await wait_until(holds, timeout=timeout, interval=0.2)
    except AssertionError:
        raise AssertionError(f"{promql}: {last}, wanted {want}") from None
    return last


async def test_prometheus_scrapes_the_engine_and_answers_with_its_figures(home: Path):
    data = Synthetic("prom", 3 * MIB + 5)
    with Mirror() as m:
        write_home(home, m, {"m": {"f.bin": data}, "spare": {"s.bin": b"s" * 100}}, ON)
        async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
            await eng.downloads.start("m")
            await wait_status(eng, "m", "completed")
            await wait_until(lambda: eng.status.availability_status("m") == "available")
            async with prometheus(home.parent / "prom", eng.metrics.port) as url:
                got = await wait_query(url, "mavail_download_bytes_total", len(data))
                assert got[0]["metric"]["job"] == "mavail" and got[0]["metric"]["instance"] == f"127.0.0.1:{eng.metrics.port}"
                await wait_query(url, 'mavail_model_download_bytes_total{model_id="m"}', len(data))
                await wait_query(url, 'mavail_models{status="available"}', 1)
                await wait_query(url, 'mavail_models{status="missing"}', 1)
                await wait_query(url, "mavail_up", 1)
                # a corrupted model shows up, and the project's alert rule fires for it
                _flip_byte(home / "models/m/1.0.0/f.bin", 2 * MIB + 1)
                assert (await c.call("health.check", model_id="m", check_type="full"))["result"]["overall_health"] == "corrupted"
                await wait_query(url, "mavail_corrupted_models", 1)
                await wait_query(url, 'mavail_model_corrupted{model_id="m"}', 1)
                await wait_query(url, 'mavail_health_checks_total{type="full", outcome="corrupted"}', 1)

                async def firing() -> bool:
                    async with httpx.AsyncClient(timeout=5) as h:
                        alerts = (await h.get(url + "/api/v1/alerts")).json()["data"]["alerts"]
                    return any(a["labels"]["alertname"] == "MavailModelCorrupted" and a["state"] == "firing" for a in alerts)

                await wait_until(firing, timeout=15, interval=0.2)


def _promtool() -> str:
    tool = shutil.which("promtool")
    if tool is None:
        pytest.skip(WHY.replace("prometheus package", "prometheus package's promtool"))
    return tool


def test_alert_rules_pass_promtool_and_their_unit_tests():
    tool = _promtool()
    r = subprocess.run([tool, "check", "rules", "docs/mavail-alerts.yml"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "SUCCESS: 5 rules found" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([tool, "test", "rules", "mavail-alerts.test.yml"], cwd=ROOT / "docs", capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


async def test_the_exposition_passes_promtool_lint_and_every_family_is_documented(home: Path):
    with Mirror() as m:
        write_home(home, m, {"a": {"f": b"1" * 100}}, ON)
        async with running_engine(home) as (eng, _sock):
            await eng.downloads.start("a")
            await wait_status(eng, "a", "completed")
            async with httpx.AsyncClient() as c:
                text = (await c.get(eng.metrics.url)).text
    served = {f.name for f in text_string_to_metric_families(text)}  # counters without _total, info without _info
    doc = (ROOT / "docs/metrics.md").read_text()
    missing = sorted(n for n in served if n not in doc)
    assert not missing, f"docs/metrics.md does not describe {missing}"
    used = set(re.findall(r"mavail_[a-z_]+", (ROOT / "docs/mavail-alerts.yml").read_text() + (ROOT / "docs/grafana-mavail.json").read_text()))
    unknown = sorted(n for n in used if n not in served and re.sub(r"_total$", "", n) not in served)
    assert not unknown, f"the alert rules or the dashboard use families the engine does not serve: {unknown}"
    dashboard = json.loads((ROOT / "docs/grafana-mavail.json").read_text())
    assert all(t.get("expr") for p in dashboard["panels"] for t in p.get("targets", [])), "a dashboard panel without a query"
    tool = _promtool()
    r = await asyncio.to_thread(subprocess.run, [tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr
