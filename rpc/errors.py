"""The one place where errors become the wire's: JSON-RPC codes and the contract's names.

Domain errors (`mavail.core.errors`) say what went wrong; this table says how
each is told to a client. The protocol's own refusals (a peer or call without
the token, a call over the rate limit) are errors of the wire layer and live
here too.
"""

from __future__ import annotations

from mavail.core import errors as domain

WIRE: dict[type[domain.MavailError], tuple[int, str]] = {
    domain.InvalidParams: (-32602, "INVALID_PARAMS"),
    domain.CatalogError: (-32602, "INVALID_PARAMS"),
    domain.ModelNotFound: (-32001, "MODEL_NOT_FOUND"),
    domain.Conflict: (-32002, "CONFLICT"),
    domain.InsufficientStorage: (-32005, "INSUFFICIENT_STORAGE"),
    domain.InvalidState: (-32006, "INVALID_STATE"),
    domain.IntegrityError: (-32007, "INTEGRITY_ERROR"),
    domain.SourceUnavailable: (-32008, "SOURCE_UNAVAILABLE"),
    domain.HubRefused: (-32008, "SOURCE_UNAVAILABLE"),  # details.hub_error says which refusal
    domain.NotFound: (-32009, "NOT_FOUND"),
}
"""Domain error class -> (JSON-RPC code, contract name); a subclass takes its nearest listed ancestor's."""

INTERNAL = (-32603, "INTERNAL_ERROR")
PROTOCOL_NAMES = {-32700: "PARSE_ERROR", -32600: "INVALID_REQUEST", -32601: "METHOD_NOT_FOUND", -32602: "INVALID_PARAMS",
                  -32603: "INTERNAL_ERROR"}
"""The contract's names of JSON-RPC's own codes."""


class Unauthorized(domain.MavailError):
    """The peer is not allowed, or has not presented the token."""

    NAME = "UNAUTHORIZED"


class RateLimited(domain.MavailError):
    """Too many calls on one connection; `details.retry_after_s` says when to retry."""

    NAME = "RATE_LIMITED"


WIRE[Unauthorized] = (-32003, "UNAUTHORIZED")
WIRE[RateLimited] = (-32004, "RATE_LIMITED")


def wire_code(exc: domain.MavailError) -> tuple[int, str]:
    """(code, name) of an error on the wire: its class's entry, else its nearest ancestor's, else INTERNAL_ERROR."""
    for cls in type(exc).__mro__:
        found = WIRE.get(cls)  # type: ignore[arg-type]
        if found is not None:
            return found
    return INTERNAL
