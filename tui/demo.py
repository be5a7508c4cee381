"""`mavail demo`: a local mirror (one flaky), a Wan2.2-style catalog, an engine on a throw-away home, and the TUI.

Everything runs on 127.0.0.1 with no network: the mirrors serve deterministic
synthetic files with Range and ETag, throttled so progress is visible; the
flaky mirror drops connections part-way so retries show. The engine is a
child process (it dies with the demo even on SIGKILL, through
PR_SET_PDEATHSIG) on a temporary home that is deleted on exit.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mavail.core.config import SCHEMA
from mavail.testing.mirror import MIB, Mirror, Synthetic

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class DemoModel:
    """One catalog entry of the demo: metadata as the real model has it, files scaled down to MiB."""

    id: str
    display_name: str
    model_type: str
    capabilities: tuple[str, ...]
    quality: str
    speed: str
    vram_gb: dict[str, float]
    files: dict[str, float]  # path -> size in MiB
    family: str | None = None
    version: str = "1.0.0"
    flaky: bool = False  # primary URL on the flaky mirror (the good one listed as a fallback)


WAN_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
CATALOG: tuple[DemoModel, ...] = (
    DemoModel("wan2.2-t2v-a14b", "Wan2.2 T2V A14B", "text_to_video", ("text_to_video", "high_resolution", "high_quality"),
              "high", "slow", {"1280x720": 80.0, "832x480": 42.0},
              {"high_noise_model/diffusion_pytorch_model.safetensors": 40, "low_noise_model/diffusion_pytorch_model.safetensors": 40,
               WAN_T5: 12, "Wan2.1_VAE.pth": 4}, family="wan2.2"),
    DemoModel("wan2.2-i2v-a14b", "Wan2.2 I2V A14B", "image_to_video", ("image_to_video", "high_resolution", "high_quality"),
              "high", "slow", {"1280x720": 80.0, "832x480": 42.0},
              {"high_noise_model/diffusion_pytorch_model.safetensors": 40, "low_noise_model/diffusion_pytorch_model.safetensors": 40,
               WAN_T5: 12, "Wan2.1_VAE.pth": 4}, family="wan2.2", flaky=True),
    DemoModel("wan2.2-ti2v-5b", "Wan2.2 TI2V 5B", "text_image_to_video",
              ("text_to_video", "image_to_video", "text_image_to_video", "fast_generation"),
              "medium", "fast", {"1280x704": 24.0, "832x480": 12.0},
              {"diffusion_pytorch_model.safetensors": 24, WAN_T5: 12, "Wan2.2_VAE.pth": 6}, family="wan2.2"),
    DemoModel("wan2.1-t2v-1.3b", "Wan2.1 T2V 1.3B", "text_to_video", ("text_to_video", "fast_generation"),
              "low", "fast", {"832x480": 8.2}, {"diffusion_pytorch_model.safetensors": 6, WAN_T5: 12, "Wan2.1_VAE.pth": 4},
              family="wan2.1"),
    DemoModel("hunyuanvideo", "HunyuanVideo 13B", "text_to_video", ("text_to_video", "high_resolution", "high_quality"),
              "high", "slow", {"1280x720": 60.0, "960x544": 45.0},
              {"transformer/diffusion_pytorch_model.safetensors": 48, "text_encoder/model.safetensors": 16, "vae/model.safetensors": 4},
              family="hunyuan", flaky=True),
    DemoModel("cogvideox-5b", "CogVideoX 5B", "text_to_video", ("text_to_video",), "medium", "medium", {"720x480": 18.0},
              {"transformer/diffusion_pytorch_model.safetensors": 20, "text_encoder/model.safetensors": 10}, family="cogvideox"),
    DemoModel("ltx-video-2b", "LTX-Video 2B", "text_image_to_video", ("text_to_video", "image_to_video", "fast_generation"),
              "medium", "fast", {"768x512": 12.0}, {"ltx-video-2b-v0.9.safetensors": 16}, family="ltx"),
)
AUTOSTART = ("wan2.2-ti2v-5b", "wan2.2-i2v-a14b", "ltx-video-2b")
"""Downloads the demo starts at once (one of them from the flaky mirror)."""


def demo_config() -> dict[str, Any]:
    """Settings that make the demo lively: a few downloads at once, quick retries (only keys this engine knows)."""
    wanted = {"downloads.max_concurrent": 2, "downloads.max_retries": 8, "downloads.retry_base_s": 0.5,
              "downloads.retry_max_s": 3.0, "downloads.stall_timeout_s": 10.0, "downloads.parallel_min_size_mb": 1024.0,
              "storage.min_free_gb": 0.0}
    known = {s.key for s in SCHEMA}
    return {k: v for k, v in wanted.items() if k in known}


def usage_history(now: float, days: int = 30) -> list[dict[str, Any]]:
    """A month of plausible generations (deterministic): TI2V-5B daily at working hours, the A14Bs now and then."""
    import random
    from datetime import datetime, timezone

    rng = random.Random(2025)
    plan = {"wan2.2-ti2v-5b": (6, 95.0, 0.97), "wan2.2-i2v-a14b": (2, 540.0, 0.92), "ltx-video-2b": (3, 40.0, 0.99),
            "wan2.1-t2v-1.3b": (1, 70.0, 0.95)}
    events: list[dict[str, Any]] = []
    midnight = now - now % 86400  # UTC
    for day in range(days, 0, -1):
        for mid, (per_day, seconds, ok) in plan.items():
            for _ in range(rng.randint(0, per_day)):
                hour = rng.choice((10, 11, 14, 15, 16, 21))
                t = midnight - day * 86400 + hour * 3600 + rng.randint(0, 3599)
                events.append({"model_id": mid, "generation_time_s": round(seconds * rng.uniform(0.8, 1.3), 1),
                               "success": rng.random() < ok, "parameters": {"resolution": "1280x704", "frames": 121},
                               "timestamp": datetime.fromtimestamp(min(t, now - 60), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")})
    return events[:1000]


def catalog_toml(good: Mirror, flaky: Mirror, models: tuple[DemoModel, ...] = CATALOG) -> str:
    """Serve every demo file on the mirrors and return the catalog."""
    blocks = []
    for m in models:
        files = {path: Synthetic(f"{m.id}/{path}", int(mib * MIB)) for path, mib in m.files.items()}
        primary, backups = (flaky, [good]) if m.flaky else (good, [])
        extra: dict[str, Any] = {"family": m.family} if m.family else {}
        blocks.append(primary.add_model(m.id, files, version=m.version, mirrors=backups, display_name=m.display_name,
                                        model_type=m.model_type, capabilities=list(m.capabilities), quality=m.quality,
                                        speed=m.speed, vram_gb=m.vram_gb, **extra))
    return "# generated by `mavail demo`: synthetic files on 127.0.0.1, metadata modelled on the real models\n\n" + "\n".join(blocks)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: the engine gets SIGTERM if the demo dies
    except OSError:
        pass
    os.setpgrp()  # Ctrl-C in the terminal goes to the demo, which stops the engine in order


@dataclass
class Demo:
    """The running demo: mirrors, home, engine process. Use as a context manager; `close()` stops everything."""

    throttle_mbps: float = 3.0
    """Per-connection rate of the mirrors, MiB/s (visible progress)."""
    flaky_drop_bytes: int = 3 * MIB
    """The flaky mirror drops each response after this many bytes."""
    autostart: tuple[str, ...] = AUTOSTART
    history: bool = True
    """Record a month of generated usage history (so the Usage tab has something to show)."""
    home: Path = field(init=False)
    socket: Path = field(init=False)
    engine: subprocess.Popen[bytes] | None = field(init=False, default=None)
    good: Mirror = field(init=False)
    flaky: Mirror = field(init=False)

    def __enter__(self) -> "Demo":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        """Start the mirrors, write the home, start the engine and wait until it answers; then start some downloads."""
        import tomlkit

        self.home = Path(tempfile.mkdtemp(prefix="mavail-demo-", dir="/tmp" if Path("/tmp").is_dir() else None))
        self.socket = self.home / "engine.sock"
        self.good = Mirror().start()
        self.flaky = Mirror().start()
        self.good.default_faults.throttle_bps = self.throttle_mbps * MIB
        self.flaky.default_faults.throttle_bps = self.throttle_mbps * MIB
        self.flaky.default_faults.drop_after = self.flaky_drop_bytes
        (self.home / "catalog.toml").write_text(catalog_toml(self.good, self.flaky), encoding="utf-8")
        nested: dict[str, dict[str, Any]] = {}
        for key, value in demo_config().items():
            section, name = key.split(".", 1)
            nested.setdefault(section, {})[name] = value
        (self.home / "config.toml").write_bytes(tomlkit.dumps(nested).encode())
        log = open(self.home / "engine.stderr", "wb")  # noqa: SIM115 - closed with the process
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        for k in [k for k in env if k.startswith("MAVAIL_")]:
            env.pop(k)  # the demo's engine uses only its own home and settings
        self.engine = subprocess.Popen(
            [sys.executable, "-m", "mavail.rpc.cli", "engine", "--home", str(self.home), "--socket", str(self.socket)],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, env=env, cwd=str(ROOT),
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        log.close()
        self._wait_ready()
        self._autostart()

    def _wait_ready(self, timeout: float = 30.0) -> None:
        from mavail.rpc.client import Client, EngineUnavailable

        deadline = time.monotonic() + timeout
        assert self.engine is not None
        while time.monotonic() < deadline:
            if self.engine.poll() is not None:
                err = (self.home / "engine.stderr").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the demo engine exited with {self.engine.returncode}: {err}")
            try:
                with Client(self.socket, timeout=5) as c:
                    c.call("session.hello", client="mavail-demo")
                return
            except (EngineUnavailable, OSError):
                time.sleep(0.05)
        raise RuntimeError("the demo engine did not answer in time")

    def _autostart(self) -> None:
        """Start the demo's downloads, queue one generation request, and record a month of usage history."""
        from mavail.rpc.client import Client, RpcError

        with Client(self.socket, timeout=10) as c:
            methods = set(c.call("session.hello", client="mavail-demo")["methods"])
            if "analytics.record_batch" in methods and self.history:
                with contextlib.suppress(RpcError):
                    c.call("analytics.record_batch", events=usage_history(time.time()))
            if "downloads.start" in methods:
                for i, mid in enumerate(self.autostart):
                    with contextlib.suppress(RpcError):
                        c.call("downloads.start", model_id=mid, priority="high" if i == 0 else "normal")
            if "fallback.queue" in methods and self.autostart:
                with contextlib.suppress(RpcError):
                    c.call("fallback.queue", model_id="wan2.2-t2v-a14b", max_wait_time_minutes=120,
                           request={"prompt": "a red fox running through snow, golden hour", "parameters": {"resolution": "1280x720"}})

    def close(self) -> None:
        """Stop the engine (SIGTERM, then SIGKILL), the mirrors, and delete the home."""
        proc, self.engine = self.engine, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for m in (getattr(self, "good", None), getattr(self, "flaky", None)):
            if m is not None:
                m.stop()
        home = getattr(self, "home", None)
        if home is not None:
            shutil.rmtree(home, ignore_errors=True)

    def banner(self) -> str:
        """What the headless demo prints."""
        assert self.engine is not None
        return "\n".join(line for line in (
            f"mavail demo: engine pid {self.engine.pid} on {self.socket}",
            f"  home       {self.home} (deleted on exit)",
            f"  mirror     {self.good.base_url} ({self.throttle_mbps:g} MiB/s per connection)",
            f"  flaky      {self.flaky.base_url} (drops every response after {self.flaky_drop_bytes // MIB} MiB)",
            f"  attach     mavail tui --socket {self.socket}",
            "  usage      a month of generated usage history is recorded (the Usage tab)" if self.history else "",
            "  Ctrl-C stops everything.",
        ) if line)


def run_demo(headless: bool = False) -> int:
    """Run the demo; with `headless`, mirrors and engine only until Ctrl-C/SIGTERM. Returns the exit status."""
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
        if not headless:
            raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, on_signal)
    try:
        with Demo() as demo:
            if headless:
                print(demo.banner(), flush=True)
                old_int = signal.signal(signal.SIGINT, on_signal)
                try:
                    while not stop.wait(0.5):
                        if demo.engine is None or demo.engine.poll() is not None:
                            print("mavail demo: the engine exited", file=sys.stderr)
                            return 1
                finally:
                    signal.signal(signal.SIGINT, old_int)
                return 0
            from mavail.tui.app import run_tui

            with contextlib.suppress(KeyboardInterrupt):
                return run_tui(demo.socket)
            return 0
    except RuntimeError as exc:
        print(f"mavail demo: {exc}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, old_term)
