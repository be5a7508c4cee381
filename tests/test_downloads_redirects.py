"""Redirects as storage hosts use them: one resolve per file, credentials never cross hosts, expired locations asked again."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

from mavail.testing.mirror import MIB, Mirror, Synthetic
from tests.dlhelpers import dl_engine, installed_bytes, wait_status, write_home
from tests.helpers import wait_until


class Redirector:
    """An HTTP server on 127.0.0.1 that answers every GET with a 302 to `where(path)`, recording what it was sent."""

    def __init__(self, where: Callable[[str], str]) -> None:
        self.where = where
        self.seen: list[tuple[str, str | None]] = []  # (path, Authorization)
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                outer.seen.append((self.path, self.headers.get("Authorization")))
                self.send_response(302)
                self.send_header("Location", outer.where(self.path))
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        """Stop serving."""
        self.server.shutdown()
        self.server.server_close()


def _catalog_through(home, m: Mirror, r: Redirector) -> None:
    text = (home / "catalog.toml").read_text()
    (home / "catalog.toml").write_text(text.replace(m.base_url.rstrip("/"), r.base))


PARALLEL = {"downloads": {"parallel_min_size_mb": 0.0, "parallel_ranges": 8}}


async def test_a_redirected_file_is_resolved_once_and_every_range_goes_to_its_location(home):
    data = Synthetic("located", 4 * MIB)
    with Mirror() as m:
        write_home(home, m, {"d": {"f.bin": data}}, config=PARALLEL)
        m.add("cdn/d/f.bin", data)
        r = Redirector(lambda path: m.url("cdn" + path))
        try:
            _catalog_through(home, m, r)
            environ = {"HF_ENDPOINT": r.base, "HF_TOKEN": "secret"}  # the redirector is the host the token is for
            async with dl_engine(home, environ=environ) as (eng, sock):
                await eng.downloads.start("d")
                await wait_status(eng, "d", "completed")
            assert installed_bytes(home, "d", "f.bin") == data.read(0, data.size)
            assert r.seen == [("/d/f.bin", "Bearer secret")]
            ranges = [x for x in m.log if x.path == "cdn/d/f.bin"]
            assert len(ranges) > 1 and all(x.range for x in ranges)  # many ranges, all at the location
            assert m.requests.get("d/f.bin", 0) == 0
        finally:
            r.close()


async def test_a_credential_for_one_host_is_not_sent_where_it_redirects(home):
    data = Synthetic("nocred", 256 * 1024)
    with Mirror() as m:
        write_home(home, m, {"d": {"f.bin": data}})
        m.add("cdn/d/f.bin", data)
        second = Redirector(lambda path: m.url("cdn" + path))
        first = Redirector(lambda path: second.base + path)
        try:
            _catalog_through(home, m, first)
            async with dl_engine(home, environ={"HF_ENDPOINT": first.base, "HF_TOKEN": "secret"}) as (eng, sock):
                await eng.downloads.start("d")
                await wait_status(eng, "d", "completed")
            assert installed_bytes(home, "d", "f.bin") == data.read(0, data.size)
            assert first.seen == [("/d/f.bin", "Bearer secret")]
            assert second.seen == [("/d/f.bin", None)]
        finally:
            first.close()
            second.close()


async def test_an_expired_location_is_resolved_again_and_no_byte_is_fetched_twice(home):
    data = Synthetic("expiry", 2 * MIB)
    signature = {"n": 1}
    with Mirror() as m:
        write_home(home, m, {"d": {"f.bin": data}})
        for sig in ("sig1", "sig2"):
            m.add(f"{sig}/d/f.bin", data)
        f = m.faults("sig1/d/f.bin")
        f.throttle_bps, f.drop_after, f.drop_count = 2 * MIB, 768 * 1024, 1  # the first response breaks: ranges go on
        r = Redirector(lambda path: m.url(f"sig{signature['n']}" + path))
        try:
            _catalog_through(home, m, r)
            async with dl_engine(home) as (eng, sock):
                await eng.downloads.start("d")
                await wait_until(lambda: eng.downloads.get("d").downloaded_bytes > 256 * 1024, timeout=10)
                signature["n"] = 2
                m.remove("sig1/d/f.bin")  # the signed URL expired: its host now answers 404
                await wait_status(eng, "d", "completed")
                assert eng.downloads.get("d").error_code is None
            assert installed_bytes(home, "d", "f.bin") == data.read(0, data.size)
            assert [p for p, _ in r.seen] == ["/d/f.bin", "/d/f.bin"]
            served = m.bytes_served.get("sig1/d/f.bin", 0) + m.bytes_served.get("sig2/d/f.bin", 0)
            assert served <= data.size + 64 * 1024  # at most the piece in flight when the location died
        finally:
            r.close()


async def test_connections_grow_while_they_raise_the_rate_and_stay_under_the_ceiling(home):
    data = Synthetic("capped", 24 * MIB)
    config = {"downloads": {"parallel_min_size_mb": 0.0, "parallel_ranges": 12, "max_connections": 64}}
    with Mirror() as m:
        write_home(home, m, {"d": {"f.bin": data}}, config=config)
        m.faults("d/f.bin").throttle_bps = 1 * MIB  # each connection capped: more connections, more rate
        async with dl_engine(home, piece_size=256 * 1024) as (eng, sock):
            await eng.downloads.start("d")
            seen: list[int] = []

            def grown() -> bool:
                d = eng.downloads.get("d")
                seen.append(eng.downloads.progress_dict(d)["connections"])
                return max(seen) > 4

            await wait_until(grown, timeout=15)
            await wait_status(eng, "d", "completed", timeout=60)
        assert max(seen) <= 12
        assert installed_bytes(home, "d", "f.bin") == data.read(0, data.size)


async def test_connections_come_down_when_more_do_not_raise_the_rate(home):
    """A link that bounds the connections' sum (not each one): after trying more, the file settles on one or two."""
    data = Synthetic("shared-link", 12 * MIB)
    config = {"downloads": {"parallel_min_size_mb": 0.0, "parallel_ranges": 16, "max_connections": 64}}
    with Mirror() as m:
        write_home(home, m, {"d": {"f.bin": data}}, config=config)
        m.faults("d/f.bin").total_bps = 2 * MIB
        async with dl_engine(home, piece_size=128 * 1024) as (eng, sock):
            await eng.downloads.start("d")
            seen: list[int] = []

            def settled() -> bool:
                p = eng.downloads.progress_dict(eng.downloads.get("d"))
                assert p["downloaded_bytes"] < data.size * 0.7, f"still {seen[-1:]} connections near the end"
                seen.append(p["connections"])
                return max(seen) > 2 and seen[-1] <= 2

            await wait_until(settled, timeout=15)
            await eng.downloads.cancel("d")
