"""`models.add` and `mavail add`: a Hub model into catalog.d/ from the Hub's metadata, by source or by shipped name."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from mavail.core.known_models import KNOWN_MODELS
from mavail.rpc.client import AsyncClient, RpcError
from mavail.testing.hub import Hub, Synthetic
from tests.dlhelpers import dl_engine, wait_status
from tests.helpers import ROOT, short_tmpdir, start_engine_process

FILES = {"model_index.json": b"{}\n", "transformer/w.safetensors": Synthetic("add-w", 90_000),
         "transformer/fp8/w.safetensors": Synthetic("add-f", 50_000), "assets/demo.mp4": b"m" * 1000}


def _home(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "catalog.toml").write_text("")
    (home / "config.toml").write_text('[storage]\nmin_free_gb = 0.0\n[downloads]\nretry_base_s = 0.01\n')


async def test_models_add_writes_a_valid_entry_that_then_downloads(home, tmp_path):
    with Hub() as hub:
        commit = hub.add_repo("acme/Wan-Mini_2", FILES, pipeline_tag="image-to-video")
        _home(home)
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf")}
        async with dl_engine(home, environ=env) as (eng, sock), AsyncClient(sock) as c:
            res = await c.call("models.add", source="hf://acme/Wan-Mini_2@main", include=["*.json", "transformer/"],
                               exclude=["*fp8*"])
            assert res["model_id"] == "wan-mini_2" and res["commit"] == commit and res["files"] == 2, res
            assert res["size_bytes"] == 3 + 90_000 and res["access"] == "ok"
            written = Path(res["file"])
            assert written == home / "catalog.d" / "wan-mini_2.toml"
            entry = tomllib.loads(written.read_text())["models"][0]
            assert entry["model_type"] == "image_to_video" and entry["source"] == "hf://acme/Wan-Mini_2@main"
            assert entry["include"] == ["*.json", "transformer/"] and entry["exclude"] == ["*fp8*"]
            assert commit in written.read_text()  # the comment says which commit was read
            st = await c.call("models.status", model_id="wan-mini_2")
            assert st["availability_status"] == "missing", st
            await c.call("downloads.start", model_id="wan-mini_2")
            await wait_status(eng, "wan-mini_2", "completed")
            base = home / "models" / "wan-mini_2" / "1"
            assert sorted(str(p.relative_to(base)) for p in base.rglob("*") if p.is_file()) == [
                "model_index.json", "transformer/w.safetensors"]
            with pytest.raises(RpcError) as ei:
                await c.call("models.add", source="hf://acme/Wan-Mini_2@main")
            assert ei.value.name == "CONFLICT"
            with pytest.raises(RpcError) as ei:
                await c.call("models.add", source="no-such-model")
            assert ei.value.name == "INVALID_PARAMS" and "wan2.2-ti2v-5b" in ei.value.message
            with pytest.raises(RpcError) as ei:
                await c.call("models.add", source="hf://acme/nothing", model_id="other")
            assert ei.value.name == "SOURCE_UNAVAILABLE" and ei.value.details["hub_error"] == "RepoNotFound"
            assert not (home / "catalog.d" / "other.toml").exists()


async def test_a_shipped_name_brings_its_repository_capabilities_and_vram_with_the_source(home, tmp_path):
    known = KNOWN_MODELS["wan2.2-ti2v-5b"]
    with Hub() as hub:
        hub.add_repo(known.repo, {"config.json": b"{}", "diffusion_pytorch_model.safetensors": b"d" * 4000}, gated=False)
        hub.add_repo("Wan-AI/Wan2.2-T2V-A14B", {"config.json": b"{}", "w.safetensors": b"x" * 100}, gated="auto")
        _home(home)
        async with dl_engine(home, environ={"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf")}) as (eng, sock), \
                AsyncClient(sock) as c:
            res = await c.call("models.add", source="wan2.2-ti2v-5b")
            assert res["model_id"] == "wan2.2-ti2v-5b" and res["source"] == "hf://Wan-AI/Wan2.2-TI2V-5B@main"
            text = Path(res["file"]).read_text()
            entry = tomllib.loads(text)["models"][0]
            assert entry["vram_gb"] == {"1280x704": 24.0} and entry["model_type"] == "text_image_to_video"
            assert "github.com/Wan-Video/Wan2.2" in text  # the figure's source is written beside it
            st = await c.call("models.status", model_id="wan2.2-ti2v-5b")
            assert st["model_type"] == "text_image_to_video", st
            # a gated repository is added, and the result says what to do before it can download
            res = await c.call("models.add", source="wan2.2-t2v-a14b")
            assert res["gated"] is True and "accept the licence" in res["access"], res


def test_every_shipped_model_is_a_valid_catalog_entry_with_sourced_figures():
    from mavail.core.catalog import parse_model

    assert {"wan2.2-t2v-a14b", "wan2.2-i2v-a14b", "wan2.2-ti2v-5b", "wan2.2-s2v-14b", "wan2.2-animate-14b"} <= set(KNOWN_MODELS)
    for name, m in KNOWN_MODELS.items():
        spec = parse_model({"id": name, "version": "1", "model_type": m.model_type, "capabilities": list(m.capabilities),
                            "quality": m.quality, "speed": m.speed, "vram_gb": m.vram_gb, "source": m.source}, name)
        assert spec.source == f"hf://{m.repo}@main"
        assert m.vram_source.startswith("https://"), name  # a figure where its source states one, and the source either way
        assert bool(m.vram_gb) == ("no VRAM figure" not in m.vram_source), name


def test_mavail_add_on_the_command_line(tmp_path):
    with Hub() as hub, short_tmpdir() as d:
        hub.add_repo("acme/cli-model", FILES)
        home, sock = d / "home", d / "e.sock"
        _home(home)
        env = {"HF_ENDPOINT": hub.endpoint, "HF_HOME": str(tmp_path / "hf")}
        proc = start_engine_process(home, sock, env=env)
        try:
            run = subprocess.run([sys.executable, "-m", "mavail.rpc.cli", "add", "hf://acme/cli-model", "--include", "*.json",
                                  "--id", "mini", "--socket", str(sock), "--home", str(home)], cwd=ROOT, capture_output=True,
                                 text=True, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
            assert run.returncode == 0, run.stderr
            assert "added mini: hf://acme/cli-model" in run.stdout and "1 files" in run.stdout, run.stdout
            assert tomllib.loads((home / "catalog.d" / "mini.toml").read_text())["models"][0]["include"] == ["*.json"]
            bad = subprocess.run([sys.executable, "-m", "mavail.rpc.cli", "add", "hf://acme/cli-model", "--id", "mini",
                                  "--socket", str(sock), "--home", str(home)], cwd=ROOT, capture_output=True, text=True,
                                 timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
            assert bad.returncode == 1 and "CONFLICT" in bad.stderr
        finally:
            proc.terminate()
            proc.wait(20)
