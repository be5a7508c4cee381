"""Fallback: scoring of alternative models, strategy choice, the persistent request queue, models.request."""
