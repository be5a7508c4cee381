"""The Hub's API calls go through the proxy the standard variables name (a real tinyproxy), and around it for NO_PROXY."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from mavail.testing.hub import Hub
from tests.dlhelpers import dl_engine, wait_status

TINYPROXY = shutil.which("tinyproxy")
pytestmark = pytest.mark.skipif(TINYPROXY is None, reason="tinyproxy is not installed (apt-get install -y tinyproxy; .ci/run does)")


def _home(home: Path, ids: list[str]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "catalog.toml").write_text("".join(f'[[models]]\nid = "{i}"\nversion = "1"\nmodel_type = "text_to_video"\n'
                                               f'source = "hf://acme/{i}@main"\n' for i in ids))
    (home / "config.toml").write_text('[storage]\nmin_free_gb = 0.0\n[downloads]\nretry_base_s = 0.01\n')


async def test_api_calls_go_through_http_proxy_and_no_proxy_bypasses_it(home, tmp_path, tinyproxy):
    with Hub() as hub:
        for name in ("a", "b"):
            hub.add_repo(f"acme/{name}", {"model_index.json": b"{}", "w.safetensors": b"w" * 70_000})
        _home(home, ["a", "b"])
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf"), "HTTP_PROXY": tinyproxy[0]}
        async with dl_engine(home, environ=env) as (eng, sock):
            await eng.downloads.start("a")
            await wait_status(eng, "a", "completed")
            api = [(p, via) for p, via in hub.via if p.startswith("api/")]
            assert api and all(via and "tinyproxy" in via for _, via in api), hub.via
            head = [(p, via) for p, via in hub.via if p == "acme/a/resolve/" + hub.repos["acme/a"].branches["main"] + "/w.safetensors"]
            assert head and "tinyproxy" in (head[0][1] or ""), hub.via  # the resolve HEAD too
            hub.reset_counters()
            env["NO_PROXY"] = "127.0.0.1"
            await eng.downloads.start("b")
            await wait_status(eng, "b", "completed")
            assert hub.via and all(via is None for p, via in hub.via if p.startswith("api/")), hub.via


def test_proxy_mounts_follow_the_standard_variables():
    from mavail.core.downloads.hf import proxy_mounts

    assert proxy_mounts({}) == {}
    m = proxy_mounts({"HTTPS_PROXY": "proxy.corp:3128", "NO_PROXY": "localhost,10.0.0.1,.internal.example,::1"})
    assert set(m) == {"https://", "all://localhost", "all://10.0.0.1", "all://internal.example", "all://*.internal.example",
                      "all://[::1]"}
    assert m["all://localhost"] is None and m["https://"] is not None
    assert proxy_mounts({"ALL_PROXY": "http://p:1", "NO_PROXY": "*"}) == {}
    assert set(proxy_mounts({"all_proxy": "http://p:1"})) == {"http://", "https://"}
