"""Log files in `<home>/logs/`, rotated, each line carrying the request id where there is one."""

from __future__ import annotations

import contextvars
import logging
import logging.handlers
import os
import stat
import sys
from pathlib import Path

from mavail.core import safefs

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")

# Logger name prefix -> file. Everything else goes to model_management.log.
LOG_FILES = {
    "mavail.downloads": "downloads.log",
    "mavail.health": "health_monitor.log",
}
MAIN_LOG = "model_management.log"
FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class _Exclude(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.name.startswith(self.prefixes)


class SafeRotatingFileHandler(logging.handlers.RotatingFileHandler):
    """A RotatingFileHandler that opens, renames and deletes its files without following links below the home.

    The file is opened with O_NOFOLLOW through directory descriptors from `home`;
    rotation moves the files by descriptors too, so a log file or a `logs/` folder
    swapped for a link is refused (the record is dropped) and its target left as it is.
    """

    def __init__(self, home: Path, filename: Path, **kw: object) -> None:
        self.home = home
        self._busy = False
        super().__init__(filename, **kw)  # type: ignore[arg-type]

    def emit(self, record: logging.LogRecord) -> None:
        """Write `record`; a record logged while this one is written (safefs logging a refusal) is dropped."""
        if self._busy:  # a refusal logged from inside _open would recurse into this handler forever
            return
        self._busy = True
        try:
            super().emit(record)
        finally:
            self._busy = False

    def _open(self):  # type: ignore[no-untyped-def]
        fd = safefs.open_file(self.home, Path(self.baseFilename), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        return os.fdopen(fd, "a", encoding=self.encoding, errors=self.errors)

    def _move(self, src: Path, dst: Path) -> None:
        try:
            st = safefs.lstat(self.home, src)
        except FileNotFoundError:
            return
        if stat.S_ISREG(st.st_mode):
            safefs.replace(self.home, src, dst)

    def doRollover(self) -> None:
        """Shift `name.N` to `name.N+1` (the oldest dropped) and start a fresh `name`, all by descriptors."""
        if self.stream:
            self.stream.close()
            self.stream = None  # type: ignore[assignment]
        if self.backupCount > 0:
            base = Path(self.baseFilename)
            for i in range(self.backupCount - 1, 0, -1):
                self._move(base.with_name(f"{base.name}.{i}"), base.with_name(f"{base.name}.{i + 1}"))
            self._move(base, base.with_name(f"{base.name}.1"))
        if not self.delay:
            self.stream = self._open()

    def shouldRollover(self, record: logging.LogRecord) -> int:
        """Whether `record` would take the file past maxBytes (no stat by name, unlike the base class)."""
        if self.stream is None:
            self.stream = self._open()
        if self.maxBytes > 0:
            pos = self.stream.tell()
            if pos and pos + len(self.format(record)) + 1 >= self.maxBytes:
                return 1
        return 0


def setup_logging(logs_dir: Path, level: int = logging.INFO, max_bytes: int = 10 * 1024 * 1024, backups: int = 5,
                  stderr_level: int | None = None) -> list[logging.Handler]:
    """Attach rotating file handlers to the `mavail` logger; return them so the caller can detach them.

    With `stderr_level`, every record at that level or above also goes to stderr (a terminal, journald)."""
    home = logs_dir.parent
    # checked by name first: safefs would log its refusal, and before these handlers exist that goes to stderr
    for p in (logs_dir, *(logs_dir / n for n in (*LOG_FILES.values(), MAIN_LOG))):
        if p.is_symlink():
            raise safefs.LinkRefused(f"{p} is a symbolic link; mavail never writes its logs through a link, move it away by hand",
                                     link=str(p))
    safefs.ensure_dir(home, logs_dir)
    root = logging.getLogger("mavail")
    root.setLevel(level)
    fmt = logging.Formatter(FORMAT)
    handlers: list[logging.Handler] = []
    try:
        for prefix, name in LOG_FILES.items():
            h = SafeRotatingFileHandler(home, logs_dir / name, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
            h.addFilter(_RequestIdFilter())
            h.addFilter(logging.Filter(prefix))
            h.setFormatter(fmt)
            handlers.append(h)
        main = SafeRotatingFileHandler(home, logs_dir / MAIN_LOG, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    except BaseException:
        for h in handlers:
            h.close()
        raise
    main.addFilter(_RequestIdFilter())
    main.addFilter(_Exclude(tuple(LOG_FILES)))
    main.setFormatter(fmt)
    handlers.append(main)
    if stderr_level is not None:
        err = logging.StreamHandler(sys.stderr)
        err.setLevel(stderr_level)
        err.addFilter(_RequestIdFilter())
        err.setFormatter(fmt)
        handlers.append(err)
        root.setLevel(min(level, stderr_level))
    for h in handlers:
        root.addHandler(h)
    return handlers


def teardown_logging(handlers: list[logging.Handler]) -> None:
    """Detach and close handlers from `setup_logging`."""
    root = logging.getLogger("mavail")
    for h in handlers:
        root.removeHandler(h)
        h.close()
