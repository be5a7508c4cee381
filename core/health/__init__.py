"""Model health: integrity checks piece by piece, repair, scheduled maintenance, updates with rollback."""

from core.health.service import HealthService

__all__ = ["HealthService"]
