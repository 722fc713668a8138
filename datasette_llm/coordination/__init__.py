"""Limits, cool-downs and budgets shared by the processes serving one Datasette, and the
notices of routing overrides they send each other."""

from .backend import (
    OVERRIDES_CHANNEL,
    OVERRIDES_VERSION,
    announce_override,
    close_coordination,
    coordinator_for,
    overrides_current,
    watch_overrides,
)
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
from .shared import INSTALL, PING_SECONDS, Heard, RedisCoordinator, RedisMissing, problem_of

__all__ = [
    "INSTALL",
    "OVERRIDES_CHANNEL",
    "OVERRIDES_VERSION",
    "PING_SECONDS",
    "Claim",
    "CoolDown",
    "CoordinationStatus",
    "Coordinator",
    "Heard",
    "Hold",
    "LocalCoordinator",
    "RedisCoordinator",
    "RedisMissing",
    "Refused",
    "Release",
    "announce_override",
    "close_coordination",
    "coordinator_for",
    "overrides_current",
    "problem_of",
    "watch_overrides",
]
