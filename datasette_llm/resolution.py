"""``Resolution``: which model serves a call, which step of routing chose it, and why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from .keys import KeyStatus

__all__ = ["Resolution", "ResolutionStep"]

ResolutionStep: TypeAlias = Literal[
    "explicit", "hook", "purpose_config", "purpose_default", "default_model", "fallback"
]
"""Which step of routing chose a model (see ``Resolution.step``)."""


@dataclass(frozen=True, slots=True)
class Resolution:
    """The outcome of routing one call. It never holds an API key.

    Attributes:
        model_id: The model that serves the call.
        purpose: The purpose name, or ``None``.
        step: Which step chose the model: ``"explicit"`` (a ``model_id`` was passed),
            ``"hook"`` (an ``llm_default_model`` implementation), ``"purpose_config"``
            (``purposes.<name>.model``), ``"purpose_default"`` (``Purpose.default_model``) or
            ``"default_model"`` (the configured global default); ``"fallback"`` for a model a
            prompt fell back to.
        key: Where the model's API key comes from (a secret name at most, never the key).
        chosen_by: For ``"hook"``, the plugin whose hook chose the model.
        skipped: Candidates that were considered and refused, each with the reason.
        fallbacks: The models a prompt falls back to, in order, when this one fails (each is
            checked against the policy again before it is tried).
    """

    model_id: str
    purpose: str | None
    step: ResolutionStep
    key: KeyStatus
    chosen_by: str | None = None
    skipped: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()
