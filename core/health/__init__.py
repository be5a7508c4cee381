"""Model health: integrity checks piece by piece, repair, scheduled maintenance, updates with rollback."""

from mavail.core.health.checks import HealthChecks
from mavail.core.health.service import HealthService
from mavail.core.health.updates import UpdateManager

__all__ = ["HealthChecks", "HealthService", "UpdateManager"]
