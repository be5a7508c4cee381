"""The test hub is the Hub as far as the real `huggingface_hub` client can tell: downloads, snapshots, metadata, errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mavail.testing.hub import MIB, Hub, Synthetic, git_blob_sha1
from tests.hubhelpers import hf_client, hf_client_calls, hf_client_env

pytest.importorskip("huggingface_hub")

WEIGHTS = Synthetic("hub-w", 3 * MIB + 17)
CONFIG = b'{"_class_name": "WanPipeline"}\n'


def _repo(hub: Hub, repo: str = "acme/wan-mini", **kw) -> str:
    return hub.add_repo(repo, {"model_index.json": CONFIG, "transformer/diffusion.safetensors": WEIGHTS,
                               "vae/vae.safetensors": b"v" * 5000}, **kw)


def test_hf_hub_download_fetches_an_lfs_file_through_the_storage_host(tmp_path: Path):
    with Hub() as hub:
        sha = _repo(hub)
        env = hf_client_env(hub.endpoint, tmp_path / "hf")
        out = hf_client("download", env, repo_id="acme/wan-mini", filename="transformer/diffusion.safetensors")
        p = Path(out["path"])
        assert p.read_bytes() == WEIGHTS.read(0, WEIGHTS.size)
        assert p.parent.parent.name == sha  # snapshots/<commit>/transformer/...
        blob = p.resolve()
        assert blob.name == WEIGHTS.sha256()  # the cache names an LFS blob by its sha256 (X-Linked-Etag)
        assert hub.storage.bytes_served[hub.blob_path("acme/wan-mini", "transformer/diffusion.safetensors")] == WEIGHTS.size
        assert hub.resolves[("acme/wan-mini", "transformer/diffusion.safetensors")] == 1
        assert hub.storage_auth_seen == []
        meta = hf_client("metadata", env, repo_id="acme/wan-mini", filename="vae/vae.safetensors")
        assert meta["commit"] == sha and meta["etag"] == hashlib.sha256(b"v" * 5000).hexdigest() and meta["size"] == 5000
        assert meta["location"].startswith(hub.storage.base_url) and "Signature=" in meta["location"]


def test_snapshot_download_of_a_whole_repository_and_the_tree_listing(tmp_path: Path):
    with Hub() as hub:
        sha = _repo(hub)
        env = hf_client_env(hub.endpoint, tmp_path / "hf")
        tree = hf_client("tree", env, repo_id="acme/wan-mini")["entries"]
        files = {e["path"]: e for e in tree if e["size"] is not None and e["path"].count(".")}
        assert files["transformer/diffusion.safetensors"]["sha256"] == WEIGHTS.sha256()
        assert files["model_index.json"]["sha256"] is None  # a plain git file
        out = Path(hf_client("snapshot", env, repo_id="acme/wan-mini")["path"])
        assert out.name == sha
        assert (out / "model_index.json").read_bytes() == CONFIG
        assert (out / "model_index.json").resolve().name == git_blob_sha1(CONFIG)  # a plain file's blob: its git blob id
        assert (out / "vae" / "vae.safetensors").read_bytes() == b"v" * 5000
        assert (out / "transformer" / "diffusion.safetensors").stat().st_size == WEIGHTS.size
        assert (tmp_path / "hf" / "hub" / "models--acme--wan-mini" / "refs" / "main").read_text() == sha
        assert hub.storage_auth_seen == []


def test_gated_private_and_missing_repositories_are_told_apart_as_the_hub_does(tmp_path: Path):
    with Hub() as hub:
        _repo(hub, "acme/gated", gated="manual")
        _repo(hub, "acme/private", private=True)
        hub.tokens.add("hf_other")
        hub.grant("acme/gated", "hf_yes")
        env = hf_client_env(hub.endpoint, tmp_path / "hf")
        f = "vae/vae.safetensors"
        anon, other, yes = {"token": False}, {"token": "hf_other"}, {"token": "hf_yes"}
        (info, gated_anon, gated_other, gated_yes, private_other, missing_info, missing_dl, bad_rev, bad_entry) = hf_client_calls(env, [
            ("info", {"repo_id": "acme/gated", **anon}),
            ("download", {"repo_id": "acme/gated", "filename": f, **anon}),
            ("download", {"repo_id": "acme/gated", "filename": f, **other}),
            ("download", {"repo_id": "acme/gated", "filename": f, **yes}),
            ("download", {"repo_id": "acme/private", "filename": f, **other}),
            ("info", {"repo_id": "acme/nothing", **anon}),
            ("download", {"repo_id": "acme/gated-not", "filename": f, **anon}),
            ("download", {"repo_id": "acme/gated", "filename": f, "revision": "nope", **yes}),
            ("download", {"repo_id": "acme/gated", "filename": "missing.bin", **yes}),
        ])
        assert info["gated"] == "manual"  # the metadata of a gated repo is public
        assert (gated_anon["error"], gated_anon["status"]) == ("GatedRepoError", 401)
        assert (gated_other["error"], gated_other["status"]) == ("GatedRepoError", 403)
        assert Path(gated_yes["path"]).read_bytes() == b"v" * 5000
        assert (private_other["error"], private_other["status"]) == ("RepositoryNotFoundError", 404)
        assert missing_info["error"] == "RepositoryNotFoundError"
        assert (missing_dl["error"], missing_dl["status"]) == ("RepositoryNotFoundError", 401)
        assert bad_rev["error"] == "RevisionNotFoundError"
        assert bad_entry["error"] in ("RemoteEntryNotFoundError", "EntryNotFoundError")


def test_an_expired_storage_url_is_refused(tmp_path: Path):
    import httpx

    with Hub() as hub:
        _repo(hub)
        url = hub.endpoint + "/acme/wan-mini/resolve/main/vae/vae.safetensors"
        r = httpx.head(url)
        assert r.status_code == 302 and r.headers["x-linked-size"] == "5000"
        loc = r.headers["location"]
        assert httpx.get(loc).content == b"v" * 5000
        hub.expire_urls()
        assert httpx.get(loc).status_code == 403


def test_the_client_follows_a_resolve_to_the_bridge_host(tmp_path: Path):
    with Hub() as hub:
        hub.add_repo("acme/xet", {"w.safetensors": WEIGHTS}, bridge=lambda p: True)
        out = hf_client("download", hf_client_env(hub.endpoint, tmp_path / "hf"), repo_id="acme/xet", filename="w.safetensors")
        assert Path(out["path"]).read_bytes() == WEIGHTS.read(0, WEIGHTS.size)
        assert sum(hub.bridge.bytes_served.values()) == WEIGHTS.size and not hub.storage.bytes_served
