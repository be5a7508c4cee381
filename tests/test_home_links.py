"""Links and mounts in the home the engine must not write through: the lock, the logs, state.db, split filesystems.

Each engine here is a real `mavail engine` subprocess; links are real symlinks to files outside the home,
checked byte for byte afterwards.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from mavail.core.logs import setup_logging, teardown_logging
from mavail.rpc.client import Client
from mavail.testing.mirror import MIB, Mirror, Synthetic
from tests.helpers import ROOT, mounted_tmpfs, short_tmpdir, start_engine_process

MAVAIL = [sys.executable, "-m", "mavail.rpc.cli"]
OUTSIDE = b"precious bytes outside the home\n"


def _engine(home: Path, sock: Path, timeout: float = 15) -> subprocess.CompletedProcess[str]:
    """Run `mavail engine` expecting it to refuse: it must exit on its own."""
    return subprocess.run([*MAVAIL, "engine", "--home", str(home), "--socket", str(sock)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


@pytest.mark.parametrize("where", ["engine.lock", "logs/model_management.log", "logs/downloads.log", "logs",
                                   "state.db", "state.db-wal", "state.db-shm"])
def test_engine_refuses_links_at_its_own_files_and_leaves_their_targets_alone(where: str) -> None:
    with short_tmpdir() as d:
        home, sock, outside = d / "home", d / "e.sock", d / "outside"
        (home / "logs").mkdir(parents=True)
        outside.mkdir()
        target = outside / "victim"
        target.write_bytes(OUTSIDE)
        if where == "logs":
            (outside / "model_management.log").write_bytes(OUTSIDE)
            (home / "logs").rmdir()
            (home / "logs").symlink_to(outside, target_is_directory=True)
        else:
            (home / where).symlink_to(target)
        before = _snapshot(outside)
        r = _engine(home, sock)
        assert r.returncode != 0, r.stderr
        lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and "link" in lines[0] and where.split("/")[-1] in lines[0], r.stderr
        assert _snapshot(outside) == before
        assert not sock.exists()


def test_log_rotation_never_writes_through_a_logs_folder_swapped_for_a_link() -> None:
    with short_tmpdir() as d:
        home, outside = d / "home", d / "outside"
        (home / "logs").mkdir(parents=True)
        outside.mkdir()
        (outside / "model_management.log").write_bytes(OUTSIDE)
        (outside / "model_management.log.1").write_bytes(OUTSIDE)
        before = _snapshot(outside)
        handlers = setup_logging(home / "logs", max_bytes=200, backups=2)
        log = logging.getLogger("mavail.test_rotation")
        try:
            log.info("x" * 150)
            (home / "logs").rename(home / "logs.old")
            (home / "logs").symlink_to(outside, target_is_directory=True)
            for _ in range(5):  # each record rolls the file over
                log.info("y" * 150)
        finally:
            teardown_logging(handlers)
        assert _snapshot(outside) == before


@pytest.fixture
def tmpfs() -> Iterator[Path]:
    """A small tmpfs (another filesystem than the home's), unmounted afterwards."""
    with mounted_tmpfs(8) as mnt:
        yield mnt


def test_models_on_another_filesystem_than_partial_and_trash_is_refused(tmpfs: Path) -> None:
    home, sock = tmpfs.parent / "home", tmpfs.parent / "e.sock"
    home.mkdir()
    (tmpfs / "models").mkdir()
    (home / "models").symlink_to(tmpfs / "models", target_is_directory=True)
    r = _engine(home, sock)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "one filesystem" in lines[0], r.stderr
    assert not (home / "state.db").exists()


def test_models_partial_and_trash_all_on_one_other_filesystem_download_completes(tmpfs: Path) -> None:
    home, sock = tmpfs.parent / "home", tmpfs.parent / "e.sock"
    home.mkdir()
    for name in ("models", "partial", "trash"):
        (tmpfs / name).mkdir()
        (home / name).symlink_to(tmpfs / name, target_is_directory=True)
    with Mirror() as m:
        (home / "catalog.toml").write_text(m.add_model("small", {"w.bin": Synthetic("s", MIB)}))
        (home / "config.toml").write_text("[storage]\nmin_free_gb = 0.0\n")
        proc = start_engine_process(home, sock)
        try:
            with Client(sock, timeout=10) as c:
                c.call("downloads.start", model_id="small")
                deadline = time.monotonic() + 30
                while c.call("models.status", model_id="small")["availability_status"] != "available":
                    assert time.monotonic() < deadline, "the download did not complete"
                    time.sleep(0.05)
            assert (tmpfs / "models" / "small" / "1.0.0" / "w.bin").stat().st_size == MIB
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0


def test_engine_refused_for_a_live_socket_never_starts_on_its_own_home() -> None:
    with short_tmpdir() as d:
        home, sock = d / "home", d / "e.sock"
        proc = start_engine_process(home, sock)
        try:
            other = d / "home2"
            r = _engine(other, sock)
            assert r.returncode != 0 and "already" in r.stderr, r.stderr
            assert not (other / "state.db").exists()
            # a path that is not a socket is refused before the engine starts too
            (d / "plain").write_bytes(b"")
            r = _engine(other, d / "plain")
            assert r.returncode != 0 and "not a socket" in r.stderr, r.stderr
            assert not (other / "state.db").exists()
            assert (d / "plain").read_bytes() == b""
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0


def test_stale_socket_is_still_replaced() -> None:
    with short_tmpdir() as d:
        home, sock = d / "home", d / "e.sock"
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(sock))
        s.close()  # a socket file nobody answers on
        proc = start_engine_process(home, sock)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
