"""A fault-injecting HTTP/1.1 file server on 127.0.0.1 for tests, benchmarks and the demo.

Serves files from bytes or from a deterministic synthetic generator (a 1 GiB
file needs no RAM), with Range, ETag, Last-Modified and If-Range that can each
be switched off, and faults that can be injected per path: per-connection
throttling, dropped connections after N bytes, 5xx/429 bursts with
Retry-After, a lying Content-Length, stalls, corrupt bytes, and a file that
changes between requests. Counters record requests and bytes per path. The
Hugging Face Hub is `mavail.testing.hub`, which serves its blobs from a Mirror.

    with Mirror() as m:
        m.add("m1/a.bin", Synthetic("a", 64 * MIB))
        m.faults("m1/a.bin").drop_after = 1_000_000
        url = m.url("m1/a.bin")

It runs its own threads, so it works the same from sync tests, async tests and
separate processes (`python -m mavail.testing.mirror` serves a directory of specs).
"""

from __future__ import annotations

import hashlib
import random
import re
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from email.utils import formatdate, parsedate_to_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, Mapping
from urllib.parse import unquote, urlsplit

MIB = 1024 * 1024
_BLOCK = MIB  # synthetic content repeats a random block with a unique header every MiB
_HEADER = 16


class Synthetic:
    """Deterministic pseudo-random content of `size` bytes, generated on the fly from `seed`.

    Every MiB is one shared random block whose first 16 bytes are replaced by
    a digest of (seed, index), so pieces differ and a splice of two seeds shows.
    """

    def __init__(self, seed: str, size: int) -> None:
        self.seed = seed
        self.size = size
        self._block = random.Random(seed).randbytes(_BLOCK)
        self._mv = memoryview(self._block)
        self._sha: str | None = None

    def _header(self, index: int) -> bytes:
        return hashlib.blake2b(f"{self.seed}:{index}".encode(), digest_size=_HEADER).digest()

    def iter_range(self, start: int, end: int, chunk: int = 256 * 1024) -> Iterator[bytes | memoryview]:
        """Yield the bytes of [start, end) in pieces of at most `chunk` bytes (memoryviews where possible)."""
        end = min(end, self.size)
        pos = start
        while pos < end:
            index, off = divmod(pos, _BLOCK)
            if off < _HEADER:
                n = min(_HEADER - off, end - pos)
                yield self._header(index)[off:off + n]
            else:
                n = min(_BLOCK - off, end - pos, chunk)
                yield self._mv[off:off + n]
            pos += n

    def read(self, start: int, length: int) -> bytes:
        """The bytes of [start, start+length)."""
        return b"".join(bytes(p) for p in self.iter_range(start, start + length))

    def sha256(self) -> str:
        """The sha256 of the whole content (computed once)."""
        if self._sha is None:
            h = hashlib.sha256()
            for p in self.iter_range(0, self.size, chunk=_BLOCK):
                h.update(p)
            self._sha = h.hexdigest()
        return self._sha

    def __len__(self) -> int:
        return self.size


class _Bytes:
    """Content held in memory, with the same interface as Synthetic."""

    def __init__(self, data: bytes) -> None:
        self.data = bytes(data)
        self.size = len(self.data)
        self._mv = memoryview(self.data)
        self._sha: str | None = None

    def iter_range(self, start: int, end: int, chunk: int = 256 * 1024) -> Iterator[bytes | memoryview]:
        end = min(end, self.size)
        for pos in range(start, end, chunk):
            yield self._mv[pos:min(pos + chunk, end)]

    def read(self, start: int, length: int) -> bytes:
        return self.data[start:start + length]

    def sha256(self) -> str:
        if self._sha is None:
            self._sha = hashlib.sha256(self.data).hexdigest()
        return self._sha

    def __len__(self) -> int:
        return self.size


Content = Any  # Synthetic | _Bytes


def _content(data: Any) -> Content:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return _Bytes(bytes(data))
    if hasattr(data, "iter_range") and hasattr(data, "sha256"):
        return data
    raise TypeError("content must be bytes or Synthetic")


@dataclass
class Faults:
    """What to do wrong when serving one path. Counts are consumed request by request.

    Set attributes at any time; the next request sees them.
    """

    ranges: bool = True  # honour Range (else always 200 with the whole file)
    etag: bool = True  # send an ETag
    last_modified: bool = True  # send Last-Modified
    if_range: bool = True  # honour If-Range (else serve the range whatever the validator says)
    throttle_bps: float = 0.0  # per-connection cap in bytes/s, 0 = none
    total_bps: float = 0.0  # cap on every response these faults apply to, together (a link the connections share), 0 = none
    drop_after: int | None = None  # close the connection after this many body bytes of a response
    drop_count: int = -1  # how many responses to drop (-1 = every one)
    errors: list[int] = field(default_factory=list)  # statuses to answer, one per request, before serving
    retry_after: str | None = None  # Retry-After header value for error answers
    lie_length: int = 0  # added to Content-Length (positive: claims more than sent; negative: sends less)
    lie_count: int = -1
    stall_after: int | None = None  # after this many body bytes, send nothing for stall_s
    stall_s: float = 3600.0
    stall_count: int = -1
    corrupt_offsets: tuple[int, ...] = ()  # file offsets whose byte is flipped
    corrupt_count: int = -1
    change_after_requests: int | None = None  # after this many requests for the path, switch to change_to
    change_to: Any = None
    require_token: str | None = None  # answer 401 unless "Authorization: Bearer <token>"

    _total_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _total_at: float = 0.0  # when the shared link is free again (time.monotonic)

    def _share_link(self, n: int) -> float:
        """Book `n` bytes on the path's shared link (`total_bps`); the seconds to wait before sending them."""
        with self._total_lock:
            now = time.monotonic()
            start = max(now, self._total_at)
            self._total_at = start + n / self.total_bps
            return start - now

    def _take(self, name: str) -> bool:
        """Whether a counted fault applies to this response (and consume one)."""
        n = getattr(self, name)
        if n == 0:
            return False
        if n > 0:
            setattr(self, name, n - 1)
        return True


@dataclass
class RequestRecord:
    """One request as the mirror saw it."""

    path: str
    method: str
    range: str | None
    if_range: str | None
    status: int
    bytes_sent: int = 0


@dataclass
class _Entry:
    content: Content
    generation: int
    mtime: float

    @property
    def etag(self) -> str:
        digest = hashlib.blake2b(f"{id(self.content)}:{self.generation}:{self.content.size}".encode(), digest_size=8).hexdigest()
        return f'"{digest}-{self.generation}"'

    @property
    def last_modified(self) -> str:
        return formatdate(self.mtime, usegmt=True)


_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


class Mirror:
    """The server. Start with `start()` or `with Mirror() as m:`; stop with `stop()`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._port = port
        self._files: dict[str, _Entry] = {}
        self._faults: dict[str, Faults] = {}
        self.default_faults = Faults()
        self._lock = threading.Lock()
        self.requests: dict[str, int] = {}
        self.bytes_served: dict[str, int] = {}
        self.log: list[RequestRecord] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._clock_base = 1_700_000_000.0
        # (path, query, request headers) -> (status, body) to refuse a request before it is served, or None
        self.gate: Callable[[str, str, Mapping[str, str]], tuple[int, bytes] | None] | None = None
        self.handler_class: type[BaseHTTPRequestHandler] = _Handler
        self._inflight = 0  # requests being answered (not yet in the log)
        self._idle = threading.Condition(self._lock)

    # --- lifecycle -------------------------------------------------------
    def start(self) -> "Mirror":
        """Bind and serve in a background thread."""
        mirror = self

        class Handler(self.handler_class):  # type: ignore[misc,valid-type]
            pass

        Handler.mirror = mirror
        server = ThreadingHTTPServer((self.host, self._port), Handler)
        server.daemon_threads = True
        server.request_queue_size = 128
        self._server = server
        self._stop.clear()
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="mirror", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and wake every stalled response."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def __enter__(self) -> "Mirror":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> "Mirror":
        return self.start()

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound TCP port."""
        assert self._server is not None, "mirror not started"
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:PORT/`."""
        return f"http://{self.host}:{self.port}/"

    def url(self, path: str) -> str:
        """The URL of a served path."""
        return self.base_url + path.lstrip("/")

    # --- content ---------------------------------------------------------
    def add(self, path: str, data: Any) -> str:
        """Serve `data` (bytes or Synthetic) at `path`; return its URL if started."""
        path = path.lstrip("/")
        with self._lock:
            old = self._files.get(path)
            gen = old.generation + 1 if old else 1
            self._files[path] = _Entry(_content(data), gen, self._clock_base + gen)
        return self.url(path) if self._server else path

    def replace(self, path: str, data: Any) -> None:
        """Change the file at `path` (new ETag and Last-Modified), as an upstream re-upload does."""
        self.add(path, data)

    def remove(self, path: str) -> None:
        """Stop serving `path` (404 from now on)."""
        with self._lock:
            self._files.pop(path.lstrip("/"), None)

    def content(self, path: str) -> Content:
        """The content object served at `path`."""
        return self._files[path.lstrip("/")].content

    def etag(self, path: str) -> str:
        """The current ETag of `path`."""
        return self._files[path.lstrip("/")].etag

    def faults(self, path: str | None = None) -> Faults:
        """The fault settings of `path` (created on first use), or the defaults for every path."""
        if path is None:
            return self.default_faults
        path = path.lstrip("/")
        with self._lock:
            f = self._faults.get(path)
            if f is None:
                f = self._faults[path] = Faults()
            return f

    def clear_faults(self) -> None:
        """Forget every per-path fault and reset the defaults."""
        with self._lock:
            self._faults.clear()
            self.default_faults = Faults()

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Wait until no request is being answered (every answer is in the log); False after `timeout`."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout)

    def reset_counters(self) -> None:
        """Zero the request and byte counters and the log."""
        with self._lock:
            self.requests.clear()
            self.bytes_served.clear()
            self.log.clear()

    def add_model(self, model_id: str, files: dict[str, Any], version: str = "1.0.0", mirrors: list["Mirror"] | None = None, **fields: Any) -> str:
        """Serve each file at `<model_id>/<path>` and return a catalog `[[models]]` TOML block for them."""
        lines = ["[[models]]", f'id = "{model_id}"', f'version = "{version}"',
                 f'display_name = "{fields.pop("display_name", model_id)}"',
                 f'model_type = "{fields.pop("model_type", "text_to_video")}"',
                 "capabilities = [" + ", ".join(f'"{c}"' for c in fields.pop("capabilities", ["text_to_video"])) + "]",
                 f'quality = "{fields.pop("quality", "medium")}"', f'speed = "{fields.pop("speed", "medium")}"']
        if "family" in fields:
            lines.append(f'family = "{fields.pop("family")}"')
        vram = fields.pop("vram_gb", {"832x480": 8.0})
        if fields:
            raise TypeError(f"unknown fields {sorted(fields)}")
        lines.append("[models.vram_gb]")
        lines += [f'"{k}" = {float(v)}' for k, v in vram.items()]
        for path, data in files.items():
            c = _content(data)
            served = f"{model_id}/{path}"
            self.add(served, c)
            for m in mirrors or []:
                m.add(served, c)
            alt = ", ".join(f'"{m.url(served)}"' for m in (mirrors or []))
            lines += ["[[models.files]]", f'path = "{path}"', f'url = "{self.url(served)}"', f"mirrors = [{alt}]",
                      f"size = {c.size}", f'sha256 = "{c.sha256()}"']
        return "\n".join(lines) + "\n"

    # --- internals used by the handler -----------------------------------
    def _lookup(self, path: str) -> tuple[_Entry | None, Faults]:
        with self._lock:
            entry = self._files.get(path)
            faults = self._faults.get(path, self.default_faults)
            n = self.requests.get(path, 0) + 1
            self.requests[path] = n
            if entry is not None and faults.change_after_requests is not None and n > faults.change_after_requests and faults.change_to is not None:
                gen = entry.generation + 1
                entry = self._files[path] = _Entry(_content(faults.change_to), gen, self._clock_base + gen)
                faults.change_to = None
                faults.change_after_requests = None
        return entry, faults

    def _record(self, rec: RequestRecord) -> None:
        with self._lock:
            self.log.append(rec)
            self.bytes_served[rec.path] = self.bytes_served.get(rec.path, 0) + rec.bytes_sent


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    mirror: Mirror
    server_version = "mavail-mirror/1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        return

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def do_HEAD(self) -> None:  # noqa: N802
        self._counted(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._counted(head=False)

    def _counted(self, head: bool) -> None:
        m = self.mirror
        with m._idle:
            m._inflight += 1
        try:
            self._serve(head=head)
        finally:
            with m._idle:
                m._inflight -= 1
                m._idle.notify_all()

    # --- helpers ---------------------------------------------------------
    def _simple(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, path: str = "") -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)
        self.mirror._record(RequestRecord(path, self.command, self.headers.get("Range"), self.headers.get("If-Range"), status, len(body)))

    def _serve(self, head: bool) -> None:
        m = self.mirror
        raw_path = unquote(urlsplit(self.path).path).lstrip("/")
        if m.gate is not None:
            refused = m.gate(raw_path, urlsplit(self.path).query, self.headers)
            if refused is not None:
                return self._simple(refused[0], refused[1], path=raw_path)
        entry, faults = m._lookup(raw_path)
        if not self._token_ok(faults):
            return self._simple(401, b"unauthorized", path=raw_path)
        if faults.errors:
            status = faults.errors.pop(0)
            headers = {"Retry-After": faults.retry_after} if faults.retry_after else {}
            if status == 416 and entry is not None:
                headers["Content-Range"] = f"bytes */{entry.content.size}"
            return self._simple(status, b"injected error", headers, path=raw_path)
        if entry is None:
            return self._simple(404, b"not found", path=raw_path)
        size = entry.content.size
        headers: dict[str, str] = {"Content-Type": "application/octet-stream"}
        if faults.ranges:
            headers["Accept-Ranges"] = "bytes"
        if faults.etag:
            headers["ETag"] = entry.etag
        if faults.last_modified:
            headers["Last-Modified"] = entry.last_modified
        start, end, status = 0, size, 200
        rng = self.headers.get("Range")
        if rng and faults.ranges and self._if_range_ok(entry, faults):
            mt = _RANGE_RE.match(rng.strip())
            if mt and (mt.group(1) or mt.group(2)):
                a, b = mt.group(1), mt.group(2)
                if a:
                    start = int(a)
                    end = min(int(b) + 1, size) if b else size
                else:
                    start, end = max(0, size - int(b)), size
                if start >= size or end <= start:
                    return self._simple(416, b"", {"Content-Range": f"bytes */{size}"}, path=raw_path)
                status = 206
                headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        length = end - start
        claimed = length
        if faults.lie_length and faults._take("lie_count"):
            claimed = max(0, length + faults.lie_length)
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(claimed))
        self.end_headers()
        rec = RequestRecord(raw_path, self.command, rng, self.headers.get("If-Range"), status)
        if head:
            m._record(rec)
            return
        try:
            self._body(entry, faults, start, min(end, start + claimed), rec)
        finally:
            m._record(rec)
        if claimed > length or rec.bytes_sent < claimed:
            self.close_connection = True
            self._hard_close()

    def _token_ok(self, faults: Faults) -> bool:
        if not faults.require_token:
            return True
        return self.headers.get("Authorization") == f"Bearer {faults.require_token}"

    def _if_range_ok(self, entry: _Entry, faults: Faults) -> bool:
        v = self.headers.get("If-Range")
        if v is None or not faults.if_range:
            return True
        v = v.strip()
        if v.startswith('"') or v.startswith("W/"):
            return faults.etag and v == entry.etag
        if not faults.last_modified:
            return False
        try:
            return abs(parsedate_to_datetime(v).timestamp() - entry.mtime) < 1
        except (TypeError, ValueError):
            return False

    def _stall(self, seconds: float) -> bool:
        """Send nothing for `seconds`; False when the mirror stops or the client hangs up meanwhile."""
        deadline = time.monotonic() + seconds
        stop = self.mirror._stop
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            if stop.wait(min(0.05, left)):
                return False
            try:
                r, _, _ = select.select([self.connection], [], [], 0)
                if r and self.connection.recv(1, socket.MSG_PEEK) == b"":
                    return False
            except OSError:
                return False

    def _hard_close(self) -> None:
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _body(self, entry: _Entry, faults: Faults, start: int, end: int, rec: RequestRecord) -> None:
        stop = self.mirror._stop
        drop_at = faults.drop_after if faults.drop_after is not None and faults._take("drop_count") else None
        stall_at = faults.stall_after if faults.stall_after is not None and faults._take("stall_count") else None
        corrupt = [o for o in faults.corrupt_offsets if start <= o < end] if faults.corrupt_offsets and faults._take("corrupt_count") else []
        rate = faults.throttle_bps
        tightest = min(r for r in (rate, faults.total_bps, float("inf")) if r > 0)
        chunk = 256 * 1024 if tightest == float("inf") else max(4096, min(256 * 1024, int(tightest / 50)))
        t0 = time.monotonic()
        sent = 0
        pos = start
        stalled = False
        for piece in entry.content.iter_range(start, end, chunk):
            n = len(piece)
            if corrupt:
                hit = [o for o in corrupt if pos <= o < pos + n]
                if hit:
                    buf = bytearray(piece)
                    for o in hit:
                        buf[o - pos] ^= 0xFF
                    piece = bytes(buf)
            if drop_at is not None and sent + n > drop_at:
                piece = piece[: max(0, drop_at - sent)]
                n = len(piece)
            if stall_at is not None and not stalled and sent + n > stall_at:
                first = piece[: max(0, stall_at - sent)]
                if first:
                    self.wfile.write(first)
                    sent += len(first)
                    rec.bytes_sent = sent
                stalled = True
                if not self._stall(faults.stall_s):
                    return
                piece = piece[len(first):]
                n = len(piece)
                pos += len(first)
            if faults.total_bps > 0 and n:
                wait = faults._share_link(n)
                if wait > 0 and stop.wait(wait):
                    return
            try:
                if n:
                    self.wfile.write(piece)
            except OSError:
                return
            sent += n
            pos += n
            rec.bytes_sent = sent
            if drop_at is not None and sent >= drop_at:
                return
            if rate > 0:
                ahead = sent / rate - (time.monotonic() - t0)
                if ahead > 0 and stop.wait(ahead):
                    return


def main(argv: list[str] | None = None) -> int:
    """`python -m mavail.testing.mirror [--port N] SIZE_MIB...`: serve synthetic files f0.bin... until interrupted."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--throttle-mbps", type=float, default=0.0, help="per-connection cap, MiB/s")
    ap.add_argument("sizes", nargs="*", type=float, default=[16.0])
    args = ap.parse_args(argv)
    m = Mirror(port=args.port).start()
    m.default_faults.throttle_bps = args.throttle_mbps * MIB
    for i, s in enumerate(args.sizes):
        content = Synthetic(f"f{i}", int(s * MIB))
        print(m.add(f"f{i}.bin", content), content.size, content.sha256(), flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        m.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
