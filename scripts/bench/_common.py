"""Shared pieces of the benchmarks: timing statistics, an engine subprocess on a throw-away home, a lean NDJSON client and the
Python floor server to measure beside it."""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import orjson

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


FLOOR_SERVER = r'''
import asyncio, sys, orjson, uvloop
RESULT = orjson.loads(sys.argv[2])
async def handle(reader, writer):
    while True:
        line = await reader.readline()
        if not line:
            break
        req = orjson.loads(line)
        writer.write(orjson.dumps({"jsonrpc": "2.0", "result": RESULT, "id": req.get("id")}, option=orjson.OPT_APPEND_NEWLINE))
    writer.close()
async def main():
    server = await asyncio.start_unix_server(handle, sys.argv[1])
    print("ready", flush=True)
    await server.serve_forever()
uvloop.run(main())
'''
"""The Python floor: an NDJSON JSON-RPC server on uvloop and orjson that answers every call with one fixed result."""


class LineClient:
    """The lean raw NDJSON client: one request line written, one response line read, on a Unix socket."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(str(path))
        self.buf = b""
        self.next_id = 0

    def call(self, method: str, params: dict | list | None = None) -> dict:
        """One call; the parsed response object."""
        self.next_id += 1
        req = {"jsonrpc": "2.0", "id": self.next_id, "method": method}
        if params is not None:
            req["params"] = params
        self.sock.sendall(orjson.dumps(req) + b"\n")
        buf = self.buf
        while True:
            nl = buf.find(b"\n")
            if nl >= 0:
                self.buf = buf[nl + 1:]
                return orjson.loads(buf[:nl])
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("server closed the connection")
            buf += chunk

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()


@contextlib.contextmanager
def floor_server(hello: dict, tmp: Path) -> Iterator[LineClient]:
    """The Python floor (FLOOR_SERVER) answering every call with `hello` (mavail's own hello result), and a lean client of it."""
    sock = tmp / "floor.sock"
    proc = subprocess.Popen([sys.executable, "-c", FLOOR_SERVER, str(sock), orjson.dumps(hello).decode()],
                            stdout=subprocess.PIPE, cwd=ROOT)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        c = LineClient(sock)
        try:
            yield c
        finally:
            c.close()
    finally:
        proc.terminate()
        proc.wait(10)
