"""Hub listings the engine must not trust: files without a hash, absurd sizes, duplicate or colliding names."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest

from mavail.testing.hub import Hub
from mavail.rpc.client import AsyncClient, RpcError
from tests.dlhelpers import dl_engine, installed_bytes, wait_status

HTML = b"<html><body>Sign in to continue</body></html>\n"


def _hf_home(home: Path, source: str, extra: str = "") -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "catalog.toml").write_text(
        f'[[models]]\nid = "hub"\nversion = "1"\nmodel_type = "text_to_video"\nsource = "{source}"\n{extra}')
    (home / "config.toml").write_text('[storage]\nmin_free_gb = 0.0\n[downloads]\nretry_base_s = 0.01\nretry_max_s = 0.05\n')


async def _start_refused(home: Path, endpoint: str) -> RpcError:
    async with dl_engine(home, environ={"HF_ENDPOINT": endpoint}) as (eng, sock), AsyncClient(sock) as c:
        with pytest.raises(RpcError) as ei:
            await c.call("downloads.start", model_id="hub")
        assert (await c.call("session.hello"))["engine_version"]
        assert not (home / "models" / "hub").exists()  # nothing installed, nothing half-installed
        return ei.value


async def test_file_without_any_hash_is_refused(home):
    with Hub() as hub:
        endpoint = hub.endpoint
        hub.add_repo("acme/nohash", {"model.bin": HTML})
        hub.set_siblings("acme/nohash", [{"rfilename": "model.bin", "size": len(HTML)}])
        _hf_home(home, "hf://acme/nohash@main")
        err = await _start_refused(home, endpoint)
        assert err.code == -32008 and err.name == "SOURCE_UNAVAILABLE", err.to_dict()
        assert "model.bin" in err.message and "allow_unverified" in err.message


async def test_file_without_a_hash_installs_when_the_catalog_allows_it_and_status_says_so(home):
    with Hub() as hub:
        endpoint = hub.endpoint
        hub.add_repo("acme/nohash", {"model.bin": HTML, "ok.bin": b"fine"})
        hub.set_siblings("acme/nohash", [
            {"rfilename": "model.bin", "size": len(HTML)},
            {"rfilename": "ok.bin", "size": 4, "lfs": {"sha256": hashlib.sha256(b"fine").hexdigest(), "size": 4}}])
        _hf_home(home, "hf://acme/nohash@main", "allow_unverified = true\n")
        async with dl_engine(home, environ={"HF_ENDPOINT": endpoint}) as (eng, sock), AsyncClient(sock) as c:
            await c.call("downloads.start", model_id="hub")
            await wait_status(eng, "hub", "completed")
            assert installed_bytes(home, "hub", "model.bin", version="1") == HTML
            st = await c.call("models.status", model_id="hub")
            assert st["unverified_files"] == ["model.bin"], st
            assert st["verified"] is False


def test_catalog_allow_unverified_must_be_a_boolean():
    from mavail.core.catalog import parse_catalog_text
    from mavail.core.errors import CatalogError

    with pytest.raises(CatalogError) as ei:
        parse_catalog_text('[[models]]\nid = "x"\nversion = "1"\nmodel_type = "text_to_video"\nsource = "hf://a/b@main"\n'
                           'allow_unverified = "yes"\n', "catalog.toml")
    assert "allow_unverified" in ei.value.message
    spec = parse_catalog_text('[[models]]\nid = "x"\nversion = "1"\nmodel_type = "text_to_video"\nsource = "hf://a/b@main"\n'
                              'allow_unverified = true\n', "catalog.toml")[0]
    assert spec.allow_unverified is True


@pytest.mark.parametrize("size", [2 ** 64, 2 ** 63, -1, 1.5, 1e30, "12", True, None])
async def test_sizes_outside_signed_64_bits_are_refused(home, size: Any):
    with Hub() as hub:
        endpoint = hub.endpoint
        hub.add_repo("acme/huge", {"w.bin": b"abc"})
        hub.set_siblings("acme/huge", [
            {"rfilename": "w.bin", "size": size, "lfs": {"sha256": hashlib.sha256(b"abc").hexdigest(), "size": size}}])
        _hf_home(home, "hf://acme/huge@main")
        err = await _start_refused(home, endpoint)
        assert err.code == -32008 and err.name == "SOURCE_UNAVAILABLE", err.to_dict()
        assert "size" in err.message and "w.bin" in err.message


async def test_largest_signed_64_bit_size_is_accepted_by_the_listing(home):
    # 2**63 - 1 passes the listing's check; the Hub's own X-Linked-Size for the file (3) then contradicts it
    with Hub() as hub:
        endpoint = hub.endpoint
        hub.add_repo("acme/big", {"w.bin": b"abc"})
        hub.set_siblings("acme/big", [
            {"rfilename": "w.bin", "size": 2 ** 63 - 1, "lfs": {"sha256": hashlib.sha256(b"abc").hexdigest(), "size": 2 ** 63 - 1}}])
        _hf_home(home, "hf://acme/big@main")
        err = await _start_refused(home, endpoint)
        assert err.code == -32008 and err.name == "SOURCE_UNAVAILABLE", err.to_dict()
        assert "has 3 bytes" in err.message and str(2 ** 63 - 1) in err.message, err.message


@pytest.mark.parametrize("names", [["a", "a"], ["a", "a/b"], ["x/a/b", "x/a"]])
async def test_duplicate_or_colliding_names_refuse_the_whole_listing(home, names: list[str]):
    with Hub() as hub:
        endpoint = hub.endpoint
        hub.add_repo("acme/dup", {"a": b"one", "a2": b"two"})
        hub.set_siblings("acme/dup", [
            {"rfilename": n, "size": 3, "lfs": {"sha256": hashlib.sha256(b"one").hexdigest(), "size": 3}} for n in names])
        _hf_home(home, "hf://acme/dup@main")
        hub.reset_counters()
        err = await _start_refused(home, endpoint)
        assert err.code == -32008 and err.name == "SOURCE_UNAVAILABLE", err.to_dict()
        assert "collides" in err.message or "twice" in err.message, err.message
        assert not hub.resolves and not hub.storage.log  # nothing was downloaded


@pytest.mark.parametrize("field,value", [("sha256", "zz" * 32), ("sha256", "ab" * 40), ("blobId", "not-a-sha1"),
                                         ("sha256", "ab" * 32 + "\n"), ("blobId", "ab" * 20 + "\n")])
async def test_malformed_hashes_are_refused(home, field: str, value: str):
    with Hub() as hub:
        endpoint = hub.endpoint
        hub.add_repo("acme/bad", {"w.bin": b"abc"})
        sib: dict[str, Any] = {"rfilename": "w.bin", "size": 3}
        if field == "sha256":
            sib["lfs"] = {"sha256": value, "size": 3}
        else:
            sib["blobId"] = value
        hub.set_siblings("acme/bad", [sib])
        _hf_home(home, "hf://acme/bad@main")
        err = await _start_refused(home, endpoint)
        assert err.code == -32008, err.to_dict()
        assert "w.bin" in err.message


@pytest.mark.parametrize("names", [["a", "a"], ["a", "a/b"], ["x/a/b", "x/a"]])
def test_catalog_files_lists_refuse_the_same_names(names: list[str]):
    from mavail.core.catalog import parse_catalog_text
    from mavail.core.errors import CatalogError

    files = "".join(f'[[models.files]]\npath = "{n}"\nurl = "http://h/{i}"\nsize = 1\nsha256 = "{"0" * 64}"\n'
                    for i, n in enumerate(names))
    with pytest.raises(CatalogError) as ei:
        parse_catalog_text(f'[[models]]\nid = "x"\nversion = "1"\nmodel_type = "text_to_video"\n{files}', "catalog.toml")
    assert "collides" in ei.value.message


def test_catalog_sha256_with_a_trailing_newline_is_refused():
    from mavail.core.catalog import parse_catalog_text
    from mavail.core.errors import CatalogError
    from tests.helpers import model_toml

    good = hashlib.sha256(b"x").hexdigest()
    text = model_toml("m", [("w.bin", b"x")])
    assert good in text
    parse_catalog_text(text, "catalog.toml")
    with pytest.raises(CatalogError, match="sha256"):
        parse_catalog_text(text.replace(good, good + "\\n"), "catalog.toml")
