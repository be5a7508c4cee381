"""Model health: integrity checks piece by piece, repair, scheduled maintenance, updates with rollback."""

from mavail.core.health.service import HealthService

__all__ = ["HealthService"]
