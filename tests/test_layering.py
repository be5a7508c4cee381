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
