"""The fault-injecting mirror: content, ranges, validators and every fault, over real sockets."""

from __future__ import annotations

import hashlib
import time

import httpx
import pytest

from mavail.testing.mirror import MIB, Mirror, Synthetic


@pytest.fixture
def mirror():
    with Mirror() as m:
        yield m


def test_synthetic_is_deterministic_and_seekable():
    a = Synthetic("x", 3 * MIB + 123)
    b = Synthetic("x", 3 * MIB + 123)
    whole = a.read(0, a.size)
    assert len(whole) == a.size
    assert whole == b.read(0, b.size)
    assert a.read(MIB - 5, 40) == whole[MIB - 5:MIB + 35]
    assert a.sha256() == hashlib.sha256(whole).hexdigest()
    assert Synthetic("y", 1000).read(0, 1000) != a.read(0, 1000)
    # every MiB differs from the others
    assert whole[:MIB] != whole[MIB:2 * MIB]


def test_serves_whole_and_ranges_with_validators(mirror):
    data = Synthetic("s", 2 * MIB)
    mirror.add("m/a.bin", data)
    r = httpx.get(mirror.url("m/a.bin"))
    assert r.status_code == 200 and r.content == data.read(0, data.size)
    etag, lm = r.headers["etag"], r.headers["last-modified"]
    assert r.headers["accept-ranges"] == "bytes"
    r = httpx.get(mirror.url("m/a.bin"), headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == data.read(100, 100)
    assert r.headers["content-range"] == f"bytes 100-199/{data.size}"
    r = httpx.get(mirror.url("m/a.bin"), headers={"Range": "bytes=-10"})
    assert r.content == data.read(data.size - 10, 10)
    r = httpx.get(mirror.url("m/a.bin"), headers={"Range": f"bytes={data.size}-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{data.size}"
    # If-Range with the current validators gives the range, with an old one the whole file
    for v in (etag, lm):
        assert httpx.get(mirror.url("m/a.bin"), headers={"Range": "bytes=5-9", "If-Range": v}).status_code == 206
    mirror.replace("m/a.bin", b"new content")
    r = httpx.get(mirror.url("m/a.bin"), headers={"Range": "bytes=5-9", "If-Range": etag})
    assert r.status_code == 200 and r.content == b"new content" and r.headers["etag"] != etag
    assert httpx.head(mirror.url("m/a.bin")).headers["content-length"] == "11"
    assert httpx.get(mirror.url("nope")).status_code == 404
    assert mirror.requests["m/a.bin"] >= 7
    assert mirror.bytes_served["m/a.bin"] >= data.size + 100


def test_switches_ranges_and_validators_off(mirror):
    mirror.add("f", b"0123456789")
    f = mirror.faults("f")
    f.ranges = False
    r = httpx.get(mirror.url("f"), headers={"Range": "bytes=2-4"})
    assert r.status_code == 200 and r.content == b"0123456789" and "accept-ranges" not in r.headers
    f.ranges, f.etag, f.last_modified = True, False, False
    r = httpx.get(mirror.url("f"), headers={"Range": "bytes=2-4"})
    assert r.status_code == 206 and "etag" not in r.headers and "last-modified" not in r.headers
    # a server that ignores If-Range serves the range even for a stale validator
    f.etag, f.if_range = True, False
    mirror.replace("f", b"abcdefghij")
    r = httpx.get(mirror.url("f"), headers={"Range": "bytes=2-4", "If-Range": '"stale"'})
    assert r.status_code == 206 and r.content == b"cde"


def test_error_bursts_with_retry_after(mirror):
    mirror.add("f", b"x" * 100)
    f = mirror.faults("f")
    f.errors = [503, 429]
    f.retry_after = "2"
    r1, r2, r3 = (httpx.get(mirror.url("f")) for _ in range(3))
    assert (r1.status_code, r2.status_code, r3.status_code) == (503, 429, 200)
    assert r1.headers["retry-after"] == "2" and r3.content == b"x" * 100


def test_drop_after_n_bytes_then_recovers(mirror):
    data = Synthetic("d", MIB)
    mirror.add("f", data)
    f = mirror.faults("f")
    f.drop_after, f.drop_count = 1000, 1
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(mirror.url("f"))
    assert mirror.log[-1].bytes_sent == 1000
    assert httpx.get(mirror.url("f")).content == data.read(0, MIB)


def test_lying_content_length(mirror):
    mirror.add("f", b"y" * 1000)
    f = mirror.faults("f")
    f.lie_length, f.lie_count = 500, 1
    with pytest.raises(httpx.RemoteProtocolError):
        httpx.get(mirror.url("f"))
    f.lie_length, f.lie_count = -400, 1
    r = httpx.get(mirror.url("f"))
    assert r.status_code == 200 and len(r.content) == 600


def test_corrupt_bytes_and_change_between_requests(mirror):
    data = b"a" * 100
    mirror.add("f", data)
    f = mirror.faults("f")
    f.corrupt_offsets, f.corrupt_count = (10, 20), 1
    bad = httpx.get(mirror.url("f")).content
    assert bad[10] == ord("a") ^ 0xFF and bad[20] == ord("a") ^ 0xFF and bad[11:20] == data[11:20]
    assert httpx.get(mirror.url("f")).content == data
    f.change_after_requests, f.change_to = mirror.requests["f"], b"b" * 50
    before = mirror.etag("f")
    r = httpx.get(mirror.url("f"))
    assert r.content == b"b" * 50 and r.headers["etag"] != before


def test_stall_and_throttle(mirror):
    mirror.add("f", Synthetic("t", 200_000))
    f = mirror.faults("f")
    f.stall_after, f.stall_s, f.stall_count = 1000, 0.3, 1
    t0 = time.monotonic()
    r = httpx.get(mirror.url("f"))
    assert len(r.content) == 200_000 and time.monotonic() - t0 >= 0.3
    f.throttle_bps = 1_000_000
    t0 = time.monotonic()
    httpx.get(mirror.url("f"))
    assert 0.15 <= time.monotonic() - t0 < 2.0


def test_stall_ends_when_client_hangs_up(mirror):
    mirror.add("f", Synthetic("t", 100_000))
    f = mirror.faults("f")
    f.stall_after = 10
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(mirror.url("f"), timeout=httpx.Timeout(5, read=0.2))
    t0 = time.monotonic()
    while mirror.log == [] and time.monotonic() - t0 < 5:
        time.sleep(0.01)
    assert mirror.log and mirror.log[-1].bytes_sent == 10


def test_add_model_gives_a_catalog_block(mirror):
    from mavail.core.catalog import parse_catalog_text

    with Mirror() as alt:
        block = mirror.add_model("demo-a", {"w.bin": Synthetic("w", 1234), "c.json": b"{}"}, mirrors=[alt], family="demo")
        (spec,) = parse_catalog_text(block, "t.toml")
        assert spec.id == "demo-a" and spec.size_bytes == 1236 and spec.family == "demo"
        f = spec.files[0]
        assert f.mirrors == (alt.url("demo-a/w.bin"),)
        assert httpx.get(f.url).content == Synthetic("w", 1234).read(0, 1234)
        assert httpx.get(f.mirrors[0]).content == Synthetic("w", 1234).read(0, 1234)


def test_keep_alive_and_large_synthetic_speed(mirror):
    big = Synthetic("big", 64 * MIB)
    mirror.add("big", big)
    h = hashlib.sha256()
    with httpx.Client() as c:
        t0 = time.monotonic()
        with c.stream("GET", mirror.url("big")) as r:
            for chunk in r.iter_raw(1 << 20):
                h.update(chunk)
        elapsed = time.monotonic() - t0
        assert c.get(mirror.url("big"), headers={"Range": "bytes=0-0"}).content == big.read(0, 1)
    assert h.hexdigest() == big.sha256()
    assert elapsed < 10
