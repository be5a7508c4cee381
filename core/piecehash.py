"""The hash of pieces: what finds and locates rot inside a file, cheaply.

The whole-file sha256 is what the catalog and the Hub give, and nothing is
installed without it. Piece hashes exist to find which piece of an installed
file no longer matches and to repair just that piece; they need no
cryptographic strength against the file's own source, only to catch damage, so
they use XXH3-128, measured at 11.5 GB/s here against sha256's 1.6 GB/s
(python-xxhash, 1 MiB updates, one core). Pieces recorded before it are
sha256; `PIECE_ALGOS` names both so each recorded piece is checked with the
algorithm it was recorded with.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import xxhash

PIECE_ALGO = "xxh3_128"
"""The algorithm of every piece hash recorded now."""

PIECE_ALGOS: dict[str, Callable[[], Any]] = {
    "xxh3_128": xxhash.xxh3_128,
    "sha256": hashlib.sha256,
}
"""Algorithm name -> a constructor of an incremental hasher (`update`, `hexdigest`)."""


def new_piece_hasher(algo: str = PIECE_ALGO) -> Any:
    """An incremental hasher for one piece (KeyError for an unknown algorithm)."""
    return PIECE_ALGOS[algo]()


def piece_digest(data: bytes | bytearray | memoryview, algo: str = PIECE_ALGO) -> str:
    """The hex digest of one whole piece."""
    h = PIECE_ALGOS[algo]()
    h.update(data)
    return h.hexdigest()


DIGEST_HEX_LEN: dict[str, int] = {"xxh3_128": 32, "sha256": 64}
"""Algorithm name -> the length of its hex digest (distinct for every algorithm)."""


def algo_of(digest: str, declared: str = PIECE_ALGO) -> str:
    """The algorithm of a piece digest: `declared` when its length fits, else the one whose length it has.

    Hex digest lengths differ between algorithms, so a piece hash given without (or with a
    wrong) algorithm name is never recorded under an algorithm that could not have made it.
    """
    if DIGEST_HEX_LEN.get(declared) == len(digest):
        return declared
    for algo, n in DIGEST_HEX_LEN.items():
        if n == len(digest):
            return algo
    return declared
