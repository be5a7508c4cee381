"""A disk that really fills up mid-download (a small tmpfs holding the whole home, state.db too).

The download pauses with INSUFFICIENT_STORAGE and keeps its data, the engine keeps answering, and
SIGTERM still stops it cleanly (exit 0). Needs root for `mount -t tmpfs`; skipped otherwise.
"""

from __future__ import annotations

import errno
import signal
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from mavail.testing.mirror import MIB, Mirror, Synthetic
from mavail.rpc.client import Client, RpcError
from tests.helpers import mounted_tmpfs, start_engine_process

FS_MB = 24


@pytest.fixture
def small_fs() -> Iterator[Path]:
    """A tmpfs of FS_MB MiB, unmounted afterwards."""
    with mounted_tmpfs(FS_MB) as mnt:
        yield mnt


def _fill(path: Path) -> int:
    """Write zeros to `path` until the disk is full; return the bytes written."""
    n = 0
    block = b"\0" * (64 * 1024)
    with open(path, "wb", buffering=0) as f:
        while True:
            try:
                n += f.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
                break
        # the last few KiB
        try:
            while f.write(b"\0" * 512):
                n += 512
        except OSError:
            pass
    return n


def _wait(pred, timeout: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_disk_full_mid_download_pauses_keeps_data_stays_up_and_sigterm_exits_0(small_fs: Path) -> None:
    home = small_fs / "home"
    sock = small_fs.parent / "e.sock"
    data = Synthetic("fill", 16 * MIB)
    with Mirror() as m:
        home.mkdir()
        (home / "catalog.toml").write_text(m.add_model("big", {"w.bin": data}))
        (home / "config.toml").write_text('[storage]\nmin_free_gb = 0.0\n[downloads]\npiece_size_mb = 1\n'
                                          'retry_base_s = 0.01\nretry_max_s = 0.05\n')
        m.faults("big/w.bin").throttle_bps = 4 * MIB
        proc = start_engine_process(home, sock)
        try:
            with Client(sock, timeout=10) as c:
                c.call("downloads.start", model_id="big")
                _wait(lambda: c.call("downloads.progress", model_id="big")["downloaded_bytes"] > 3 * MIB, 20, "3 MiB downloaded")
                _fill(small_fs / "filler")  # something else takes the rest of the disk
                p = _wait(lambda: (lambda p: p if p["status"] not in ("downloading", "queued") else None)(
                    c.call("downloads.progress", model_id="big")), 30, "the download to stop")
                assert p["status"] == "paused", (p["error_code"], p["error_message"])
                assert p["error_code"] == "INSUFFICIENT_STORAGE", p
                assert "disk is full" in p["error_message"]
                kept = p["downloaded_bytes"]
                assert kept > 2 * MIB
                part = home / "partial" / "big" / "1.0.0" / "w.bin.part"
                assert part.exists() and part.stat().st_size >= 2 * MIB  # the data is kept
                # the engine keeps answering, reads and writes alike
                assert c.call("session.hello")["engine_version"]
                assert c.call("models.status", model_id="big")["availability_status"] == "paused"
                # control calls on the full disk answer as they would or with INSUFFICIENT_STORAGE, never INTERNAL_ERROR
                for meth, params in (("downloads.set_priority", {"priority": "high"}), ("downloads.resume", {}),
                                     ("downloads.pause", {})):
                    try:
                        c.call(meth, model_id="big", **params)
                    except RpcError as exc:
                        assert exc.name in ("INSUFFICIENT_STORAGE", "INVALID_STATE"), exc.to_dict()
                assert c.call("downloads.progress", model_id="big")["downloaded_bytes"] >= kept
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0, proc.stderr.read().decode()[-3000:] if proc.stderr else ""
            assert not sock.exists()
            assert part.exists()
            # space freed: a new engine resumes from the kept pieces and completes
            (small_fs / "filler").unlink()
            m.reset_counters()
            proc = start_engine_process(home, sock)
            with Client(sock, timeout=10) as c:
                c.call("downloads.resume", model_id="big")
                _wait(lambda: c.call("downloads.progress", model_id="big")["status"] == "completed", 30, "completion")
            assert m.bytes_served.get("big/w.bin", 0) <= data.size - kept + 2 * MIB  # nothing at all when every piece was kept
            assert (home / "models" / "big" / "1.0.0" / "w.bin").stat().st_size == data.size
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
