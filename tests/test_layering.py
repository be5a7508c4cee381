"""The layers: core imports neither rpc nor tui (checked in a fresh interpreter), tui only talks through rpc.client."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_core_does_not_import_rpc_or_tui():
    code = (
        "import importlib, pkgutil, sys, mavail.core as core\n"
        "for m in pkgutil.walk_packages(core.__path__, 'mavail.core.'):\n"
        "    importlib.import_module(m.name)\n"
        "bad = sorted(n for n in sys.modules if n.split('.')[:2] in (['mavail', 'rpc'], ['mavail', 'tui'], ['mavail', 'testing'])\n"
        "             or n.split('.')[0] in ('textual', 'core', 'rpc', 'tui'))\n"
        "print(bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_tui_reaches_engine_only_through_client():
    for path in (ROOT / "tui").rglob("*.py"):
        for name in _imports(path):
            parts = name.split(".")
            assert parts[0] not in ("core", "rpc", "tui", "testing"), f"{path} imports {name}: use the mavail. names"
            top = parts[1] if parts[0] == "mavail" and len(parts) > 1 else None
            if top == "rpc":
                assert name in ("mavail.rpc.client", "mavail.rpc"), f"{path} imports {name}"
            if top == "core" and path.name != "demo.py":
                raise AssertionError(f"{path} imports {name}: the TUI talks to the engine through rpc.client only")


SERVICES = {"downloads": "core/downloads", "health": "core/health", "fallback": "core/fallback",
            "analytics": "core/analytics.py", "storage": "core/storage.py", "metrics": "core/metrics"}
"""The services of the domain; each may import the shared parts of core, never another service nor the engine."""


def _service_files(where: str) -> list[Path]:
    p = ROOT / where
    return sorted(p.rglob("*.py")) if p.is_dir() else [p]


def test_no_core_module_imports_the_engine():
    for path in (ROOT / "core").rglob("*.py"):
        if path.name == "engine.py" and path.parent.name == "core":
            continue
        for name in _imports(path):
            assert name != "mavail.core.engine", f"{path} imports the engine: take the ports it needs instead"


def test_services_import_no_other_service():
    for service, where in SERVICES.items():
        others = {f"mavail.core.{s}" for s in SERVICES if s != service}
        for path in _service_files(where):
            for name in _imports(path):
                hit = [o for o in others if name == o or name.startswith(o + ".")]
                assert not hit, f"{path} imports {name}: a service gets what it needs of another as a port or a callable"


def test_wire_codes_live_in_rpc_only():
    import re

    code = re.compile(r"-32[0-9]{3}")
    for path in (ROOT / "core").rglob("*.py"):
        assert not code.search(path.read_text()), f"{path} holds a JSON-RPC code: map the domain error in rpc/errors.py"
    users = [p.relative_to(ROOT).as_posix() for p in (ROOT / "rpc").rglob("*.py") if "wire_code(" in p.read_text()]
    assert users == ["rpc/dispatch.py"] or sorted(users) == ["rpc/dispatch.py", "rpc/errors.py"], users


def test_every_domain_error_has_its_wire_code():
    from mavail.core import errors
    from mavail.rpc.errors import INTERNAL, WIRE, wire_code

    for name in dir(errors):
        cls = getattr(errors, name)
        if isinstance(cls, type) and issubclass(cls, errors.MavailError) and cls is not errors.MavailError:
            assert wire_code(cls("x")) != INTERNAL, f"{name} has no wire code in rpc/errors.py"
            assert wire_code(cls("x"))[1] == cls.NAME or cls in (errors.ConfigError, errors.CatalogError), name
    assert set(WIRE) >= {errors.ModelNotFound, errors.Conflict, errors.NotFound}


def test_handlers_reach_one_level_into_the_engine():
    import re

    deep = re.compile(r"ctx\.engine\.\w+\.\w+\.\w+")
    text = (ROOT / "rpc" / "methods.py").read_text()
    assert not deep.findall(text), deep.findall(text)
