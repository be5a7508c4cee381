"""Words a person reads: plurals, engine sentences made readable, and advice in terms of the TUI's keys.

The engine speaks to every client (the CLI, scripts) and names its methods
and byte counts; the TUI tells a person which key to press and shows sizes.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from mavail.tui import format as fmt

_BYTES = re.compile(r"\b(\d{4,}) bytes\b")
_MAYBE_PLURAL = re.compile(r"\b(\d+) (\w+)\(s\)")

ISSUE_LABEL = {
    "missing": "file missing", "truncated": "truncated", "extended": "too long", "changed_bytes": "broken bytes",
    "unreadable": "unreadable", "symlink": "symlink", "not_regular_file": "not a file",
    "changed_since_verified": "changed", "changed_during_check": "changed", "extra_file": "extra file",
    "never_verified": "unverified", "performance_degraded": "slow",
}
"""A short label per issue type, for a narrow Issues column."""


def plural(n: int | float, word: str, many: str | None = None) -> str:
    """`1 day`, `0 days`, `3 models` (irregular plurals through `many`)."""
    count = int(n) if float(n).is_integer() else n
    return f"{count} {word if count == 1 else (many or word + 's')}"


def readable(text: str) -> str:
    """An engine sentence with raw byte counts as sizes and `piece(s)` resolved to singular or plural."""
    text = _BYTES.sub(lambda m: fmt.size(int(m.group(1))), text)
    return _MAYBE_PLURAL.sub(lambda m: plural(int(m.group(1)), m.group(2)), text)


def issue_label(issue: Any) -> str:
    """A few words for the Issues column: `broken pieces`, `file missing`."""
    if not isinstance(issue, dict):
        return str(issue)
    details = issue.get("details") or {}
    if issue.get("type") == "changed_bytes" and details.get("broken_pieces"):
        n = len(details["broken_pieces"])
        return "1 broken piece" if n == 1 else f"{n} broken pieces"
    return ISSUE_LABEL.get(str(issue.get("type")), str(issue.get("type") or "issue").replace("_", " "))


def issue_sentence(issue: Any) -> str:
    """What an issue means, with sizes instead of byte counts."""
    if not isinstance(issue, dict):
        return readable(str(issue))
    details = issue.get("details") or {}
    pieces = details.get("broken_pieces")
    if issue.get("type") == "changed_bytes" and pieces and details.get("piece_size"):
        n = len(pieces)
        verb = "does" if n == 1 else "do"
        return (f"{issue.get('file') or 'a file'}: {plural(n, 'piece')} of {fmt.size(details['piece_size'])} {verb} not match "
                f"({fmt.size(details.get('broken_bytes'))} to fetch again)")
    return readable(str(issue.get("message") or issue.get("description") or issue.get("type") or issue))


ADVICE = {
    "integrity_fix": "press {repair} to repair the broken {pieces} of {file}",
    "redownload": "press {repair} to download {file} again",
    "fix_permissions": "press {repair} to give the owner read access to {file} again",
    "full_check": "press {check} to run a full check of {file}",
    "review": "review {file}: mavail never deletes files it does not know",
    "performance": "check GPU load, drivers and temperature; press {update} if an update is offered",
}


def advice(issues: list[Any], keys: Mapping[str, str]) -> list[str]:
    """One line of advice per distinct recommended action, in terms of keys (`keys`: binding id -> key shown)."""
    out: list[str] = []
    names = {"repair": keys.get("mavail.repair", "R"), "check": keys.get("mavail.check", "h"),
             "update": keys.get("mavail.update", "u")}
    for i in issues:
        if not isinstance(i, dict):
            continue
        template = ADVICE.get(str(i.get("recommendation")))
        if template is None:
            continue
        n = len((i.get("details") or {}).get("broken_pieces") or [])
        line = template.format(file=i.get("file") or "the model", pieces="piece" if n == 1 else "pieces", **names)
        if line not in out:
            out.append(line)
    return out
