"""``Requirements``: what a call needs of a model (tools, schema, attachments, streaming).

A purpose declares them (``Purpose(requires=...)``) and a call may add its own
(``model(requires=...)``); the policy then never routes, lists or falls back to a model that
lacks one, and says which.
"""

from __future__ import annotations

from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from llm import AsyncModel

__all__ = ["NOTHING_REQUIRED", "Requirements", "combined"]


@dataclass(frozen=True, slots=True)
class Requirements:
    """What a model must support to serve a call.

    Attributes:
        tools: The model must support tool calls (llm's ``supports_tools``).
        schema: The model must support a JSON schema for its output (``supports_schema``).
        streaming: The model must stream its output (``can_stream``).
        attachment_types: MIME types the model must accept as attachments (``attachment_types``);
            ``"image/*"`` is met by any one ``image/`` type. Any set is kept as a frozenset.
    """

    tools: bool = False
    schema: bool = False
    streaming: bool = False
    attachment_types: AbstractSet[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        for name in ("tools", "schema", "streaming"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise TypeError(
                    f"Requirements.{name} must be True or False, got {type(value).__name__}: "
                    f"{value!r}"
                )
        given: object = self.attachment_types
        if isinstance(given, str) or not isinstance(given, Iterable):
            raise TypeError(
                "Requirements.attachment_types must be a collection of MIME types such as "
                f"{{'image/png'}}, got {type(given).__name__}: {given!r}"
            )
        types = frozenset(given)
        for mime in types:
            if not isinstance(mime, str) or "/" not in mime:
                raise ValueError(
                    f"Requirements.attachment_types holds {mime!r}, which is not a MIME type: "
                    "write it as type/subtype, such as 'image/png' or 'image/*'."
                )
        object.__setattr__(self, "attachment_types", types)

    def __bool__(self) -> bool:
        return self.tools or self.schema or self.streaming or bool(self.attachment_types)

    def __str__(self) -> str:
        return ", ".join(self.names()) or "nothing"

    def names(self) -> list[str]:
        """The requirements, each as a short phrase, for pages and messages."""
        phrases = [name for name in ("tools", "schema", "streaming") if getattr(self, name)]
        phrases.extend(f"attachments of type {mime}" for mime in sorted(self.attachment_types))
        return phrases

    def missing(self, model: AsyncModel) -> list[str]:
        """Return what ``model`` lacks of these requirements (empty when it meets them all)."""
        lacking: list[str] = []
        if self.tools and not getattr(model, "supports_tools", False):
            lacking.append("tools")
        if self.schema and not getattr(model, "supports_schema", False):
            lacking.append("schema")
        if self.streaming and not getattr(model, "can_stream", False):
            lacking.append("streaming")
        accepted = frozenset(getattr(model, "attachment_types", None) or ())
        for mime in sorted(self.attachment_types):
            if mime.endswith("/*"):
                prefix = mime[:-1]
                if not any(kind.startswith(prefix) for kind in accepted):
                    lacking.append(f"attachments of type {mime}")
            elif mime not in accepted:
                lacking.append(f"attachments of type {mime}")
        return lacking


NOTHING_REQUIRED: Final = Requirements()
"""No requirement: any model may serve."""


def combined(*requirements: Requirements | None) -> Requirements:
    """Return one ``Requirements`` asking for everything any of ``requirements`` asks for."""
    given = [item for item in requirements if item]
    if not given:
        return NOTHING_REQUIRED
    if len(given) == 1:
        return given[0]
    return Requirements(
        tools=any(item.tools for item in given),
        schema=any(item.schema for item in given),
        streaming=any(item.streaming for item in given),
        attachment_types=frozenset().union(*(item.attachment_types for item in given)),
    )
