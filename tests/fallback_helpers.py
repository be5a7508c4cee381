"""Shared pieces of the fallback tests: a small catalog of related models, a GPU-less NVML, a fake download
service, and waiting for one event."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from mavail.rpc.client import AsyncClient

from tests.helpers import install_files, model_toml, synthetic_bytes

FILES = {mid: [("w.bin", synthetic_bytes(mid, 2048))] for mid in ("wan-t2v", "wan-i2v", "ltx-t2v", "wan-ti2v")}


class NoGpu:
    """An NVML stand-in for a machine without a GPU (so `gpu.vram_gb` decides)."""

    def free_vram_gb(self) -> float | None:
        return None

    def gpus(self) -> tuple[list[Any], str]:
        return [], "no GPU in tests"


def write_catalog(home: Path, base_url: str = "http://127.0.0.1:9/", installed: tuple[str, ...] = ()) -> None:
    """Four related models: the wanted one (wan-t2v), an image model of its family, a lighter text model, a TI2V."""
    home.mkdir(parents=True, exist_ok=True)
    text = (
        model_toml("wan-t2v", FILES["wan-t2v"], base_url, model_type="text_to_video", capabilities=["text_to_video", "high_quality"],
                   quality="high", speed="slow", family="wan", vram_gb={"832x480": 12.0, "1280x704": 24.0})
        + model_toml("wan-i2v", FILES["wan-i2v"], base_url, model_type="image_to_video", capabilities=["image_to_video", "high_quality"],
                     quality="high", speed="slow", family="wan", vram_gb={"832x480": 12.0, "1280x704": 24.0})
        + model_toml("ltx-t2v", FILES["ltx-t2v"], base_url, model_type="text_to_video", capabilities=["text_to_video", "fast_generation"],
                     quality="medium", speed="fast", family="ltx", vram_gb={"832x480": 6.0, "1280x704": 10.0})
        + model_toml("wan-ti2v", FILES["wan-ti2v"], base_url, model_type="text_image_to_video",
                     capabilities=["text_to_video", "image_to_video"], quality="medium", speed="medium", family="wan",
                     vram_gb={"832x480": 9.0, "1280x704": 20.0})
    )
    (home / "catalog.toml").write_text(text)
    for mid in installed:
        install_files(home, mid, FILES[mid])


class FakeDownloads:
    """The download service's interface as far as fallback uses it, for tests that do not need real transfers."""

    def __init__(self, engine: Any, eta: float | None = 42.0) -> None:
        self.engine = engine
        self.eta = eta
        self.calls: list[tuple[str, str]] = []
        self.active: dict[str, str] = {}
        self.listeners: list[Any] = []

    async def start_service(self) -> None:
        """Nothing to resume."""

    async def ensure(self, model_id: str, priority: str = "normal") -> dict[str, Any]:
        self.calls.append((model_id, priority))
        self.active[model_id] = priority
        return {"download_id": f"dl_{model_id}", "model_id": model_id, "status": "downloading"}

    def estimate_ready_seconds(self, model_id: str) -> float | None:
        return self.eta if model_id in self.active else None

    def is_active(self, model_id: str) -> bool:
        return model_id in self.active

    def add_listener(self, cb: Any) -> None:
        self.listeners.append(cb)

    def model_fields(self, model_id: str) -> dict[str, Any]:
        return {"availability_status": "downloading"} if model_id in self.active else {}

    async def complete(self, model_id: str) -> None:
        install_files(self.engine.layout.home, model_id, FILES[model_id])
        self.active.pop(model_id, None)
        await self.engine.refresh_presence([model_id])


async def next_event(c: AsyncClient, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    """The params of the next `kind` notification `c` receives (fails after `timeout` seconds)."""
    async def take() -> dict[str, Any]:
        async for m in c.events():
            if m["method"] == kind:
                return m["params"]
        raise AssertionError("connection closed")

    return await asyncio.wait_for(take(), timeout)
