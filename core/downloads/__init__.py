"""The download engine: queue and scheduler (`manager`), HTTP transfers (`transfer`), limits, partial files, Hub sources."""

from mavail.core.downloads.manager import PRIORITIES, PRIORITY_INPUT, DownloadManager
from mavail.core.downloads.transfer import FileJob, fetch_range

__all__ = ["DownloadManager", "FileJob", "PRIORITIES", "PRIORITY_INPUT", "fetch_range"]
