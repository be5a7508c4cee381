"""Fixtures: a short home directory per test, and a running engine on it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from tests.helpers import running_engine, short_tmpdir

# the tests start their own servers on 127.0.0.1 and their own proxies: a proxy the machine's environment names
# (for reaching a package index, say) must not carry their requests, in this process or the engines it starts
for _name in [n for n in os.environ if n.lower() in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")]:
    del os.environ[_name]


@pytest.fixture
def home() -> Any:
    """A fresh, short home directory."""
    with short_tmpdir() as d:
        yield d / "home"


@pytest.fixture
async def engine(home: Path) -> AsyncIterator[Any]:
    """(engine, socket path) of an engine running in the test's event loop."""
    async with running_engine(home) as pair:
        yield pair
