"""Machine facts: CPU, memory and disk from psutil, GPUs from NVML (never raising without a driver)."""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

MIB = 1024 * 1024


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML reports it, memory in MiB."""

    index: int
    name: str
    total_mb: float
    used_mb: float
    free_mb: float
    utilization_percent: float | None


class Nvml:
    """A thin NVML reader: initialises once, reports an error string instead of raising.

    `gpus()` returns `(list, None)` on success and `([], "reason")` where no
    NVIDIA driver or GPU can be read, so callers degrade cleanly.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ready = False
        self._error: str | None = None

    def _init(self) -> str | None:
        if self._ready:
            return None
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as exc:  # NVMLError, ImportError, OSError: no driver
            return f"NVML unavailable: {exc.__class__.__name__}: {exc}"[:300]
        self._ready = True
        return None

    def gpus(self) -> tuple[list[GpuInfo], str | None]:
        """Every GPU's memory and utilisation now, or an empty list and the reason."""
        with self._lock:
            err = self._init()
            if err:
                return [], err
            import pynvml

            out: list[GpuInfo] = []
            try:
                count = pynvml.nvmlDeviceGetCount()
                for i in range(count):
                    h = pynvml.nvmlDeviceGetHandleByIndex(i)
                    name = pynvml.nvmlDeviceGetName(h)
                    if isinstance(name, bytes):
                        name = name.decode("utf-8", "replace")
                    mem = pynvml.nvmlDeviceGetMemoryInfo(h)
                    try:
                        util: float | None = float(pynvml.nvmlDeviceGetUtilizationRates(h).gpu)
                    except pynvml.NVMLError:
                        util = None
                    out.append(GpuInfo(i, name, mem.total / MIB, mem.used / MIB, mem.free / MIB, util))
            except Exception as exc:
                return [], f"NVML query failed: {exc.__class__.__name__}: {exc}"[:300]
            return out, None

    def free_vram_gb(self) -> float | None:
        """The most free memory on any one GPU in GiB, or None when no GPU can be read."""
        gpus, _ = self.gpus()
        if not gpus:
            return None
        return max(g.free_mb for g in gpus) / 1024


def _counters(read: Any, fields: tuple[str, ...]) -> dict[str, int] | None:
    """Some fields of a psutil counters tuple, or None where the system does not expose them (some containers)."""
    try:
        c = read()
    except (OSError, RuntimeError):
        return None
    return None if c is None else {f: int(getattr(c, f)) for f in fields}


def system_info(models_dir: Path, nvml: Nvml) -> dict[str, Any]:
    """The `system.info` result: cpu, memory, disk (of the models' filesystem), gpus, and cumulative disk I/O and
    network byte counters with the engine's monotonic time they were read at (rates come from two answers)."""
    vm = psutil.virtual_memory()
    du = psutil.disk_usage(str(models_dir))
    freq = psutil.cpu_freq()
    gpus, gpu_error = nvml.gpus()
    result: dict[str, Any] = {
        "cpu": {
            "logical_cores": psutil.cpu_count(logical=True),
            "physical_cores": psutil.cpu_count(logical=False),
            "percent": psutil.cpu_percent(interval=None),
            "load_average": list(psutil.getloadavg()),
            "freq_mhz": freq.current if freq else None,
        },
        "memory": {
            "total_mb": vm.total / MIB,
            "available_mb": vm.available / MIB,
            "used_mb": vm.used / MIB,
            "percent": vm.percent,
        },
        "disk": {
            "path": str(models_dir),
            "total_gb": du.total / 1024**3,
            "used_gb": du.used / 1024**3,
            "free_gb": du.free / 1024**3,
            "percent": du.percent,
        },
        "gpus": [asdict(g) for g in gpus],
        # cumulative counters (every disk, every interface): a client's rates are the differences between two answers
        "disk_io": _counters(psutil.disk_io_counters, ("read_bytes", "write_bytes")),
        "network": _counters(psutil.net_io_counters, ("bytes_sent", "bytes_recv")),
        "sampled_monotonic_s": time.monotonic(),
    }
    if gpu_error:
        result["gpu_error"] = gpu_error
    return result
