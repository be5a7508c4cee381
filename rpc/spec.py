"""Declarations of RPC methods and their parameters, with validation and OpenRPC schemas."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from mavail.core.errors import InvalidParams

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


MAX_SAFE_INTEGER = 2**53 - 1
"""The largest integer parameter accepted: every JSON client represents it exactly."""
MAX_NUMBER = 1e15
"""The largest magnitude of a number parameter without a maximum of its own."""


@dataclass(frozen=True)
class P:
    """One named parameter: JSON type, whether required, default, and allowed values or range."""

    name: str
    type: str
    doc: str
    required: bool = False
    default: Any = None
    enum: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    nullable: bool = False

    def check(self, value: Any) -> Any:
        """Return the value if it is acceptable, else raise InvalidParams naming this parameter."""
        if value is None and self.nullable:
            return None
        ok = isinstance(value, _JSON_TYPES[self.type])
        if ok and self.type in ("integer", "number") and isinstance(value, bool):
            ok = False
        if not ok:
            raise InvalidParams(f"{self.name} must be of type {self.type}", field=self.name, expected=self.type)
        if self.type in ("integer", "number"):
            self._check_magnitude(value)
        if self.enum is not None and value not in self.enum:
            raise InvalidParams(f"{self.name} must be one of: {', '.join(map(str, self.enum))}", field=self.name, allowed=list(self.enum))
        if self.minimum is not None and value < self.minimum:
            raise InvalidParams(f"{self.name} must be at least {self.minimum}", field=self.name, minimum=self.minimum)
        if self.maximum is not None and value > self.maximum:
            raise InvalidParams(f"{self.name} must be at most {self.maximum}", field=self.name, maximum=self.maximum)
        if self.type == "string" and len(value) > 4096:
            raise InvalidParams(f"{self.name} is too long", field=self.name)
        return value

    def _check_magnitude(self, value: int | float) -> None:
        """Numbers outside what the engine can compute with are refused at the edge, not deep inside."""
        limit = MAX_SAFE_INTEGER if self.type == "integer" else MAX_NUMBER
        if isinstance(value, float) and not math.isfinite(value) or abs(value) > limit:
            raise InvalidParams(f"{self.name} is out of range (at most {limit:g} in magnitude)", field=self.name, maximum=limit)

    def schema(self) -> dict[str, Any]:
        """This parameter as an OpenRPC content descriptor."""
        s: dict[str, Any] = {"type": [self.type, "null"] if self.nullable else self.type}
        if self.enum is not None:
            s["enum"] = list(self.enum)
        if self.minimum is not None:
            s["minimum"] = self.minimum
        if self.maximum is not None:
            s["maximum"] = self.maximum
        if not self.required and self.default is not None:
            s["default"] = self.default
        return {"name": self.name, "description": self.doc, "required": self.required, "schema": s}


Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Method:
    """One entry of the method table: name, parameters, handler and a line of documentation."""

    name: str
    handler: Handler
    summary: str
    params: tuple[P, ...] = ()
    needs_auth: bool = True
    inline: bool = False
    """True for methods that answer from memory without waiting on I/O: the server runs
    them in the connection's read loop instead of a task of their own (twice the
    throughput). Anything that may wait (disk, SQLite, network, a worker thread) stays False."""
    _by_name: dict[str, P] = field(default_factory=dict, compare=False, repr=False)
    _defaults: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)  # empty when a param is required

    def __post_init__(self) -> None:
        self._by_name.update({p.name: p for p in self.params})
        if not any(p.required for p in self.params):
            self._defaults.update({p.name: p.default for p in self.params})

    def bind(self, params: Any) -> dict[str, Any]:
        """Validate call params (by name only) and fill in defaults; InvalidParams names the field."""
        if (params is None or params == {}) and (self._defaults or not self.params):
            return dict(self._defaults)  # no params, none required: most calls of the methods answered inline
        if params is None:
            params = {}
        if isinstance(params, list):
            if params:
                raise InvalidParams("params must be given by name (an object)", field="params")
            params = {}
        if not isinstance(params, dict):
            raise InvalidParams("params must be an object", field="params")
        for name in params:
            if name not in self._by_name:
                raise InvalidParams(f"unknown parameter {name!r}", field=name, allowed=list(self._by_name))
        out: dict[str, Any] = {}
        for p in self.params:
            if p.name in params:
                out[p.name] = p.check(params[p.name])
            elif p.required:
                raise InvalidParams(f"missing required parameter {p.name!r}", field=p.name)
            else:
                out[p.name] = p.default
        return out

    def openrpc(self) -> dict[str, Any]:
        """This method as an OpenRPC method object."""
        return {
            "name": self.name,
            "summary": self.summary,
            "paramStructure": "by-name",
            "params": [p.schema() for p in self.params],
            "result": {"name": "result", "schema": {"type": "object"}},
        }
