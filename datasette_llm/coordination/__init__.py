"""Limits, cool-downs and budgets shared by the processes serving one Datasette."""

from .backend import coordinator_for
from .coordinator import (
    Claim,
    CoolDown,
    CoordinationStatus,
    Coordinator,
    Hold,
    Refused,
    Release,
)
from .local import LocalCoordinator
from .shared import INSTALL, RedisCoordinator, RedisMissing

__all__ = [
    "INSTALL",
    "Claim",
    "CoolDown",
    "CoordinationStatus",
    "Coordinator",
    "Hold",
    "LocalCoordinator",
    "RedisCoordinator",
    "RedisMissing",
    "Refused",
    "Release",
    "coordinator_for",
]
