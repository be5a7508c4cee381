"""One exception hierarchy for the engine, each class carrying its contract error code."""

from __future__ import annotations

from typing import Any


class MavailError(Exception):
    """Base of every error the engine reports to a client.

    `CODE` is the JSON-RPC error code and `NAME` the contract's `data.code`;
    `details` is a JSON-safe dict naming the field, figures or ids involved.
    The message is written for a person and is sent to the client as is.
    """

    CODE = -32603
    NAME = "INTERNAL_ERROR"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidParams(MavailError):
    """A parameter has the wrong name, type or value; `details.field` names it."""

    CODE = -32602
    NAME = "INVALID_PARAMS"


class ModelNotFound(MavailError):
    """The model id is not in the catalog."""

    CODE = -32001
    NAME = "MODEL_NOT_FOUND"


class Conflict(MavailError):
    """The action collides with work in progress (a running download, a lease)."""

    CODE = -32002
    NAME = "CONFLICT"


class Unauthorized(MavailError):
    """The peer is not allowed, or has not presented the token."""

    CODE = -32003
    NAME = "UNAUTHORIZED"


class RateLimited(MavailError):
    """Too many calls on one connection; `details.retry_after_s` says when to retry."""

    CODE = -32004
    NAME = "RATE_LIMITED"


class InsufficientStorage(MavailError):
    """The disk (or the storage ceiling) cannot hold the job; details carry the figures."""

    CODE = -32005
    NAME = "INSUFFICIENT_STORAGE"


class InvalidState(MavailError):
    """The object is not in a state that allows the action (resume a completed download)."""

    CODE = -32006
    NAME = "INVALID_STATE"


class IntegrityError(MavailError):
    """Data does not match its recorded sha256."""

    CODE = -32007
    NAME = "INTEGRITY_ERROR"


class SourceUnavailable(MavailError):
    """Every URL of a file failed."""

    CODE = -32008
    NAME = "SOURCE_UNAVAILABLE"


class NotFound(MavailError):
    """An unknown download, queue, check or lease id."""

    CODE = -32009
    NAME = "NOT_FOUND"


class ConfigError(InvalidParams):
    """A configuration value is invalid; `details.field` names the dotted key."""


class CatalogError(MavailError):
    """A catalog file is invalid; the message names the file and the entry or line."""

    CODE = -32602
    NAME = "INVALID_PARAMS"
