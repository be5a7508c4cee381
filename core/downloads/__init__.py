"""The download engine: queue and scheduler (`manager`), HTTP transfers (`transfer`), limits, partial files, Hub sources."""

from mavail.core.downloads.manager import PRIORITIES, PRIORITY_INPUT, ActiveDownloads, DownloadManager, Limit, QueuePlace, Started, StatusChange
from mavail.core.downloads.transfer import FileJob, fetch_range

__all__ = ["ActiveDownloads", "DownloadManager", "FileJob", "Limit", "PRIORITIES", "PRIORITY_INPUT", "QueuePlace", "Started", "StatusChange", "fetch_range"]
