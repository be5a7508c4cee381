"""The ranges numbers must fall in where they enter the engine (catalog, Hub listings, RPC params).

A number outside them is refused at the edge with a message naming it, instead of
overflowing a timestamp, a file offset or the JSON encoder deep inside.
"""

from __future__ import annotations

MAX_FILE_BYTES = 2**63 - 1
"""The largest file size: what a signed 64-bit file offset can address."""
MAX_VRAM_GB = 100_000.0
"""The largest VRAM estimate in GiB, far above any single machine."""
MAX_WAIT_MINUTES = 525_600.0
"""The longest a queued request may wait: one year."""
MAX_RATE_MBPS = 1_000_000.0
"""The largest rate in MiB/s (about 1 TB/s)."""
MAX_DURATION_S = 31_536_000.0
"""The longest duration in seconds a figure may report: one year."""
MAX_DAYS = 36_500.0
"""The longest period in days: a century."""
MAX_GB = 1e9
"""The largest size in GiB (an exabyte)."""
MAX_SAFE_INT = 2**53 - 1
"""The largest integer a setting may take where it has no maximum of its own: exact in a JSON double."""
MAX_SETTING_FLOAT = 1e15
"""The largest number a float setting may take where it has no maximum of its own."""
MAX_UID = 2**32 - 1
"""The largest user id."""
