"""Config and catalog validation: defaults, environment overrides, atomic saves, hostile catalogs."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from mavail.core.catalog import build_catalog, load_catalog, version_key
from mavail.core.config import Config
from mavail.core.errors import CatalogError, ConfigError
from mavail.core.paths import is_safe_relative, resolve_home, resolve_socket
from tests.helpers import model_toml

SHA = hashlib.sha256(b"x").hexdigest()


def test_defaults_and_env_overrides(tmp_path: Path):
    cfg = Config.load(tmp_path / "config.toml", environ={"MAVAIL_DOWNLOADS_MAX_CONCURRENT": "7", "MAVAIL_HEALTH_AUTO_REPAIR_ENABLED": "no"})
    assert cfg.get("downloads.max_concurrent") == 7
    assert cfg.get("health.auto_repair_enabled") is False
    assert cfg.get("storage.min_free_gb") == 5.0
    assert cfg.get("rpc.max_message_bytes") == 1048576
    with pytest.raises(ConfigError) as e:
        Config.load(tmp_path / "config.toml", environ={"MAVAIL_DOWNLOADS_MAX_CONCURRENT": "many"})
    assert e.value.details["field"] == "downloads.max_concurrent"


def test_bad_file_names_key(tmp_path: Path):
    p = tmp_path / "config.toml"
    p.write_text("[downloads]\nmax_concurrent = -1\n")
    with pytest.raises(ConfigError) as e:
        Config.load(p, environ={})
    assert e.value.details["field"] == "downloads.max_concurrent"
    p.write_text("[downloads\n")
    with pytest.raises(ConfigError):
        Config.load(p, environ={})


def test_update_is_atomic_and_reloadable(tmp_path: Path):
    p = tmp_path / "config.toml"
    cfg = Config.load(p, environ={})
    seen = []
    cfg.on_change(seen.append)
    changed, restart = cfg.update({"downloads": {"bandwidth_limit_mbps": 12}})
    assert changed == {"downloads.bandwidth_limit_mbps": 12.0} and restart is False and seen == [changed]
    assert Config.load(p, environ={}).get("downloads.bandwidth_limit_mbps") == 12.0
    assert oct(p.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(ConfigError):
        cfg.update({"downloads": {"bandwidth_limit_mbps": 12, "max_concurrent": True}})
    assert Config.load(p, environ={}).get("downloads.max_concurrent") == 3


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../b", "a//b", "./a", "a\\b", "", "a/./b", "a/"])
def test_unsafe_paths(path: str):
    assert not is_safe_relative(path)
    text = f'[[models]]\nid="m"\nversion="1"\nmodel_type="text_to_video"\n[[models.files]]\npath={path!r}\nurl="http://h/x"\nsize=1\nsha256="{SHA}"\n'.replace("'", '"')
    with pytest.raises(CatalogError) as e:
        build_catalog([("catalog.toml", text)])
    assert "catalog.toml" in e.value.message and "'m'" in e.value.message


@pytest.mark.parametrize(
    "mutation, words",
    [
        ('id = "Bad ID"', "id"),
        ('model_type = "image_to_text"', "model_type"),
        ('quality = "ultra"', "quality"),
        ('capabilities = ["teleport"]', "capabilities"),
        ('sha256 = "abc"', "sha256"),
        ('url = "file:///etc/passwd"', "url"),
        ("size = -5", "size"),
    ],
)
def test_bad_entries_named(mutation: str, words: str):
    base = model_toml("good-model", [("f.bin", b"x")])
    key = mutation.split(" = ")[0]
    lines = [mutation if ln.startswith(key + " = ") else ln for ln in base.splitlines()]
    if key == "capabilities":
        lines = [mutation if ln.startswith("capabilities") else ln for ln in lines]
    with pytest.raises(CatalogError) as e:
        build_catalog([("catalog.d/x.toml", "\n".join(lines))])
    assert "catalog.d/x.toml" in e.value.message and words in e.value.message


def test_duplicates_and_syntax(tmp_path: Path):
    with pytest.raises(CatalogError) as e:
        build_catalog([("a.toml", model_toml("m", [("f", b"x")])), ("catalog.d/b.toml", model_toml("m", [("f", b"x")]))])
    assert "duplicate" in e.value.message and "a.toml" in e.value.message
    with pytest.raises(CatalogError) as e:
        build_catalog([("c.toml", "[[models]\nid=")])
    assert "c.toml" in e.value.message and "line" in e.value.message
    (tmp_path / "catalog.toml").write_text(model_toml("one", [("f", b"x")]))
    (tmp_path / "catalog.d").mkdir()
    (tmp_path / "catalog.d" / "two.toml").write_text(model_toml("two", [("f", b"x")], source=None) if False else model_toml("two", [("f", b"x")]))
    cat = load_catalog(tmp_path / "catalog.toml", tmp_path / "catalog.d")
    assert list(cat.models) == ["one", "two"]


def test_hf_source_and_versions():
    text = '[[models]]\nid="h"\nversion="2.0.0"\nmodel_type="text_to_video"\nsource="hf://Wan-AI/Wan2.2-TI2V-5B@main"\n'
    cat = build_catalog([("c.toml", text)])
    assert cat.get("h").source == "hf://Wan-AI/Wan2.2-TI2V-5B@main" and cat.get("h").files == ()
    with pytest.raises(CatalogError):
        build_catalog([("c.toml", text.replace("hf://", "s3://"))])
    assert version_key("1.10.0") > version_key("1.9.9") > version_key("1.9")


def test_home_and_socket_resolution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("MAVAIL_HOME", str(tmp_path / "envhome"))
    monkeypatch.delenv("MAVAIL_SOCKET", raising=False)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert resolve_home(tmp_path / "cli") == tmp_path / "cli"
    assert resolve_home(None) == tmp_path / "envhome"
    assert resolve_socket(tmp_path, None) == tmp_path / "engine.sock"
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    assert resolve_socket(tmp_path, None) == tmp_path / "run" / "mavail" / "engine.sock"
    monkeypatch.setenv("MAVAIL_SOCKET", str(tmp_path / "s.sock"))
    assert resolve_socket(tmp_path, None) == tmp_path / "s.sock"
    assert resolve_socket(tmp_path, tmp_path / "cli.sock") == tmp_path / "cli.sock"


async def test_an_unknown_setting_names_the_one_it_probably_meant(home):
    from mavail.rpc.client import AsyncClient, RpcError
    from tests.helpers import running_engine

    async with running_engine(home) as (_eng, sock), AsyncClient(sock) as c:
        with pytest.raises(RpcError) as exc:
            await c.call("config.update", patch={"downloads.max_concurrent_downloads": 5})
        assert exc.value.code == -32602 and "did you mean downloads.max_concurrent?" in exc.value.message
        assert exc.value.details["field"] == "downloads.max_concurrent_downloads"
        assert exc.value.details["did_you_mean"] == "downloads.max_concurrent"


async def test_config_get_can_describe_every_setting(home):
    from mavail.rpc.client import AsyncClient
    from tests.helpers import running_engine

    async with running_engine(home) as (_eng, sock), AsyncClient(sock) as c:
        plain = await c.call("config.get")
        assert plain["downloads"]["max_concurrent"] == 3 and "schema" not in plain
        full = await c.call("config.get", schema=True)
        s = full["schema"]["downloads.max_concurrent"]
        assert s == {"type": "int", "default": 3, "value": 3, "description": s["description"], "short": "downloads at once",
                     "min": 1, "max": 64, "live": True, "from_environment": False}
        assert s["description"] and full["settings"] == plain
        assert all(e["short"] for e in full["schema"].values())


def test_every_setting_says_in_a_few_words_what_it_is_for_within_the_tuis_meaning_column():
    from mavail.core.config import SCHEMA, SHORT_MAX
    from mavail.tui.widgets.settings import COLUMNS

    meaning_column = next(c for c in COLUMNS if c.key == "doc")
    assert meaning_column.width is not None and SHORT_MAX <= meaning_column.width
    for s in SCHEMA:
        assert s.short and s.short == s.short.strip() and len(s.short) <= SHORT_MAX, (s.key, s.short, len(s.short))
    shorts = [s.short for s in SCHEMA]
    assert len(set(shorts)) == len(shorts), sorted(m for m in shorts if shorts.count(m) > 1)  # each says something of its own
