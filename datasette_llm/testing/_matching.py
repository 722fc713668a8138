"""Which calls a scripted reply answers: purpose, model id and prompt, each optional."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from datasette_llm import Purpose

if TYPE_CHECKING:
    from ._records import ModelCall

__all__ = ["Matcher", "PromptMatch", "build_matcher"]

PromptMatch: TypeAlias = "str | re.Pattern[str] | Callable[[str], bool]"
"""Match the prompt text exactly (``str``), by ``re.search`` (pattern), or by a predicate."""


@dataclass(frozen=True, slots=True)
class Matcher:
    """The conditions a call must meet; ``None`` matches anything.

    Attributes:
        purpose: The purpose name the call must have.
        model_id: The model id routing must have chosen.
        prompt: What the prompt text must match.
    """

    purpose: str | None = None
    model_id: str | None = None
    prompt: PromptMatch | None = None

    def mismatches(self, call: ModelCall) -> list[str]:
        """Return why ``call`` does not match, one reason per condition; empty if it matches."""
        reasons: list[str] = []
        if self.purpose is not None and call.purpose != self.purpose:
            reasons.append(f"purpose is {call.purpose!r}, not {self.purpose!r}")
        if self.model_id is not None and call.model_id != self.model_id:
            reasons.append(f"model_id is {call.model_id!r}, not {self.model_id!r}")
        if self.prompt is not None and not _prompt_matches(self.prompt, call.prompt):
            reasons.append(f"prompt does not match {_describe_prompt(self.prompt)}")
        return reasons

    def describe(self) -> list[str]:
        """Return the set conditions as ``name=value`` strings."""
        parts: list[str] = []
        if self.purpose is not None:
            parts.append(f"purpose={self.purpose!r}")
        if self.model_id is not None:
            parts.append(f"model_id={self.model_id!r}")
        if self.prompt is not None:
            parts.append(f"prompt={_describe_prompt(self.prompt)}")
        return parts


def _prompt_matches(expected: PromptMatch, prompt: str) -> bool:
    if isinstance(expected, str):
        return prompt == expected
    if isinstance(expected, re.Pattern):
        return expected.search(prompt) is not None
    return bool(expected(prompt))


def _describe_prompt(expected: PromptMatch) -> str:
    if isinstance(expected, str | re.Pattern):
        return repr(expected)
    name = getattr(expected, "__qualname__", None) or type(expected).__qualname__
    return f"<callable {name}>"


def build_matcher(
    purpose: str | Purpose | None, model_id: str | None, prompt: PromptMatch | None
) -> Matcher:
    """Check the matcher arguments and build a ``Matcher``, saying how to fix a wrong one."""
    if isinstance(purpose, Purpose):
        purpose = purpose.name
    elif purpose is not None and not isinstance(purpose, str):
        raise TypeError(
            f"purpose= must be a purpose name or a datasette_llm.Purpose, "
            f"got {type(purpose).__name__}: {purpose!r}"
        )
    if model_id is not None and not isinstance(model_id, str):
        raise TypeError(
            f"model_id= must be a model id string such as 'gpt-5.4-nano', "
            f"got {type(model_id).__name__}: {model_id!r}"
        )
    if prompt is not None and not isinstance(prompt, str | re.Pattern) and not callable(prompt):
        raise TypeError(
            f"prompt= must be a string (exact match), a compiled re.Pattern (searched) or a "
            f"callable taking the prompt text, got {type(prompt).__name__}: {prompt!r}"
        )
    return Matcher(purpose=purpose, model_id=model_id, prompt=prompt)
