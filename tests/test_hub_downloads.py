"""`hf://` models against a Hub that speaks as the real one does (mavail.testing.hub): pinned commits, refusals,
tokens, include/exclude, repair, resolves per file."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from mavail.core.errors import HubRefused
from mavail.rpc.client import AsyncClient, RpcError
from mavail.testing.hub import MIB, Hub, Synthetic
from tests.dlhelpers import dl_engine, installed_bytes, wait_status
from tests.helpers import wait_until

WEIGHTS = Synthetic("hub-weights", 2 * MIB + 123)
CONFIG = b'{"_class_name": "WanPipeline"}\n'
PIECE = 64 * 1024


def _home(home: Path, source: str, extra: str = "", model_id: str = "wan", downloads: str = "") -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "catalog.toml").write_text(
        f'[[models]]\nid = "{model_id}"\nversion = "1"\nmodel_type = "text_to_video"\nsource = "{source}"\n{extra}')
    (home / "config.toml").write_text('[storage]\nmin_free_gb = 0.0\n[downloads]\nretry_base_s = 0.01\nretry_max_s = 0.05\n'
                                      'stall_timeout_s = 2.0\n' + downloads)


def _env(hub: Hub, tmp: Path, **extra: str) -> dict[str, str]:
    """HF_ENDPOINT at the test hub, and HF_HOME under the test so no token of the machine's user is found."""
    return {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp / "hf-home"), **extra}


def _bytes(c: Any) -> bytes:
    return c if isinstance(c, bytes) else c.read(0, c.size)


async def _pins(eng: Any) -> list[tuple[str, str, str]]:
    return [tuple(r) for r in await eng.db.fetchall("SELECT model_id, version, commit_sha FROM hub_pins")]


async def test_download_is_pinned_to_the_commit_and_a_branch_that_moves_meanwhile_changes_nothing(home, tmp_path):
    with Hub() as hub:
        first = hub.add_repo("acme/wan", {"model_index.json": CONFIG, "transformer/w.safetensors": WEIGHTS})
        hub.storage.faults(hub.blob_path("acme/wan", "transformer/w.safetensors")).throttle_bps = 4 * MIB
        _home(home, "hf://acme/wan@main")
        async with dl_engine(home, piece_size=PIECE, environ=_env(hub, tmp_path)) as (eng, sock):
            await eng.downloads.start("wan")
            await wait_until(lambda: eng.downloads.get("wan").downloaded_bytes > 256 * 1024, timeout=10)
            await eng.downloads.pause("wan")
            moved = hub.commit("acme/wan", {"model_index.json": b'{"moved": true}\n',
                                            "transformer/w.safetensors": Synthetic("other", WEIGHTS.size)})
            assert moved != first
            hub.storage.faults(hub.blob_path("acme/wan", "transformer/w.safetensors", rev=first)).throttle_bps = 0
            await eng.downloads.resume("wan")
            await wait_status(eng, "wan", "completed")
            assert installed_bytes(home, "wan", "transformer/w.safetensors", version="1") == _bytes(WEIGHTS)
            assert installed_bytes(home, "wan", "model_index.json", version="1") == CONFIG
            assert await _pins(eng) == [("wan", "1", first)]
        # every resolve named the commit, none the branch
        assert {rev for _, _, rev, _, _ in hub.resolve_log} == {first}
        # the version stays pinned: starting it again in a new engine lists the pinned commit and fetches nothing
        hub.reset_counters()
        async with dl_engine(home, piece_size=PIECE, environ=_env(hub, tmp_path)) as (eng, sock):
            await eng.downloads.start("wan")
            await wait_status(eng, "wan", "completed")
            listed = [call for call in hub.api_calls if "/revision/" in call]
            assert listed and all(call.endswith("/revision/" + first) for call in listed), hub.api_calls
            assert hub.storage_bytes() == 0


async def test_repair_of_one_flipped_byte_fetches_one_piece_from_the_pinned_commit(home, tmp_path):
    with Hub() as hub:
        first = hub.add_repo("acme/wan", {"model_index.json": CONFIG, "transformer/w.safetensors": WEIGHTS})
        _home(home, "hf://acme/wan@main")
        async with dl_engine(home, piece_size=PIECE, environ=_env(hub, tmp_path)) as (eng, sock), AsyncClient(sock) as c:
            await eng.downloads.start("wan")
            await wait_status(eng, "wan", "completed")
            hub.commit("acme/wan", {"transformer/w.safetensors": Synthetic("moved", WEIGHTS.size)})  # main moves on
            target = home / "models" / "wan" / "1" / "transformer" / "w.safetensors"
            with open(target, "r+b") as fh:
                fh.seek(1_000_000)
                b = fh.read(1)
                fh.seek(1_000_000)
                fh.write(bytes([b[0] ^ 0xFF]))
            hub.reset_counters()
            res = await c.call("health.repair", model_id="wan", repair_type="auto")
            assert res["success"], res
            assert target.read_bytes() == _bytes(WEIGHTS)
            piece_size = res.get("piece_size") or (await eng.db.fetchall(
                "SELECT piece_size FROM file_pieces WHERE model_id='wan' AND path='transformer/w.safetensors' LIMIT 1"))[0][0]
            assert res["bytes_redownloaded"] == piece_size, res
            assert hub.storage_bytes() == piece_size  # one piece from the storage host, nothing more
            assert {rev for _, _, rev, _, _ in hub.resolve_log} == {first}
            assert (await c.call("health.status", model_id="wan"))["overall_health"] == "healthy"
            # a redownload of the file fetches the pinned commit's bytes too
            res = await c.call("health.repair", model_id="wan", repair_type="redownload", force_repair=True)
            assert res["success"], res
            assert target.read_bytes() == _bytes(WEIGHTS)


async def test_gated_repository_is_refused_before_the_download_with_what_to_do_then_works_with_a_token_file(home, tmp_path):
    with Hub() as hub:
        hub.add_repo("acme/gated", {"model_index.json": CONFIG, "w.safetensors": Synthetic("g", 300_000)}, gated="manual")
        hub.grant("acme/gated", "hf_accepted")
        hub.tokens.add("hf_stranger")
        _home(home, "hf://acme/gated@main")
        env = _env(hub, tmp_path)
        async with dl_engine(home, piece_size=PIECE, environ=env) as (eng, sock), AsyncClient(sock) as c:
            with pytest.raises(RpcError) as ei:
                await c.call("downloads.start", model_id="wan")
            err = ei.value
            assert err.name == "SOURCE_UNAVAILABLE" and err.details["hub_error"] == "GatedRepo", err.to_dict()
            assert f"accept the licence at {hub.endpoint}/acme/gated" in err.message and "HF_TOKEN" in err.message
            assert eng.downloads.get("wan") is None  # nothing queued
            env["HF_TOKEN"] = "hf_stranger"
            with pytest.raises(RpcError) as ei:
                await c.call("downloads.start", model_id="wan")
            assert "has not been granted access" in ei.value.message and ei.value.details["status"] == 403
            del env["HF_TOKEN"]
            token_file = tmp_path / "hf-home" / "token"  # where `hf auth login` writes it
            token_file.parent.mkdir(parents=True, exist_ok=True)
            token_file.write_text("hf_accepted\n")
            await c.call("downloads.start", model_id="wan")
            await wait_status(eng, "wan", "completed")
            assert installed_bytes(home, "wan", "w.safetensors", version="1") == _bytes(Synthetic("g", 300_000))
        assert hub.storage_auth_seen == []  # the token never left the Hub's origin
        assert any(with_token for _, _, _, _, with_token in hub.resolve_log)


@pytest.mark.parametrize("source,code,words", [
    ("hf://acme/missing@main", "RepoNotFound", "was not found"),
    ("hf://acme/wan@nope", "RevisionNotFound", "has no revision 'nope'"),
    ("hf://acme/private@main", "RepoNotFound", "if it is private, set HF_TOKEN"),
])
async def test_missing_repository_or_revision_and_private_repository_are_told_apart(home, tmp_path, source, code, words):
    with Hub() as hub:
        hub.add_repo("acme/wan", {"model_index.json": CONFIG})
        hub.add_repo("acme/private", {"model_index.json": CONFIG}, private=True)
        _home(home, source)
        async with dl_engine(home, piece_size=PIECE, environ=_env(hub, tmp_path)) as (eng, sock), AsyncClient(sock) as c:
            with pytest.raises(RpcError) as ei:
                await c.call("downloads.start", model_id="wan")
            assert ei.value.code == -32008 and ei.value.details["hub_error"] == code, ei.value.to_dict()
            assert words in ei.value.message, ei.value.message


async def test_a_token_file_path_and_hf_token_precedence():
    import tempfile

    from mavail.core.downloads.hf import HubAccess, read_token

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "custom-token"
        p.write_text("  hf_from_file\n")
        assert read_token({"HF_TOKEN_PATH": str(p)}) == ("hf_from_file", str(p))
        assert read_token({"HF_TOKEN_PATH": str(p), "HF_TOKEN": "hf_env"}) == ("hf_env", "HF_TOKEN")
        (Path(d) / "home").mkdir()
        (Path(d) / "home" / "token").write_text("hf_home_token")
        assert read_token({"HF_HOME": str(Path(d) / "home")})[0] == "hf_home_token"
        assert read_token({"XDG_CACHE_HOME": d, "HOME": "/nonexistent"}) == (None, "")
        access = HubAccess({"HF_ENDPOINT": "https://hub.example", "HF_TOKEN_PATH": str(p)})
        await access.refresh()
        assert access.headers("https://hub.example/a/b/resolve/x/f") == {"Authorization": "Bearer hf_from_file"}
        assert access.headers("https://hub.example:443/api/models/a/b") == {"Authorization": "Bearer hf_from_file"}
        assert access.headers("https://cdn-lfs.hub.example/x") == {}
        assert access.headers("http://hub.example/a") == {}
        assert access.headers("https://hub.example.evil/a") == {}


async def test_a_missing_file_at_the_commit_is_an_entry_not_found(home, tmp_path):
    with Hub() as hub:
        hub.add_repo("acme/wan", {"model_index.json": CONFIG, "w.safetensors": Synthetic("m", 100_000)})
        hub.set_siblings("acme/wan", [{"rfilename": "ghost.safetensors", "size": 10,
                                       "lfs": {"sha256": "ab" * 32, "size": 10}}])  # a listing that names a file /resolve lacks
        _home(home, "hf://acme/wan@main")
        async with dl_engine(home, piece_size=PIECE, environ=_env(hub, tmp_path)) as (eng, sock), AsyncClient(sock) as c:
            with pytest.raises(RpcError) as ei:
                await c.call("downloads.start", model_id="wan")
            assert ei.value.details["hub_error"] == "EntryNotFound" and "ghost.safetensors" in ei.value.message, ei.value.to_dict()


async def test_an_expired_storage_url_mid_download_is_resolved_again(home, tmp_path):
    with Hub() as hub:
        hub.add_repo("acme/wan", {"w.safetensors": WEIGHTS})
        blob = hub.blob_path("acme/wan", "w.safetensors")
        hub.storage.faults(blob).throttle_bps = 4 * MIB
        _home(home, "hf://acme/wan@main")
        async with dl_engine(home, piece_size=PIECE, environ=_env(hub, tmp_path)) as (eng, sock):
            await eng.downloads.start("wan")
            await wait_until(lambda: eng.downloads.get("wan").downloaded_bytes > 256 * 1024, timeout=10)
            hub.expire_urls()  # every URL signed so far is refused from now on
            hub.storage.faults(blob).throttle_bps = 0
            await wait_status(eng, "wan", "completed")
            assert installed_bytes(home, "wan", "w.safetensors", version="1") == _bytes(WEIGHTS)


async def test_one_resolve_per_file(home, tmp_path):
    with Hub() as hub:
        hub.add_repo("acme/wan", {"model_index.json": CONFIG, "a.safetensors": WEIGHTS, "b.safetensors": Synthetic("b", MIB)})
        _home(home, "hf://acme/wan@main", downloads="parallel_min_size_mb = 0.0\nparallel_ranges = 4\n")
        async with dl_engine(home, piece_size=PIECE, environ=_env(hub, tmp_path)) as (eng, sock):
            await eng.downloads.start("wan")
            await wait_status(eng, "wan", "completed")
        assert len(hub.storage.log) > 2  # the big files came in several ranges
        assert dict(hub.resolves) == {("acme/wan", p): 1 for p in ("model_index.json", "a.safetensors", "b.safetensors")}


async def test_include_and_exclude_pick_files_as_huggingface_hub_does(home, tmp_path):
    from huggingface_hub.utils import filter_repo_objects

    files = {"model_index.json": CONFIG, "README.md": b"# card\n", "vae/diffusion_pytorch_model.safetensors": b"v" * 300,
             "transformer/diffusion_pytorch_model-00001-of-00002.safetensors": b"t1" * 100,
             "transformer/diffusion_pytorch_model-00002-of-00002.safetensors": b"t2" * 100,
             "transformer/fp8/diffusion_pytorch_model.safetensors": b"f" * 100, "assets/demo.mp4": b"m" * 500}
    include, exclude = ["*.json", "transformer/", "vae/*"], ["*fp8*"]
    with Hub() as hub:
        hub.add_repo("acme/wan", files)
        _home(home, "hf://acme/wan@main", f"include = {include!r}\nexclude = {exclude!r}\n".replace("'", '"'))
        async with dl_engine(home, piece_size=PIECE, environ=_env(hub, tmp_path)) as (eng, sock):
            await eng.downloads.start("wan")
            await wait_status(eng, "wan", "completed")
        base = home / "models" / "wan" / "1"
        got = sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file())
        want = sorted(filter_repo_objects(files, allow_patterns=include, ignore_patterns=exclude))
        assert got == want and "assets/demo.mp4" not in got and len(got) == 4, got
        assert all(("acme/wan", p) not in hub.resolves for p in files if p not in want)


def test_catalog_include_exclude_are_validated():
    from mavail.core.catalog import parse_catalog_text
    from mavail.core.errors import CatalogError

    head = '[[models]]\nid = "x"\nversion = "1"\nmodel_type = "text_to_video"\n'
    spec = parse_catalog_text(head + 'source = "hf://a/b@main"\ninclude = ["*.json"]\nexclude = ["*fp8*"]\n', "c.toml")[0]
    assert spec.include == ("*.json",) and spec.exclude == ("*fp8*",)
    for bad in ('include = "*.json"', "include = []", "include = [1]"):
        with pytest.raises(CatalogError, match="include"):
            parse_catalog_text(head + f'source = "hf://a/b@main"\n{bad}\n', "c.toml")
    with pytest.raises(CatalogError, match="Hub source only"):
        parse_catalog_text(head + 'include = ["*"]\n[[models.files]]\npath = "a"\nurl = "http://h/a"\nsize = 1\n'
                           f'sha256 = "{"0" * 64}"\n', "c.toml")


def test_hub_refused_is_source_unavailable_on_the_wire():
    from mavail.rpc.errors import wire_code

    assert wire_code(HubRefused("x", hub_error="GatedRepo")) == (-32008, "SOURCE_UNAVAILABLE")


async def test_update_check_says_the_branch_moved_and_a_new_version_downloads_the_new_commit_beside(home, tmp_path):
    with Hub() as hub:
        first = hub.add_repo("acme/wan", {"model_index.json": CONFIG, "w.safetensors": WEIGHTS})
        _home(home, "hf://acme/wan@main")
        async with dl_engine(home, piece_size=PIECE, environ=_env(hub, tmp_path)) as (eng, sock), AsyncClient(sock) as c:
            await c.call("downloads.start", model_id="wan")
            await wait_status(eng, "wan", "completed")
            assert (await c.call("models.check_updates"))["updates"] == []
            new_weights = Synthetic("w2", 400_000)
            second = hub.commit("acme/wan", {"w.safetensors": new_weights}, keep=True)
            (up,) = (await c.call("models.check_updates"))["updates"]
            assert (up["model_id"], up["pinned_commit"], up["latest_commit"]) == ("wan", first, second), up
            assert "new version" in up["message"]
            _home(home, "hf://acme/wan@main")
            (home / "catalog.toml").write_text((home / "catalog.toml").read_text().replace('version = "1"', 'version = "2"'))
            await c.call("catalog.reload")
            res = await c.call("models.update", model_id="wan")
            assert res["from_version"] == "1" and res["to_version"] == "2"

            async def switched() -> bool:
                st = await c.call("models.status", model_id="wan")
                return st["version"] == "2" and st["availability_status"] == "available"

            await wait_until(switched, timeout=20)
            assert installed_bytes(home, "wan", "w.safetensors", version="2") == _bytes(new_weights)
            assert installed_bytes(home, "wan", "w.safetensors", version="1") == _bytes(WEIGHTS)  # the old one beside it
            assert sorted(await _pins(eng)) == [("wan", "1", first), ("wan", "2", second)]
            assert (await c.call("models.check_updates"))["updates"] == []


async def test_repair_of_a_gated_model_sends_the_token_to_the_hub_only(home, tmp_path):
    with Hub() as hub:
        hub.add_repo("acme/gated", {"w.safetensors": WEIGHTS}, gated="auto")
        hub.grant("acme/gated", "hf_ok")
        _home(home, "hf://acme/gated@main")
        env = _env(hub, tmp_path, HF_TOKEN="hf_ok")
        async with dl_engine(home, piece_size=PIECE, environ=env) as (eng, sock), AsyncClient(sock) as c:
            await c.call("downloads.start", model_id="wan")
            await wait_status(eng, "wan", "completed")
            target = home / "models" / "wan" / "1" / "w.safetensors"
            with open(target, "r+b") as fh:
                fh.seek(300_000)
                fh.write(b"\x00\x01\x02")
            hub.reset_counters()
            res = await c.call("health.repair", model_id="wan")
            assert res["success"] and res["bytes_redownloaded"] == PIECE, res
            assert target.read_bytes() == _bytes(WEIGHTS)
            assert hub.resolve_log and all(with_token for *_, with_token in hub.resolve_log)
        assert hub.storage_auth_seen == []


async def test_files_on_the_newer_backend_come_from_its_bridge_host_under_the_same_rules(home, tmp_path):
    with Hub() as hub:
        other = Synthetic("bridge-w", 700_000)
        hub.add_repo("acme/mixed", {"model_index.json": CONFIG, "a.safetensors": WEIGHTS, "b.safetensors": other},
                     gated="auto", bridge=lambda p: p == "b.safetensors")
        hub.grant("acme/mixed", "hf_ok")
        _home(home, "hf://acme/mixed@main")
        async with dl_engine(home, piece_size=PIECE, environ=_env(hub, tmp_path, HF_TOKEN="hf_ok")) as (eng, sock):
            await eng.downloads.start("wan")
            await wait_status(eng, "wan", "completed")
            assert installed_bytes(home, "wan", "b.safetensors", version="1") == _bytes(other)
        assert sum(hub.bridge.bytes_served.values()) == other.size
        assert sum(hub.storage.bytes_served.values()) == WEIGHTS.size
        assert hub.storage_auth_seen == []  # neither the storage host nor the bridge saw the token


async def test_a_restart_after_the_branch_moved_resumes_the_pinned_commit(home, tmp_path):
    with Hub() as hub:
        first = hub.add_repo("acme/wan", {"w.safetensors": WEIGHTS})
        blob = hub.blob_path("acme/wan", "w.safetensors")
        hub.storage.faults(blob).throttle_bps = 4 * MIB
        _home(home, "hf://acme/wan@main")
        async with dl_engine(home, piece_size=PIECE, environ=_env(hub, tmp_path)) as (eng, sock):
            await eng.downloads.start("wan")
            await wait_until(lambda: eng.downloads.get("wan").downloaded_bytes > 256 * 1024, timeout=10)
        hub.commit("acme/wan", {"w.safetensors": Synthetic("moved", WEIGHTS.size)})
        hub.storage.faults(blob).throttle_bps = 0
        hub.reset_counters()
        async with dl_engine(home, piece_size=PIECE, environ=_env(hub, tmp_path)) as (eng, sock):
            await wait_status(eng, "wan", "completed")  # resumed by itself
            assert installed_bytes(home, "wan", "w.safetensors", version="1") == _bytes(WEIGHTS)
        assert {rev for _, _, rev, _, _ in hub.resolve_log} == {first}
        assert hub.storage_bytes() < WEIGHTS.size  # the bytes from before the restart were kept
