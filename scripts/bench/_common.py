"""Shared pieces of the benchmarks: timing statistics and an engine subprocess on a throw-away home."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0-100) of samples, nearest-rank."""
    s = sorted(samples)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


def summarize(name: str, latencies_s: list[float], wall_s: float) -> dict[str, float]:
    """Calls per second and p50/p99 latency in milliseconds."""
    return {
        "name": name,  # type: ignore[dict-item]
        "calls_per_s": len(latencies_s) / wall_s,
        "p50_ms": percentile(latencies_s, 50) * 1000,
        "p99_ms": percentile(latencies_s, 99) * 1000,
        "mean_ms": statistics.fmean(latencies_s) * 1000,
    }


def placeholder_models(n: int) -> str:
    """Catalog TOML of `n` models `bench-model-NNNN` that are never fetched (their URLs point at a closed port)."""
    sha = hashlib.sha256(b"").hexdigest()
    return "".join(
        f'[[models]]\nid = "bench-model-{i:04d}"\nversion = "1.0.{i % 7}"\ndisplay_name = "Bench {i}"\n'
        f'model_type = "text_to_video"\ncapabilities = ["text_to_video"]\nquality = "medium"\nspeed = "fast"\n'
        f'[models.vram_gb]\n"832x480" = 8.0\n'
        f'[[models.files]]\npath = "model.safetensors"\nurl = "http://127.0.0.1:9/m{i}"\nsize = {1024 * (i + 1)}\nsha256 = "{sha}"\n'
        for i in range(n))


@contextlib.contextmanager
def engine_process(home: Path, sock: Path, env: dict[str, str] | None = None) -> Iterator[subprocess.Popen[bytes]]:
    """Run `mavail engine` on `home`/`sock` until the block ends."""
    proc = subprocess.Popen([sys.executable, "-m", "mavail.rpc.cli", "engine", "--home", str(home), "--socket", str(sock)],
                            cwd=ROOT, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    from mavail.rpc.client import Client, EngineUnavailable

    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"engine exited: {proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with Client(sock, timeout=5) as c:
                c.call("session.hello")
            break
        except EngineUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextlib.contextmanager
def short_tmpdir() -> Iterator[Path]:
    """A temp dir with a short path (socket paths are limited to ~108 bytes)."""
    d = Path(tempfile.mkdtemp(prefix="mvb", dir="/tmp"))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)
