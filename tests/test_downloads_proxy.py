"""Downloads through an HTTP proxy: the setting, the environment as curl reads it, and a real tinyproxy in between."""

from __future__ import annotations


import pytest

from mavail.core.downloads.http_range import proxy_for
from mavail.core.errors import ConfigError
from mavail.testing.mirror import MIB, Mirror, Synthetic
from tests.dlhelpers import dl_engine, installed_bytes, wait_status, write_home
from tests.helpers import wait_until


def test_the_environment_names_the_proxy_as_curl_reads_it():
    env = {"https_proxy": "http://p:3128", "HTTP_PROXY": "http://up:3128", "no_proxy": "internal.example, .corp"}
    assert proxy_for("https://cdn.example/f", env) == "http://p:3128"
    assert proxy_for("http://cdn.example/f", env) == "http://up:3128"
    assert proxy_for("https://internal.example/f", env) is None
    assert proxy_for("https://a.b.corp/f", env) is None
    assert proxy_for("https://cdn.example/f", {**env, "no_proxy": "*"}) is None
    assert proxy_for("https://cdn.example/f", {"all_proxy": "http://all:1"}) == "http://all:1"
    assert proxy_for("https://cdn.example/f", {}) is None


def test_the_setting_wins_over_the_environment():
    env = {"http_proxy": "http://p:3128", "no_proxy": "127.0.0.1"}
    assert proxy_for("http://127.0.0.1:8000/f", env) is None
    assert proxy_for("http://127.0.0.1:8000/f", env, "http://set:1") == "http://set:1"
    assert proxy_for("http://cdn.example/f", env, "direct") is None


async def test_a_proxy_setting_that_is_not_a_proxy_url_is_refused(home):
    with Mirror() as m:
        write_home(home, m, {})
        async with dl_engine(home) as (eng, sock):
            for bad in ("socks5://p:1080", "p:3128", "http://p:port", "http://p:1/path"):
                with pytest.raises(ConfigError):
                    await eng.config.update({"downloads": {"proxy": bad}})
            eng.config.update({"downloads": {"proxy": "http://127.0.0.1:3128"}})


async def test_a_download_goes_through_a_real_proxy_and_arrives_whole(home, tinyproxy):
    proxy, log = tinyproxy
    data = Synthetic("proxied", 3 * MIB)
    with Mirror() as m:
        write_home(home, m, {"d": {"f.bin": data}},
                   config={"downloads": {"proxy": proxy, "parallel_min_size_mb": 0.0, "parallel_ranges": 4}})
        async with dl_engine(home) as (eng, sock):
            await eng.downloads.start("d")
            await wait_status(eng, "d", "completed")
        assert installed_bytes(home, "d", "f.bin") == data.read(0, data.size)
        await wait_until(lambda: m.url("d/f.bin") in log.read_text(), timeout=5)
        requests = [line for line in log.read_text().splitlines() if "GET " + m.url("d/f.bin") in line]
        assert len(requests) >= 1 and m.requests["d/f.bin"] >= len(requests)
