"""Reuse of a Hugging Face cache that `huggingface_hub` itself filled: nothing fetched from the storage host, blobs
verified, hard-linked, never written; a tampered or linked blob is not trusted."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mavail.rpc.client import AsyncClient
from mavail.testing.hub import MIB, Hub, Synthetic
from tests.dlhelpers import dl_engine, wait_status
from tests.hubhelpers import hf_client, hf_client_env

pytest.importorskip("huggingface_hub")

WEIGHTS = Synthetic("cache-w", 2 * MIB + 5)
VAE = Synthetic("cache-v", 300_000)
CONFIG = b'{"_class_name": "WanPipeline"}\n'
FILES = {"model_index.json": CONFIG, "transformer/w.safetensors": WEIGHTS, "vae/vae.safetensors": VAE}


def _home(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "catalog.toml").write_text('[[models]]\nid = "wan"\nversion = "1"\nmodel_type = "text_to_video"\n'
                                       'source = "hf://acme/wan@main"\n')
    (home / "config.toml").write_text('[storage]\nmin_free_gb = 0.0\n[downloads]\nretry_base_s = 0.01\n')


def _fill_cache(hub: Hub, hf_home: Path) -> Path:
    """snapshot_download of the repository by the Hub's own client; the cache's hub/ folder."""
    hf_client("snapshot", hf_client_env(hub.endpoint, hf_home), repo_id="acme/wan")
    return hf_home / "hub"


def _tree_state(root: Path) -> dict[str, tuple[int, int, int, bytes]]:
    out = {}
    for p in sorted(root.rglob("*")):
        st = os.lstat(p)
        if p.is_symlink():
            out[str(p)] = (st.st_ino, st.st_mtime_ns, st.st_size, os.readlink(p).encode())
        elif p.is_file():
            out[str(p)] = (st.st_ino, st.st_mtime_ns, st.st_size, p.read_bytes()[:64])
    return out


async def test_a_model_already_in_the_hf_cache_costs_no_byte_from_the_storage_host(home, tmp_path):
    with Hub() as hub:
        commit = hub.add_repo("acme/wan", FILES)
        cache = _fill_cache(hub, tmp_path / "hf")
        before = _tree_state(cache)
        hub.reset_counters()
        _home(home)
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(cache), "HF_HOME": str(tmp_path / "elsewhere")}
        async with dl_engine(home, environ=env) as (eng, sock), AsyncClient(sock) as c:
            await c.call("downloads.start", model_id="wan")
            await wait_status(eng, "wan", "completed")
            st = await c.call("models.status", model_id="wan")
            adopted = {a["path"]: a for a in st["adopted_files"]}
            assert set(adopted) == {"model_index.json", "transformer/w.safetensors", "vae/vae.safetensors"}, st
            blob = cache / "models--acme--wan" / "blobs" / WEIGHTS.sha256()
            assert adopted["transformer/w.safetensors"]["source_path"] == str(blob)
            assert adopted["transformer/w.safetensors"]["from"] == "hf_cache"
            assert adopted["transformer/w.safetensors"]["method"] == "hardlink"
            mine = home / "models" / "wan" / "1" / "transformer" / "w.safetensors"
            assert os.stat(mine).st_ino == os.stat(blob).st_ino
            assert (home / "models" / "wan" / "1" / "model_index.json").read_bytes() == CONFIG
            assert hub.storage_bytes() == 0 and hub.storage.log == []  # nothing from the storage host
            assert not hub.resolves  # nor a plain file from the Hub, nor a HEAD: only the API's listing was asked
            assert [p for p in hub.front.bytes_served if not p.startswith("api/")] == []
            assert (await c.call("health.check", model_id="wan", check_type="full"))["result"]["issues"] == []

            # rot in the shared inode: the repair gives mavail's file its own copy first, then fixes only that copy
            with open(mine, "r+b") as fh:
                fh.seek(1_500_000)
                b = fh.read(1)
                fh.seek(1_500_000)
                fh.write(bytes([b[0] ^ 0xFF]))
            damaged = _tree_state(cache)
            res = await c.call("health.repair", model_id="wan", repair_type="auto")
            assert res["success"], res
            assert mine.read_bytes() == WEIGHTS.read(0, WEIGHTS.size)
            assert os.stat(mine).st_ino != os.stat(blob).st_ino
            assert _tree_state(cache) == damaged  # mavail wrote nothing into the foreign cache
            assert res["bytes_redownloaded"] <= 1024 * 1024, res
        assert commit in str(before)  # the cache was the client's own: snapshots/<commit>


async def test_a_tampered_or_linked_blob_is_not_reused_and_the_cache_is_left_alone(home, tmp_path):
    with Hub() as hub:
        hub.add_repo("acme/wan", FILES)
        cache = _fill_cache(hub, tmp_path / "hf")
        blobs = cache / "models--acme--wan" / "blobs"
        w = blobs / WEIGHTS.sha256()
        data = bytearray(w.read_bytes())
        data[10] ^= 0xFF
        w.unlink()
        w.write_bytes(bytes(data))  # same name and size, other bytes
        v = blobs / VAE.sha256()
        outside = tmp_path / "outside.bin"
        outside.write_bytes(VAE.read(0, VAE.size))
        v.unlink()
        v.symlink_to(outside)  # a link is never followed
        before = _tree_state(cache)
        hub.reset_counters()
        _home(home)
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(cache)}
        async with dl_engine(home, environ=env) as (eng, sock), AsyncClient(sock) as c:
            await c.call("downloads.start", model_id="wan")
            await wait_status(eng, "wan", "completed")
            st = await c.call("models.status", model_id="wan")
            assert [a["path"] for a in st["adopted_files"]] == ["model_index.json"], st  # the intact plain file only
        assert (home / "models" / "wan" / "1" / "transformer" / "w.safetensors").read_bytes() == WEIGHTS.read(0, WEIGHTS.size)
        assert hub.storage_bytes() == WEIGHTS.size + VAE.size
        assert _tree_state(cache) == before


def test_a_partial_file_that_shares_its_inode_is_never_written_in_place(tmp_path):
    from mavail.core.downloads.partial import PartialFile

    home = tmp_path / "home"
    foreign = tmp_path / "cache-blob"
    foreign.write_bytes(b"precious bytes")
    part = home / "partial" / "m" / "1" / "w.part"
    part.parent.mkdir(parents=True)
    os.link(foreign, part)  # what an adoption a crash cut short leaves behind
    f = PartialFile(part, home)
    try:
        f.write(b"XXXX", 0)
        f.flush()
    finally:
        f.close()
    assert foreign.read_bytes() == b"precious bytes"
    assert os.stat(part).st_ino != os.stat(foreign).st_ino and part.read_bytes() == b"XXXX"


async def test_adoption_progress_moves_with_the_pieces_verified(home, tmp_path):
    with Hub() as hub:
        hub.add_repo("acme/wan", FILES)
        cache = _fill_cache(hub, tmp_path / "hf")
        _home(home)
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(cache)}
        async with dl_engine(home, environ=env) as (eng, sock), AsyncClient(sock) as c:
            await c.call("downloads.start", model_id="wan")
            p = await wait_status(eng, "wan", "completed")
            assert p["downloaded_bytes"] == p["total_bytes"] == len(CONFIG) + WEIGHTS.size + VAE.size
            assert eng.downloads.get("wan").received >= WEIGHTS.size + VAE.size  # the speed counts the adopted bytes


async def test_a_file_in_sources_local_dirs_is_matched_by_size_then_verified(home, tmp_path):
    comfy = tmp_path / "ComfyUI" / "models"
    (comfy / "diffusion_models").mkdir(parents=True)
    (comfy / "vae").mkdir()
    (comfy / "diffusion_models" / "wan_w_renamed.safetensors").write_bytes(WEIGHTS.read(0, WEIGHTS.size))
    decoy = bytearray(VAE.read(0, VAE.size))
    decoy[0] ^= 1
    (comfy / "vae" / "same_size_other_bytes.safetensors").write_bytes(bytes(decoy))
    with Hub() as hub:
        hub.add_repo("acme/wan", FILES)
        _home(home)
        (home / "config.toml").write_text((home / "config.toml").read_text() + f'[sources]\nlocal_dirs = ["{comfy}"]\n')
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(tmp_path / "no-cache")}
        async with dl_engine(home, environ=env) as (eng, sock), AsyncClient(sock) as c:
            await c.call("downloads.start", model_id="wan")
            await wait_status(eng, "wan", "completed")
            st = await c.call("models.status", model_id="wan")
            (a,) = st["adopted_files"]
            assert (a["path"], a["from"]) == ("transformer/w.safetensors", "local_dir"), st
            assert a["source_path"].endswith("wan_w_renamed.safetensors")
        assert hub.storage_bytes() == VAE.size  # the decoy of the right size was refused: the VAE came from the network
        assert (home / "models" / "wan" / "1" / "vae" / "vae.safetensors").read_bytes() == VAE.read(0, VAE.size)
        assert (comfy / "vae" / "same_size_other_bytes.safetensors").read_bytes() == bytes(decoy)


async def test_a_gated_model_already_in_the_cache_needs_no_token(home, tmp_path):
    with Hub() as hub:
        hub.add_repo("acme/wan", FILES, gated="manual")
        hub.grant("acme/wan", "hf_mine")
        hf_client("snapshot", hf_client_env(hub.endpoint, tmp_path / "hf", token="hf_mine"), repo_id="acme/wan")
        hub.reset_counters()
        _home(home)
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"), "HF_HOME": str(tmp_path / "none")}
        async with dl_engine(home, environ=env) as (eng, sock), AsyncClient(sock) as c:
            await c.call("downloads.start", model_id="wan")  # the listing is public; no file needs the gate
            await wait_status(eng, "wan", "completed")
        assert hub.storage_bytes() == 0 and not hub.resolves


async def test_an_unreadable_adopted_file_is_redownloaded_not_chmodded_in_the_cache(home, tmp_path):
    with Hub() as hub:
        hub.add_repo("acme/wan", FILES)
        cache = _fill_cache(hub, tmp_path / "hf")
        _home(home)
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(cache)}
        async with dl_engine(home, environ=env) as (eng, sock), AsyncClient(sock) as c:
            await c.call("downloads.start", model_id="wan")
            await wait_status(eng, "wan", "completed")
            mine = home / "models" / "wan" / "1" / "vae" / "vae.safetensors"
            blob = cache / "models--acme--wan" / "blobs" / VAE.sha256()
            assert os.stat(mine).st_ino == os.stat(blob).st_ino
            mine.chmod(0)  # the shared inode: the cache's blob loses its mode too (not mavail's doing)
            res = await c.call("health.repair", model_id="wan", repair_type="auto")
            assert res["success"], res
            assert "redownload" in res["actions_taken"], res
            assert os.stat(mine).st_ino != os.stat(blob).st_ino and mine.read_bytes() == VAE.read(0, VAE.size)
            assert os.stat(blob).st_mode & 0o777 == 0  # mavail did not chmod the cache's file
