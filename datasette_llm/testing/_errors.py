"""The errors the fake model router raises inside the code under test."""

from __future__ import annotations

__all__ = ["RealModelRequestError", "RouterStoppedError", "UnmatchedPromptError"]


class UnmatchedPromptError(AssertionError):
    """A prompt reached the fake model router and no scripted reply matches it."""

    __module__ = "datasette_llm.testing"


class RealModelRequestError(AssertionError):
    """A prompt or embedding tried to reach a real model while a ``FakeModelRouter`` was active."""

    __module__ = "datasette_llm.testing"


class RouterStoppedError(AssertionError):
    """A fake model was prompted after the ``FakeModelRouter`` that made it had stopped."""

    __module__ = "datasette_llm.testing"
