"""Log files in `<home>/logs/`, rotated, each line carrying the request id where there is one."""

from __future__ import annotations

import contextvars
import logging
import logging.handlers
from pathlib import Path

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


def setup_logging(logs_dir: Path, level: int = logging.INFO, max_bytes: int = 10 * 1024 * 1024, backups: int = 5) -> list[logging.Handler]:
    """Attach rotating file handlers to the `mavail` logger; return them so the caller can detach them."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger("mavail")
    root.setLevel(level)
    fmt = logging.Formatter(FORMAT)
    handlers: list[logging.Handler] = []
    for prefix, name in LOG_FILES.items():
        h = logging.handlers.RotatingFileHandler(logs_dir / name, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
        h.addFilter(_RequestIdFilter())
        h.addFilter(logging.Filter(prefix))
        h.setFormatter(fmt)
        handlers.append(h)
    main = logging.handlers.RotatingFileHandler(logs_dir / MAIN_LOG, maxBytes=max_bytes, backupCount=backups, encoding="utf-8")
    main.addFilter(_RequestIdFilter())
    main.addFilter(_Exclude(tuple(LOG_FILES)))
    main.setFormatter(fmt)
    handlers.append(main)
    for h in handlers:
        root.addHandler(h)
    return handlers


def teardown_logging(handlers: list[logging.Handler]) -> None:
    """Detach and close handlers from `setup_logging`."""
    root = logging.getLogger("mavail")
    for h in handlers:
        root.removeHandler(h)
        h.close()
