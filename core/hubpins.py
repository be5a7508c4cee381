"""The `hub_pins` table (its owner): the commit an `hf://` source resolved to for each model version.

A version's download, its resume, its repairs and its health checks all fetch
that commit's files (`/resolve/<commit>/<path>` on the endpoint recorded with
it), whatever the branch does meanwhile; an update check compares the branch's
commit now with the recorded one.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from urllib.parse import quote


def resolve_url(endpoint: str, repo_id: str, commit: str, path: str) -> str:
    """The Hub URL of one file of a repository at one commit."""
    return f"{endpoint}/{repo_id}/resolve/{quote(commit, safe='')}/{quote(path)}"


@dataclass(frozen=True)
class HubPin:
    """One model version's Hub commit: the source as the catalog gave it, the endpoint and the commit sha."""

    model_id: str
    version: str
    source: str
    endpoint: str
    commit: str
    resolved_at: float

    @property
    def repo_id(self) -> str:
        """`ORG/REPO` of the source."""
        return self.source.removeprefix("hf://").split("@", 1)[0]

    def url(self, path: str) -> str:
        """The resolve URL of a file at the pinned commit."""
        return resolve_url(self.endpoint, self.repo_id, self.commit, path)


def read(conn: sqlite3.Connection, model_id: str, version: str) -> HubPin | None:
    """The pin of a model version, or None."""
    r = conn.execute("SELECT model_id, version, source, endpoint, commit_sha, resolved_at FROM hub_pins WHERE model_id = ? AND version = ?",
                     (model_id, version)).fetchone()
    return HubPin(*r) if r else None


def read_many(conn: sqlite3.Connection, model_ids: list[str] | None = None) -> dict[tuple[str, str], HubPin]:
    """Pins by (model_id, version), of the given models (all when None)."""
    sql = "SELECT model_id, version, source, endpoint, commit_sha, resolved_at FROM hub_pins"
    args: tuple[str, ...] = ()
    if model_ids is not None:
        sql += f" WHERE model_id IN ({','.join('?' * len(model_ids))})"
        args = tuple(model_ids)
    return {(r[0], r[1]): HubPin(*r) for r in conn.execute(sql, args)}


def write(conn: sqlite3.Connection, pin: HubPin) -> None:
    """Record (or replace) the pin of a model version."""
    conn.execute("INSERT OR REPLACE INTO hub_pins VALUES (?,?,?,?,?,?)",
                 (pin.model_id, pin.version, pin.source, pin.endpoint, pin.commit, pin.resolved_at))


def forget(conn: sqlite3.Connection, model_id: str, version: str) -> None:
    """Drop the pin of a model version (its files are gone)."""
    conn.execute("DELETE FROM hub_pins WHERE model_id = ? AND version = ?", (model_id, version))
