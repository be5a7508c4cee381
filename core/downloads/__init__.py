"""The download engine: queue and scheduler (`manager`), HTTP transfers (`transfer`), limits, partial files, Hub sources."""

from mavail.core.downloads.manager import ActiveDownloads, DownloadManager, Limit, QueuePlace, Started, StatusChange
from mavail.core.downloads.transfer import FileJob, fetch_range

__all__ = ["ActiveDownloads", "DownloadManager", "FileJob", "Limit", "QueuePlace", "Started", "StatusChange", "fetch_range"]
