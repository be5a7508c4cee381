"""Where mavail keeps things: the home directory, the socket, and safe joins inside the home."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import platformdirs

APP_NAME = "mavail"
REPAIR_DIR = ".repair"
"""The folder under partial/ of repair journals; a model id never starts with a dot, so none can take it."""
REDOWNLOAD_DIR = ".redownload"
"""The folder under partial/ of whole-file redownloads."""
ENGINE_PARTIAL_DIRS = frozenset({REPAIR_DIR, REDOWNLOAD_DIR})
"""The engine's own folders under partial/: repair data, never a download's."""


def resolve_home(cli_home: str | os.PathLike[str] | None = None) -> Path:
    """Return the home directory: `--home` > `MAVAIL_HOME` > the platform's user data dir."""
    if cli_home:
        return Path(cli_home).expanduser().absolute()
    env = os.environ.get("MAVAIL_HOME")
    if env:
        return Path(env).expanduser().absolute()
    return Path(platformdirs.user_data_dir(APP_NAME)).absolute()


def resolve_socket(home: Path, cli_socket: str | os.PathLike[str] | None = None) -> Path:
    """Return the socket path: `--socket` > `MAVAIL_SOCKET` > `$XDG_RUNTIME_DIR/mavail/engine.sock` > `<home>/engine.sock`."""
    if cli_socket:
        return Path(cli_socket).expanduser().absolute()
    env = os.environ.get("MAVAIL_SOCKET")
    if env:
        return Path(env).expanduser().absolute()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / APP_NAME / "engine.sock"
    return home / "engine.sock"


def is_safe_relative(path: str) -> bool:
    """True when `path` is a plain relative POSIX path that cannot leave its base directory."""
    if not path or "\\" in path or "\x00" in path or path.startswith("/"):
        return False
    # split by hand: PurePosixPath would quietly normalise "a//b", "./a" and "a/"
    parts = path.split("/")
    return all(p not in ("", ".", "..") for p in parts)


def safe_join(base: Path, relative: str) -> Path:
    """Join a catalog-relative path under `base`, refusing anything that could escape it."""
    if not is_safe_relative(relative):
        raise ValueError(f"unsafe relative path: {relative!r}")
    return base.joinpath(*PurePosixPath(relative).parts)


@dataclass(frozen=True)
class HomeLayout:
    """The fixed layout of files and folders inside a home directory."""

    home: Path

    @property
    def config_file(self) -> Path:
        """`config.toml`: the engine's settings."""
        return self.home / "config.toml"

    @property
    def catalog_file(self) -> Path:
        """`catalog.toml`: the main catalog."""
        return self.home / "catalog.toml"

    @property
    def catalog_dir(self) -> Path:
        """`catalog.d/`: further catalog files, read in name order."""
        return self.home / "catalog.d"

    @property
    def models_dir(self) -> Path:
        """`models/`: installed files as `<model_id>/<version>/<file path>`."""
        return self.home / "models"

    @property
    def partial_dir(self) -> Path:
        """`partial/`: data of downloads in progress, never in the final place."""
        return self.home / "partial"

    @property
    def trash_dir(self) -> Path:
        """`trash/`: models moved aside before they are deleted."""
        return self.home / "trash"

    @property
    def state_db(self) -> Path:
        """`state.db`: the SQLite database."""
        return self.home / "state.db"

    @property
    def logs_dir(self) -> Path:
        """`logs/`: the rotated log files."""
        return self.home / "logs"

    def model_dir(self, model_id: str, version: str) -> Path:
        """The directory of one installed version of a model."""
        return self.models_dir / model_id / version

    def ensure(self) -> None:
        """Create the home and its folders (mode 0700 for the home) if missing."""
        self.home.mkdir(parents=True, exist_ok=True, mode=0o700)
        for d in (self.models_dir, self.partial_dir, self.trash_dir, self.catalog_dir):
            d.mkdir(parents=True, exist_ok=True)
        if not self.logs_dir.is_symlink():  # a link is left for `setup_logging` to refuse by name
            self.logs_dir.mkdir(exist_ok=True)

    def unusable_reason(self) -> str | None:
        """Why an engine must not start on this home (one line), or None.

        The database files are opened by SQLite, which follows links, so a link at
        any of them is refused. Downloads rename `partial/` into `models/` and
        removals rename `models/` into `trash/`: those need one filesystem.
        """
        for name in ("state.db", "state.db-wal", "state.db-shm"):
            if (self.home / name).is_symlink():
                return (f"{self.home / name} is a symbolic link; mavail never opens its database through a link, "
                        "move it away by hand")
        devs = {}
        for d in (self.models_dir, self.partial_dir, self.trash_dir):
            try:
                devs[d.name] = os.stat(d).st_dev
            except OSError as exc:
                return f"{d} cannot be used: {exc.strerror}"
        if len(set(devs.values())) > 1:
            return (f"models/, partial/ and trash/ under {self.home} must be on one filesystem (downloads and removals "
                    "rename between them); link the home itself, or all three, to the other disk")
        return None
