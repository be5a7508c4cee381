"""The bulk byte path: blocking HTTP/1.1 range requests on a worker thread, the GIL let go while the socket is read.

httpx stays the client for the Hub's API, HEAD requests and repairs. Bulk bytes
take this path because, measured on a 1 GiB file from nginx on 127.0.0.1, an
httpx stream spends about twice curl's time in per-chunk parsing and copies,
while `http.client` keeps within a few percent of curl: after http.client has
parsed the head, the body is read straight from the socket into one buffer per
connection, reused for its whole life (what the socket holds, in one `recv`),
and the GIL is released for every `recv`, so the engine's event loop keeps
answering while connections run flat out, and memory does not grow with the
bytes moved.

A `RangeConnection` is one keep-alive connection to one origin at a time,
owned by one worker thread; `abort()` may be called from any thread and wakes
a blocked read at once. Redirects are followed here, with the headers asked
for every hop (so a credential for one host is never sent to another), and
the proxy for each URL comes from `proxy_for`: the `downloads.proxy` setting,
else the standard environment (`https_proxy`, `http_proxy`, `all_proxy`,
`no_proxy`) as curl reads it. TLS verifies against the
system's CA store, or `SSL_CERT_FILE`/`SSL_CERT_DIR` when set.
"""

from __future__ import annotations

import base64
import errno
import http.client
import os
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping
from urllib.parse import quote, unquote, urljoin, urlsplit

MAX_REDIRECTS = 10
READ_SIZE = 512 * 1024  # most bytes one read returns; a read returns what the socket holds, so slow links stay prompt
REDIRECTS = (301, 302, 303, 307, 308)


class BrokenConnection(Exception):
    """The connection could not be made, broke, or the server spoke something other than HTTP/1.1."""


class BadUrl(Exception):
    """The URL (or a redirect's Location) cannot be requested: not http(s), no host, a port that is not a number."""


class NoData(Exception):
    """No byte arrived within the read timeout."""


class Aborted(Exception):
    """`abort()` was called: the transfer is being stopped."""


@dataclass(frozen=True)
class Head:
    """A response's status line and headers (names in lower case), and the URL that gave it after redirects."""

    status: int
    headers: Mapping[str, str]
    url: str

    def get(self, name: str, default: str | None = None) -> str | None:
        """A header's value by its lower-case name."""
        return self.headers.get(name, default)


def proxy_variable(env: Mapping[str, str], name: str) -> str:
    """A proxy variable of the environment, the lowercase spelling first (as curl and urllib read them)."""
    return (env.get(name.lower()) or env.get(name.upper()) or "").strip()


def proxy_for(url: str, environ: Mapping[str, str] | None = None, configured: str = "") -> str | None:
    """The proxy to reach `url` through, or None to connect directly.

    `configured` (the `downloads.proxy` setting) wins: a proxy URL for every request, or "direct"
    for none. Otherwise the environment decides as curl reads it: `<scheme>_proxy` (lower case
    first), then `all_proxy`, except hosts that `no_proxy` names (a name, a domain suffix, or
    `*`), as `proxy_mounts` decides for the Hub's API.
    """
    if configured == "direct":
        return None
    if configured:
        return configured
    parts = urlsplit(url)
    env = os.environ if environ is None else environ

    proxy = proxy_variable(env, f"{parts.scheme}_proxy") or proxy_variable(env, "all_proxy")
    host = (parts.hostname or "").lower()
    if not proxy:
        return None
    for entry in (e.strip().lower().lstrip(".") for e in proxy_variable(env, "no_proxy").split(",")):
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return None
    return proxy


class RangeConnection:
    """One keep-alive HTTP/1.1 connection for bulk GETs, used by one thread; `abort()` from any thread stops it."""

    def __init__(self, connect_timeout: float, read_timeout: float, proxy: Callable[[str], str | None] = lambda url: None,
                 ssl_context: ssl.SSLContext | None = None, receive_buffer: Callable[[], int] = lambda: 0) -> None:
        """`proxy(url)` names the proxy for a URL (None: direct); `ssl_context` (None: the system's defaults) verifies TLS;
        `receive_buffer()` the socket receive buffer of each new connection in bytes (0: the kernel's autotuning)."""
        self.receive_buffer = receive_buffer
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.proxy = proxy
        self._ssl = ssl_context
        self._conn: http.client.HTTPConnection | None = None
        self._key: tuple[str, str, str | None] | None = None
        self._resp: http.client.HTTPResponse | None = None
        self._left: int | None = None  # body bytes still to read when the response has a Content-Length
        self.buffer = memoryview(bytearray(READ_SIZE))  # the one buffer bodies are read into, for the connection's life
        self._proxy_headers: dict[str, str] = {}  # Proxy-Authorization, sent to a plain-HTTP proxy on every request
        self._aborted = threading.Event()
        self._lock = threading.Lock()

    # --- connecting ------------------------------------------------------------
    def _connection(self, url: str) -> tuple[http.client.HTTPConnection, str]:
        """A connection able to ask for `url` (reused when it is to the same origin), and the request target."""
        parts = urlsplit(url)
        try:
            parts.port
        except ValueError:
            raise BadUrl(f"{url!r} has an invalid port") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise BadUrl(f"{url!r} is not an http(s) URL with a host")
        proxy = self.proxy(url)
        key = (parts.scheme, parts.netloc, proxy)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        if self._conn is not None and self._key == key and self._resp is None:
            return self._conn, (url if proxy and parts.scheme == "http" else target)
        self.close()
        host, port = parts.hostname or "", parts.port
        if proxy:
            pp = urlsplit(proxy if "://" in proxy else "http://" + proxy)
            if pp.scheme != "http":
                raise BadUrl(f"the proxy {proxy!r} is not an http:// proxy; only those are supported (HTTPS goes through "
                             "them with CONNECT)")
            auth = {}
            if pp.username:
                cred = f"{unquote(pp.username)}:{unquote(pp.password or '')}".encode()
                auth = {"Proxy-Authorization": "Basic " + base64.b64encode(cred).decode()}
            if parts.scheme == "https":
                conn = self._new("https", pp.hostname or "", pp.port or 80)
                conn.set_tunnel(host, port or 443, headers=auth)
            else:
                conn = self._new("http", pp.hostname or "", pp.port or 80)
                self._proxy_headers = auth
                target = url
        else:
            conn = self._new(parts.scheme, host, port or (443 if parts.scheme == "https" else 80))
        if not (proxy and parts.scheme == "http"):
            self._proxy_headers = {}
        self._conn, self._key = conn, key
        return conn, target

    def _new(self, scheme: str, host: str, port: int) -> http.client.HTTPConnection:
        """A connection to host:port; TLS for https (through a proxy's tunnel: TLS inside the CONNECT)."""
        if scheme == "https":
            if self._ssl is None:  # loading the CA store costs milliseconds: once per connection's life, not per reconnect
                self._ssl = ssl.create_default_context()
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=self.connect_timeout,
                                                                           context=self._ssl)
        else:
            conn = http.client.HTTPConnection(host, port, timeout=self.connect_timeout)
        conn._create_connection = self._dial  # type: ignore[attr-defined]
        return conn

    def _dial(self, address: tuple[str, int], timeout: float | None = None, source_address: object = None) -> socket.socket:
        """Connect to `address` without blocking in connect(), so `abort()` stops a connection under way at once."""
        deadline = time.monotonic() + (timeout or self.connect_timeout)
        last: BaseException = OSError(f"cannot connect to {address[0]}")
        for af, kind, proto, _, sa in socket.getaddrinfo(address[0], address[1], 0, socket.SOCK_STREAM):
            sock = socket.socket(af, kind, proto)
            try:
                rcvbuf = self.receive_buffer()
                if rcvbuf > 0:  # before connect, so the window the peer is offered is bounded from the start
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
                sock.setblocking(False)
                rc = sock.connect_ex(sa)
                while rc in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
                    self._check_aborted()
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise socket.timeout("connect timed out")
                    if select.select([], [sock], [], min(0.05, left))[1]:
                        rc = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                if rc:
                    raise OSError(rc, os.strerror(rc))
                sock.settimeout(timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return sock
            except (Aborted, socket.timeout):
                sock.close()
                raise
            except OSError as exc:
                sock.close()
                last = exc
        raise last

    # --- requests --------------------------------------------------------------
    def open(self, url: str, headers_for: Callable[[str], dict[str, str]]) -> Head:
        """GET `url`, following redirects (headers from `headers_for(hop)` on every hop); the final response's head.

        The body is then read with `readinto`; a response whose body is not read to its end
        must be let go of with `discard()` before the next `open`.
        """
        for _ in range(MAX_REDIRECTS + 1):
            self._check_aborted()
            conn, target = self._connection(url)
            headers = {**self._proxy_headers, **headers_for(url)}
            sock = None
            try:
                conn.request("GET", target, headers=headers)
                sock = conn.sock
                if sock is not None:
                    sock.settimeout(self.read_timeout)
                with self._lock:
                    self._check_aborted()
                resp = conn.getresponse()
            except (socket.timeout, TimeoutError):
                self.close()
                self._check_aborted()
                raise NoData(f"no answer from {urlsplit(url).netloc}") from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                self._check_aborted()
                if isinstance(exc, (ConnectionRefusedError, socket.gaierror, ssl.SSLError)) or sock is None:
                    raise BrokenConnection(f"cannot connect to {urlsplit(url).netloc} ({_explain(exc)})") from None
                raise BrokenConnection(f"{urlsplit(url).netloc}: {_explain(exc)}") from None
            head = Head(resp.status, {k.lower(): v for k, v in resp.getheaders()}, url)
            self._resp = resp
            length = head.get("content-length")
            self._left = int(length) if (length and length.isdigit() and not resp.chunked) else None
            if resp.status in REDIRECTS and head.get("location"):
                self.discard()
                # http.client reads header bytes as Latin-1: recover them and percent-encode what is not ASCII, as curl does
                raw = (head.get("location") or "").encode("latin-1", "replace")
                url = urljoin(url, quote(raw, safe="!#$%&'()*+,/:;=?@[]~"))
                continue
            return head
        self.discard()
        raise BrokenConnection(f"more than {MAX_REDIRECTS} redirects from {url}")

    def readinto(self, limit: int) -> memoryview:
        """Body bytes the socket holds now (waiting for some), at most `limit`; empty at the end of the body.

        The bytes are a view of the connection's one buffer, valid until the next call: a body
        with a Content-Length is read straight from the socket into it (one `recv`, no copy);
        a chunked body goes through http.client's decoder. Raises NoData, BrokenConnection, Aborted.
        """
        resp = self._resp
        if resp is None:
            return self.buffer[:0]
        want = min(limit, len(self.buffer))
        try:
            if self._left is None:
                n = resp.readinto(self.buffer[:want]) if resp.chunked else len(data := resp.read1(want))
                if not resp.chunked and n:
                    self.buffer[:n] = data
            else:
                n = resp.fp.readinto1(self.buffer[:min(want, self._left)]) if self._left else 0
                self._left -= n
        except (socket.timeout, TimeoutError):
            self.close()
            self._check_aborted()
            raise NoData("no data within the read timeout") from None
        except (OSError, http.client.HTTPException, ValueError, AttributeError) as exc:
            self.close()
            self._check_aborted()
            raise BrokenConnection(_explain(exc)) from None
        if not n:
            self._check_aborted()
        return self.buffer[:n]

    def finished(self) -> None:
        """The body was read to its end: keep the connection for the next request when the server allows it."""
        resp, self._resp = self._resp, None
        if resp is None:
            return
        if self._left == 0 and not resp.will_close:
            resp.close()  # the body was read past http.client: tell it the response is done, so the connection is free
            return
        if not (resp.isclosed() and not resp.will_close):
            self.close()  # the server closes it, or bytes are left: never reuse a connection in an unknown state

    def discard(self) -> None:
        """Let go of the current response without reading the rest of its body (the connection is closed)."""
        self._resp = None
        self.close()

    # --- stopping --------------------------------------------------------------
    def abort(self) -> None:
        """Stop from another thread: a blocked connect or read returns at once and raises Aborted."""
        with self._lock:
            self._aborted.set()
            conn = self._conn
            sock = conn.sock if conn is not None else None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def wait_aborted(self, seconds: float) -> bool:
        """Sleep `seconds` unless aborted first; True when aborted."""
        return self._aborted.wait(seconds)

    @property
    def aborted(self) -> bool:
        """Whether `abort()` was called."""
        return self._aborted.is_set()

    def _check_aborted(self) -> None:
        if self._aborted.is_set():
            raise Aborted()

    def close(self) -> None:
        """Close the connection (idempotent); the next `open` connects again."""
        conn, self._conn, self._key = self._conn, None, None
        self._resp = None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass


def _explain(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (ConnectionResetError, http.client.RemoteDisconnected)):
        return "the connection was closed by the server"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({exc.verify_message}); set SSL_CERT_FILE to a CA bundle that has it"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason})"
    if isinstance(exc, socket.gaierror):
        return "the host name does not resolve"
    if isinstance(exc, http.client.HTTPException):
        return f"not a valid HTTP response ({exc.__class__.__name__})"
    return str(exc) or exc.__class__.__name__
