"""Fixtures: a short home directory per test, and a running engine on it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, AsyncIterator

import pytest

from tests.helpers import running_engine, short_tmpdir


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
