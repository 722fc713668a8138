"""Type aliases shared across the package and offered to dependents."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal, TypeAlias

__all__ = ["Actor", "ResolutionStep"]

Actor: TypeAlias = Mapping[str, object]
"""A Datasette actor dictionary, as found on ``request.actor``."""

ResolutionStep: TypeAlias = Literal[
    "explicit", "hook", "purpose_config", "purpose_default", "default_model"
]
"""Which step of resolution chose a model (see ``LLM.resolve``)."""
