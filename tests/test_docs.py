"""The documents generated from code are current, and the repository's docs point only into the repository."""

from __future__ import annotations

import re
from pathlib import Path

from mavail.rpc.docs import render

ROOT = Path(__file__).resolve().parent.parent


def test_rpc_doc_is_current():
    assert (ROOT / "docs" / "rpc.md").read_text() == render(), "run: .venv/bin/python -m mavail.rpc.docs > docs/rpc.md"


def test_rpc_doc_lists_every_method():
    from mavail.rpc.methods import TABLE

    text = (ROOT / "docs" / "rpc.md").read_text()
    for name in TABLE:
        assert f"### `{name}`" in text


def test_docs_link_only_inside_the_repository():
    for md in [ROOT / "README.md", *(ROOT / "docs").glob("*.md")]:
        text = md.read_text()
        assert "../shared" not in text and "CONTRACT.md" not in text, md
        for target in re.findall(r"\]\(([^)#]+)\)", text):
            if not target.startswith(("http://", "https://")):
                assert (md.parent / target).exists(), f"{md.name} links to {target}, which is not in the repository"
