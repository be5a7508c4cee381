"""One exception hierarchy for the engine's domain errors; `mavail.rpc.errors` maps them to the wire."""

from __future__ import annotations

from typing import Any


class MavailError(Exception):
    """Base of every error the engine reports to a client.

    `NAME` says what kind of failure it is, in the words records use for it
    (a failed download's `error_code`); `details` is a JSON-safe dict naming
    the field, figures or ids involved. The message is written for a person
    and is sent to the client as is.
    """

    NAME = "INTERNAL_ERROR"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidParams(MavailError):
    """A parameter has the wrong name, type or value; `details.field` names it."""

    NAME = "INVALID_PARAMS"


class ModelNotFound(MavailError):
    """The model id is not in the catalog."""

    NAME = "MODEL_NOT_FOUND"


class Conflict(MavailError):
    """The action collides with work in progress (a running download, a lease)."""

    NAME = "CONFLICT"


class InsufficientStorage(MavailError):
    """The disk (or the storage ceiling) cannot hold the job; details carry the figures."""

    NAME = "INSUFFICIENT_STORAGE"


class InvalidState(MavailError):
    """The object is not in a state that allows the action (resume a completed download)."""

    NAME = "INVALID_STATE"


class IntegrityError(MavailError):
    """Data does not match its recorded sha256."""

    NAME = "INTEGRITY_ERROR"


class SourceUnavailable(MavailError):
    """Every URL of a file failed."""

    NAME = "SOURCE_UNAVAILABLE"


class HubRefused(SourceUnavailable):
    """The Hugging Face Hub refused a repository, revision or file; `details.hub_error` is its X-Error-Code
    (GatedRepo, RepoNotFound, RevisionNotFound, EntryNotFound, InvalidToken) and the message says what to do."""


class NotFound(MavailError):
    """An unknown download, queue, check or lease id."""

    NAME = "NOT_FOUND"


class ConfigError(InvalidParams):
    """A configuration value is invalid; `details.field` names the dotted key."""


class CatalogError(MavailError):
    """A catalog file is invalid; the message names the file and the entry or line."""

    NAME = "INVALID_PARAMS"
