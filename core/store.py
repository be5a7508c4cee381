"""The shared model store: several engines (one per node) whose homes' `models/` are one shared directory.

With `store.shared` on, the engines coordinate through files under
`models/.mavail-store/`, so that nothing depends on one engine's memory:

- `locks/<model>/<version>.lock`: a lock per model version (`fcntl.flock`). The
  engine holding it downloads; the others wait. Next to it,
  `<version>.holder.json` names the holder (engine, host, pid) and the time of
  its last heartbeat, rewritten every third of `store.lock_stale_s`.
- `partial/<model>/<version>/<path>.part`: the partial data of the download, and
  `<path>.pieces.json`, its piece journal (the pieces flushed and hashed, the
  flushed prefixes of those in progress, the servers' validators), written by the
  holder each time it records pieces. An engine taking the lock over continues
  from there: no verified piece is fetched again.
- `verified/<model>/<version>.json`: every file the holder installed, with its
  size, sha256, pieces, mtime and inode. A waiting engine adopts a file when its
  record names the catalog's size and sha256 and the installed file still has
  that size, mtime and inode (see `SharedStore.verified`).
- `leases/<model>/<engine>.json`: the versions this engine's clients hold,
  refreshed with each heartbeat; another engine's cleanup and updates read them.

A lock whose holder died on this host is released by the kernel at once. A
holder on another host that stops heartbeating (crashed, cut off) is taken over
once its heartbeat (the holder file, and the lock file's mtime, which a holder
sets the moment it has the lock) is older than `store.lock_stale_s`: the lock file is renamed
aside and a new one locked; the old holder, if it comes back, finds its lock
file gone at its next heartbeat and stops. flock over NFSv4 (Linux) is a POSIX
byte-range lock the server keeps; over NFSv3 it needs the NLM lock manager
(lockd/statd) on client and server, and mounts with `nolock` or `local_lock=all`
make the lock local to each client: then only the heartbeat protects the store.

Every call here blocks (file I/O, possibly on a network mount): run them in a
worker thread.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import json
import logging
import os
import secrets
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from mavail.core import safefs
from mavail.core.paths import safe_join

log = logging.getLogger("mavail.store")

STORE_DIR = ".mavail-store"
"""The store's folder under `models/`; a model id never starts with a dot, so none can take it."""
JOURNAL_SUFFIX = ".pieces.json"


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass(frozen=True)
class EngineId:
    """Who an engine is on the store: its host, its process and a token that tells two runs of one pid apart."""

    host: str
    pid: int
    token: str

    @classmethod
    def this_process(cls) -> "EngineId":
        """The id of the engine running in this process."""
        return cls(socket.gethostname(), os.getpid(), secrets.token_hex(4))

    @property
    def name(self) -> str:
        """A file name for this engine: `<host>-<pid>-<token>`."""
        return f"{self.host}-{self.pid}-{self.token}"


@dataclass(frozen=True)
class Holder:
    """An engine named by a lock's holder file or a lease file, with the time of its last heartbeat (epoch seconds)."""

    engine: str
    host: str
    pid: int
    time: float

    def alive(self, now: float, stale_s: float, local_host: str) -> bool:
        """Whether the engine still counts as running: on this host its process exists; elsewhere its heartbeat is fresh."""
        if self.host == local_host and not _pid_alive(self.pid):
            return False
        return now - self.time <= stale_s

    def describe(self) -> str:
        """`host, pid N` for messages."""
        return f"{self.host}, pid {self.pid}"

    def to_dict(self) -> dict[str, Any]:
        """The wire form."""
        return {"engine": self.engine, "host": self.host, "pid": self.pid, "heartbeat_at": self.time}


@dataclass(frozen=True)
class VerifiedFile:
    """A file a lock holder verified (sha256 against the catalog) and installed: what another engine adopts."""

    path: str
    size: int
    sha256: str
    mtime_ns: int
    inode: int
    piece_size: int
    pieces: list[str] | None = None


@dataclass
class PieceJournal:
    """What is known of one shared partial file: its piece size, the pieces flushed and hashed, the flushed prefixes of
    pieces in progress and the servers' validators. Written by the lock holder; read by whoever takes the lock next."""

    path: str
    size: int
    sha256: str | None
    piece_size: int
    recorded: dict[int, str] = field(default_factory=dict)
    prefixes: dict[int, int] = field(default_factory=dict)
    validators: dict[str, list[str | None]] = field(default_factory=dict)
    writer: str = ""  # the engine (EngineId.name) that wrote it last

    def to_json(self) -> bytes:
        """The file's bytes."""
        d = asdict(self)
        d["recorded"] = {str(k): v for k, v in self.recorded.items()}
        d["prefixes"] = {str(k): v for k, v in self.prefixes.items()}
        return json.dumps(d, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "PieceJournal":
        """Parse a journal (ValueError/KeyError/TypeError when it is not one)."""
        d = json.loads(data)

        def table(key: str) -> dict[str, Any]:
            v = d.get(key, {})
            if not isinstance(v, dict):
                raise TypeError(f"{key} is not an object")
            return v

        return cls(path=str(d["path"]), size=int(d["size"]), sha256=d.get("sha256"), piece_size=int(d["piece_size"]),
                   recorded={int(k): str(v) for k, v in table("recorded").items()},
                   prefixes={int(k): int(v) for k, v in table("prefixes").items()},
                   validators={str(k): list(v) for k, v in table("validators").items()}, writer=str(d.get("writer", "")))


class VersionLock:
    """The lock of one model version, held by this engine until `release`."""

    def __init__(self, store: "SharedStore", model_id: str, version: str, fd: int, path: Path) -> None:
        self.store = store
        self.model_id = model_id
        self.version = version
        self.fd = fd
        self.path = path
        self.inode = os.fstat(fd).st_ino
        self.released = False

    def still_held(self) -> bool:
        """Whether the lock file at its path is still the one locked here (another engine breaks a stale lock by
        renaming it aside) and the holder file still names this engine."""
        try:
            if os.stat(self.path).st_ino != self.inode:
                return False
        except FileNotFoundError:
            return False
        h = self.store.holder(self.model_id, self.version)
        return h is not None and h.engine == self.store.engine.name

    def touch(self) -> None:
        """Set the lock file's mtime to the time now: a lock just taken, or refreshed, is not silent."""
        now = self.store.clock()
        os.utime(self.fd, (now, now))

    def heartbeat(self) -> bool:
        """Rewrite the holder file with the time now; False (nothing written) when the lock was taken over."""
        if self.released or not self.still_held():
            return False
        self.touch()
        self.store._write_holder(self.model_id, self.version)
        return True

    def release(self) -> None:
        """Remove the holder file (if still ours) and unlock."""
        if self.released:
            return
        self.released = True
        try:
            if self.still_held():
                safefs.unlink(self.store.home, self.store._holder_path(self.model_id, self.version))
        except OSError as exc:
            log.warning("%s %s: holder file not removed: %s", self.model_id, self.version, exc)
        finally:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
            finally:
                os.close(self.fd)


class SharedStore:
    """The coordination files of a shared `models/` (see the module's description). Every method blocks."""

    def __init__(self, home: Path, models_dir: Path, clock: Callable[[], float], stale_s: Callable[[], float],
                 engine: EngineId | None = None) -> None:
        """`clock` gives epoch seconds (heartbeats are compared across hosts: keep their clocks in sync, NTP);
        `stale_s` the age after which a silent holder or lease no longer counts (`store.lock_stale_s`)."""
        self.home = home
        self.root = models_dir / STORE_DIR
        self.clock = clock
        self.stale_s = stale_s
        self.engine = engine or EngineId.this_process()
        self._leases: dict[str, dict[str, int]] = {}  # model_id -> {version ("" = pending: every version): count}

    # --- paths --------------------------------------------------------------------
    def _lock_path(self, model_id: str, version: str) -> Path:
        return safe_join(self.root / "locks", f"{model_id}/{version}.lock")

    def _holder_path(self, model_id: str, version: str) -> Path:
        return safe_join(self.root / "locks", f"{model_id}/{version}.holder.json")

    def partial_path(self, model_id: str, version: str, path: str) -> Path:
        """Where the shared partial data of one file lives."""
        return safe_join(self.root / "partial", f"{model_id}/{version}/{path}.part")

    def _journal_path(self, model_id: str, version: str, path: str) -> Path:
        return safe_join(self.root / "partial", f"{model_id}/{version}/{path}{JOURNAL_SUFFIX}")

    def _verified_path(self, model_id: str, version: str) -> Path:
        return safe_join(self.root / "verified", f"{model_id}/{version}.json")

    def _lease_path(self, model_id: str, engine: str) -> Path:
        return safe_join(self.root / "leases", f"{model_id}/{engine}.json")

    def _read(self, path: Path) -> bytes | None:
        try:
            fd = safefs.open_file(self.home, path, os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            chunks = []
            while True:
                b = os.read(fd, 1 << 20)
                if not b:
                    return b"".join(chunks)
                chunks.append(b)
        finally:
            os.close(fd)

    def _read_holder_file(self, path: Path) -> Holder | None:
        data = self._read(path)
        if not data:
            return None
        try:
            d = json.loads(data)
            return Holder(str(d["engine"]), str(d["host"]), int(d["pid"]), float(d["time"]))
        except (ValueError, KeyError, TypeError):
            return None

    # --- the lock -----------------------------------------------------------------
    def holder(self, model_id: str, version: str) -> Holder | None:
        """The engine the holder file names, or None."""
        return self._read_holder_file(self._holder_path(model_id, version))

    def _write_holder(self, model_id: str, version: str) -> None:
        e = self.engine
        body = {"engine": e.name, "host": e.host, "pid": e.pid, "time": self.clock(), "model_id": model_id, "version": version}
        safefs.atomic_write(self.home, self._holder_path(model_id, version), json.dumps(body).encode(), mode=0o644)

    def try_lock(self, model_id: str, version: str) -> VersionLock | Holder:
        """Take the version's lock without waiting: the lock, or the engine holding it.

        A lock held by an engine silent for `store.lock_stale_s` is broken and taken.
        """
        path = self._lock_path(model_id, version)
        for _ in range(3):
            fd = safefs.open_file(self.home, path, os.O_RDWR | os.O_CREAT, 0o644, create_parents=True)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                try:
                    if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                        raise
                    h = self.holder(model_id, version)
                    st = os.fstat(fd)
                    # Locked by a live process somewhere (the kernel, or the NFS server, frees the lock of a dead one),
                    # so only silence counts: the holder file (the last holder's, until a new holder writes its own)
                    # and the lock file, which a holder touches the moment it has the lock and at every heartbeat.
                    if h is None:
                        h = Holder("unknown", "unknown host", 0, st.st_mtime)
                    if self.clock() - max(h.time, st.st_mtime) <= self.stale_s():
                        return h
                    try:
                        if os.stat(path).st_ino != st.st_ino:
                            continue  # another engine broke it meanwhile: look at the new one
                    except FileNotFoundError:
                        continue
                    log.warning("%s %s: taking over the lock of %s (engine %s; last heartbeat %.1f s ago)", model_id, version,
                                h.describe(), h.engine, self.clock() - h.time)
                    aside = path.with_name(f"{path.name}.broken-{secrets.token_hex(4)}")
                    try:
                        safefs.rename(self.home, path, aside)
                        safefs.unlink(self.home, aside)
                    except FileNotFoundError:
                        pass  # another engine broke it first: try again on the new file
                    continue
                finally:
                    os.close(fd)
            if os.stat(path).st_ino != os.fstat(fd).st_ino:  # broken and replaced between our open and flock
                os.close(fd)
                continue
            lock = VersionLock(self, model_id, version, fd, path)
            lock.touch()
            self._write_holder(model_id, version)
            return lock
        h = self.holder(model_id, version)
        return h or Holder("unknown", "unknown host", 0, self.clock())

    # --- partial data -------------------------------------------------------------
    def write_journal(self, model_id: str, version: str, journal: PieceJournal) -> None:
        """Save the journal of one shared partial file (the holder, after its pieces are flushed), signed by this engine."""
        journal.writer = self.engine.name
        # Rewritten at every commit of pieces, so not flushed: after a crash of the machine an old journal claims fewer
        # pieces and an unreadable one none (the file starts over), and the pieces it names were flushed before.
        safefs.atomic_write(self.home, self._journal_path(model_id, version, journal.path), journal.to_json(), mode=0o644,
                            durable=False)

    def read_journal(self, model_id: str, version: str, path: str) -> PieceJournal | None:
        """The journal of one shared partial file, None when there is none or it cannot be read."""
        data = self._read(self._journal_path(model_id, version, path))
        if not data:
            return None
        try:
            j = PieceJournal.from_json(data)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s %s: piece journal of %s unreadable (%s): starting the file over", model_id, version, path, exc)
            return None
        return j if j.path == path else None

    def remove_partial(self, model_id: str, version: str) -> None:
        """Delete the version's shared partial data and journals (only the lock holder calls this)."""
        top = safe_join(self.root / "partial", model_id)
        base = safe_join(top, version)
        safefs.remove_tree(self.home, base)
        safefs.rmdir(self.home, top)  # only when no other version's partial data is left in it

    # --- verified files -----------------------------------------------------------
    def record_verified(self, model_id: str, version: str, files: list[VerifiedFile]) -> None:
        """Add files the holder verified and installed to the version's record (the lock holder only writes it)."""
        path = self._verified_path(model_id, version)
        current = self.verified(model_id, version)
        for f in files:
            current[f.path] = f
        body = {"model_id": model_id, "version": version, "by": self.engine.name, "files": [asdict(f) for f in current.values()]}
        safefs.atomic_write(self.home, path, json.dumps(body).encode(), mode=0o644)

    def verified(self, model_id: str, version: str) -> dict[str, VerifiedFile]:
        """The version's verified files by path (empty when none is recorded or the record cannot be read)."""
        data = self._read(self._verified_path(model_id, version))
        if not data:
            return {}
        try:
            return {f["path"]: VerifiedFile(**f) for f in json.loads(data)["files"]}
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s %s: verified record unreadable: %s", model_id, version, exc)
            return {}

    def forget_verified(self, model_id: str, version: str) -> None:
        """Drop the version's verified record (its files were removed)."""
        safefs.unlink(self.home, self._verified_path(model_id, version))

    # --- leases -------------------------------------------------------------------
    def publish_leases(self, model_id: str, versions: Mapping[str | None, int]) -> None:
        """Record the versions this engine's clients hold on `model_id` (None: a pending lease, every version)."""
        held = {("" if v is None else v): n for v, n in versions.items() if n > 0}
        if held:
            self._leases[model_id] = held
        else:
            self._leases.pop(model_id, None)
        self._write_lease(model_id)

    def _write_lease(self, model_id: str) -> None:
        path = self._lease_path(model_id, self.engine.name)
        held = self._leases.get(model_id)
        if not held:
            safefs.unlink(self.home, path)
            return
        e = self.engine
        body = {"engine": e.name, "host": e.host, "pid": e.pid, "time": self.clock(), "versions": held}
        safefs.atomic_write(self.home, path, json.dumps(body).encode(), mode=0o644)

    def refresh_leases(self) -> None:
        """Rewrite this engine's lease files with the time now (the heartbeat that keeps them counted)."""
        for mid in list(self._leases):
            self._write_lease(mid)

    def drop_leases(self) -> None:
        """Remove every lease file of this engine (at a clean stop)."""
        for mid in list(self._leases):
            self._leases.pop(mid, None)
            self._write_lease(mid)

    def leases_elsewhere(self) -> dict[str, list[tuple[Holder, set[str]]]]:
        """Every live lease of the other engines: model_id -> [(engine, versions held; "" = every version)].

        Files of engines no longer alive are removed on the way.
        """
        out: dict[str, list[tuple[Holder, set[str]]]] = {}
        top = self.root / "leases"
        try:
            models = sorted(os.listdir(top))
        except (FileNotFoundError, NotADirectoryError):
            return out
        now, stale, host = self.clock(), self.stale_s(), self.engine.host
        for mid in models:
            try:
                names = sorted(os.listdir(top / mid))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                if not name.endswith(".json") or name.startswith(".") or name == f"{self.engine.name}.json":
                    continue
                path = top / mid / name
                data = self._read(path)
                try:
                    d = json.loads(data or b"")
                    h = Holder(str(d["engine"]), str(d["host"]), int(d["pid"]), float(d["time"]))
                    versions = {str(v) for v, n in d["versions"].items() if int(n) > 0}
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue
                if not h.alive(now, stale, host):
                    if now - h.time > 10 * stale or (h.host == host and not _pid_alive(h.pid)):
                        try:
                            safefs.unlink(self.home, path)
                        except OSError:
                            pass
                    continue
                if versions:
                    out.setdefault(mid, []).append((h, versions))
        return out


def lease_reasons(found: Mapping[str, list[tuple[Holder, set[str]]]], model_id: str, version: str | None = None) -> list[str]:
    """Why `model_id` (at `version`; None: any) is held by another engine, one line per engine (empty: it is not)."""
    out = []
    for h, versions in found.get(model_id, []):
        if version is None or "" in versions or version in versions:
            out.append(f"in use on another engine ({h.describe()})")
    return out


class StoreService:
    """The engine's side of a shared store that runs over time: it publishes this engine's leases as they change,
    refreshes them with a heartbeat, and keeps a view of the other engines' leases for the synchronous checks of
    cleanup and removals (`reasons`); `refresh` reads that view again before a cleanup plans."""

    def __init__(self, store: SharedStore, leases_for: Callable[[str], Sequence[Any]]) -> None:
        """`leases_for(model_id)`: this engine's live leases of the model (each with a `version`, None while pending)."""
        self.store = store
        self._leases_for = leases_for
        self._elsewhere: dict[str, list[tuple[Holder, set[str]]]] = {}
        self._dirty: set[str] = set()
        self._wake = asyncio.Event()

    @property
    def heartbeat_s(self) -> float:
        """How often holders and lease files are refreshed: a third of `store.lock_stale_s`."""
        return max(0.05, self.store.stale_s() / 3)

    async def start(self, spawn: Callable[..., Any], on_stop: Callable[..., Any]) -> None:
        """Read the other engines' leases, then run the publisher and the heartbeat until the engine stops."""
        await self.refresh()
        spawn(self._publisher(), name="store-leases")
        spawn(self._heartbeat(), name="store-heartbeat")
        on_stop(self._stop)

    async def _stop(self) -> None:
        await asyncio.to_thread(self.store.drop_leases)

    def leases_changed(self, model_ids: Sequence[str] | None) -> None:
        """The engine's leases of these models (None: any) changed: publish them soon, in order, off the loop."""
        if model_ids is None:
            return
        self._dirty.update(model_ids)
        self._wake.set()

    async def _publisher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, set()
            for mid in sorted(dirty):
                counts: dict[str | None, int] = {}
                for lease in self._leases_for(mid):
                    counts[lease.version] = counts.get(lease.version, 0) + 1
                try:
                    await asyncio.to_thread(self.store.publish_leases, mid, counts)
                except OSError as exc:
                    log.warning("%s: leases not recorded on the shared store: %s", mid, exc)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await asyncio.to_thread(self.store.refresh_leases)
                await self.refresh()
            except OSError as exc:
                log.warning("shared store heartbeat failed: %s", exc)

    async def refresh(self) -> None:
        """Read the other engines' leases again (off the loop)."""
        self._elsewhere = await asyncio.to_thread(self.store.leases_elsewhere)

    def reasons(self, model_id: str, version: str | None = None) -> list[str]:
        """Why another engine holds the model (that version), from the last reading; empty when none does."""
        return lease_reasons(self._elsewhere, model_id, version)
