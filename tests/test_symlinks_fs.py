"""Symbolic links planted under the home, at every level: repair, remove, cleanup and download install never write,
rename or delete through them; the files outside stay byte-identical and the bystander file stays."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from mavail.testing.mirror import Mirror, Synthetic
from mavail.rpc.client import AsyncClient, RpcError
from tests.dlhelpers import dl_engine, wait_status, write_home
from tests.helpers import running_engine, synthetic_bytes

MIB = 1024 * 1024
BIG = synthetic_bytes("unet", 2 * MIB + 321)
SMALL = synthetic_bytes("vae", 100_000)
LEVELS = ["model", "version", "nested"]


@pytest.fixture
def mirror():
    with Mirror() as m:
        yield m


def snapshot(root: Path) -> dict[str, str]:
    """sha256 of every file under `root` (links not followed), by relative path."""
    out = {}
    for r, dirs, files in os.walk(root, followlinks=False):
        for n in files + [d for d in dirs if os.path.islink(os.path.join(r, d))]:
            p = os.path.join(r, n)
            rel = os.path.relpath(p, root)
            out[rel] = "link:" + os.readlink(p) if os.path.islink(p) else hashlib.sha256(Path(p).read_bytes()).hexdigest()
    return out


def plant(home: Path, outside: Path, level: str, model_id: str = "m1", files: dict[str, bytes] | None = None) -> Path:
    """Put the model's version tree outside the home and link it in at `level`; return the path where the files appear."""
    files = {"unet/model.bin": BIG, "vae.bin": SMALL} if files is None else files
    models = home / "models"
    models.mkdir(parents=True, exist_ok=True)
    if level == "model":
        real = outside / "1.0.0"
        os.symlink(outside, models / model_id)
    elif level == "version":
        real = outside
        (models / model_id).mkdir()
        os.symlink(outside, models / model_id / "1.0.0")
    else:  # the "unet" directory inside the version is the link
        real = models / model_id / "1.0.0"
        real.mkdir(parents=True)
        os.symlink(outside / "unet", real / "unet")
    for rel, data in files.items():
        p = (outside / rel) if level == "nested" and rel.startswith("unet/") else real / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    (outside / "unet").mkdir(parents=True, exist_ok=True)
    (outside / "unet" / "bystander.txt").write_text("not mavail's")
    return models / model_id / "1.0.0"


def flip(p: Path, offset: int) -> None:
    with open(p, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0x5A]))


def setup_repair(home: Path, mirror: Mirror) -> None:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text("[downloads]\npiece_size_mb = 1\n[health]\nscheduler_tick_s = 3600\n")
    (home / "catalog.toml").write_text(mirror.add_model("m1", {"unet/model.bin": BIG, "vae.bin": SMALL}))


@pytest.mark.parametrize("repair_type", ["auto", "redownload"])
@pytest.mark.parametrize("level", LEVELS)
async def test_repair_never_writes_through_a_link(home: Path, mirror: Mirror, tmp_path: Path, level: str, repair_type: str,
                                                  caplog: pytest.LogCaptureFixture):
    outside = tmp_path / "outside"
    setup_repair(home, mirror)
    d = plant(home, outside, level)
    flip(d / "unet/model.bin", 10)  # damage the file mavail would write: it lives outside the home
    os.truncate(d / "vae.bin", 10)
    before = snapshot(outside)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        try:
            res = await c.call("health.repair", model_id="m1", repair_type=repair_type)
            assert not res["success"], res
        except RpcError as exc:
            assert exc.code == -32006
    assert snapshot(outside) == before
    assert (outside / "unet" / "bystander.txt").read_text() == "not mavail's"
    assert os.path.islink({"model": home / "models/m1", "version": home / "models/m1/1.0.0",
                           "nested": home / "models/m1/1.0.0/unet"}[level])
    assert "symbolic link" in caplog.text or "symlink" in caplog.text


@pytest.mark.parametrize("level", LEVELS)
async def test_remove_never_deletes_through_a_link(home: Path, mirror: Mirror, tmp_path: Path, level: str):
    outside = tmp_path / "outside"
    setup_repair(home, mirror)
    plant(home, outside, level)
    before = snapshot(outside)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        if level == "nested":
            # the version directory is real: it goes, the link inside it goes as a link, its target stays
            res = await c.call("models.remove", model_id="m1")
            assert res["success"] and res["removed_versions"] == ["1.0.0"]
            assert not os.path.lexists(home / "models/m1/1.0.0")
        else:
            with pytest.raises(RpcError) as ei:
                await c.call("models.remove", model_id="m1")
            assert ei.value.code == -32006 and "symbolic link" in ei.value.message
            assert os.path.islink(home / "models/m1" if level == "model" else home / "models/m1/1.0.0")
    assert snapshot(outside) == before
    assert (outside / "unet" / "bystander.txt").read_text() == "not mavail's"
    assert not [p for p in (home / "trash").iterdir()]


@pytest.mark.parametrize("level", LEVELS + ["trash", "models"])
async def test_cleanup_never_renames_or_deletes_through_a_link(home: Path, mirror: Mirror, tmp_path: Path, level: str):
    outside = tmp_path / "outside"
    setup_repair(home, mirror)
    if level in LEVELS:
        plant(home, outside, level)
    else:
        d = home / "models/m1/1.0.0"
        (d / "unet").mkdir(parents=True)
        (d / "unet/model.bin").write_bytes(BIG)
        (d / "vae.bin").write_bytes(SMALL)
        (outside / "unet").mkdir(parents=True)
        (outside / "unet" / "bystander.txt").write_text("not mavail's")
        if level == "trash":  # trash/ itself is a link out of the home
            os.symlink(outside, home / "trash")
        else:  # models/ itself is a link: the model's directory lives outside
            shutil.move(str(home / "models"), str(outside / "models"))
            os.symlink(outside / "models", home / "models")
    before = snapshot(outside)
    async with running_engine(home) as (eng, sock), AsyncClient(sock) as c:
        res = await c.call("storage.cleanup", cleanup_type="manual", models_to_remove=["m1"])
        if level == "model":
            assert "m1" not in res["models_removed"], res
        else:  # a real models/m1 (or the owner's linked models/ or trash/): it goes, links inside it go as links
            assert res["models_removed"] == ["m1"], res
    after = snapshot(outside)
    if level == "models":  # the model's own directory went from the linked models/, nothing else there
        assert {k: v for k, v in before.items() if not k.startswith("models/m1/")} == after
    else:
        assert after == before
    assert (outside / "unet" / "bystander.txt").read_text() == "not mavail's"


@pytest.mark.parametrize("level", LEVELS)
async def test_download_install_never_writes_through_a_link(home: Path, tmp_path: Path, level: str, caplog: pytest.LogCaptureFixture):
    outside = tmp_path / "outside"
    a = Synthetic("a", 200_000)
    with Mirror() as m:
        write_home(home, m, {"m1": {"unet/model.bin": a, "vae.bin": b"vae"}})
        plant(home, outside, level, files={"unet/model.bin": b"old bytes", "vae.bin": b"old vae"})
        before = snapshot(outside)
        async with dl_engine(home) as (eng, sock), AsyncClient(sock) as c:
            await c.call("downloads.start", model_id="m1")
            prog = await wait_status(eng, "m1", "completed", "failed")
            assert prog["status"] == "failed", prog
            d = eng.downloads.get("m1")
            assert d.error_code == "INVALID_STATE" and "symbolic link" in d.error_message, (d.error_code, d.error_message)
    assert snapshot(outside) == before
    assert (outside / "unet" / "bystander.txt").read_text() == "not mavail's"
    assert "symbolic link" in caplog.text


@pytest.mark.parametrize("level", ["model", "nested"])
async def test_download_never_writes_partial_data_through_a_link(home: Path, tmp_path: Path, level: str):
    """partial/<id> (or a folder inside it) as a link out of the home: the download refuses, the outside is untouched."""
    outside = tmp_path / "outside"
    (outside / "unet").mkdir(parents=True)
    (outside / "unet" / "model.bin").write_bytes(b"outside bytes")
    (outside / "bystander.txt").write_text("not mavail's")
    with Mirror() as m:
        write_home(home, m, {"m1": {"unet/model.bin": Synthetic("a", 200_000)}})
        partial = home / "partial" / "m1"
        if level == "model":
            partial.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(outside, partial)
        else:
            (partial / "1.0.0").mkdir(parents=True)
            os.symlink(outside / "unet", partial / "1.0.0" / "unet")
        before = snapshot(outside)
        async with dl_engine(home) as (eng, sock), AsyncClient(sock) as c:
            await c.call("downloads.start", model_id="m1")
            prog = await wait_status(eng, "m1", "completed", "failed")
            assert prog["status"] == "failed", prog
            assert "symbolic link" in (eng.downloads.get("m1").error_message or "")
            await c.call("downloads.cancel", model_id="m1")
    assert snapshot(outside) == before
