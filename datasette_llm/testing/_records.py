"""``ModelCall``: one prompt the fake model answered, recorded as an immutable value."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    import llm

    from datasette_llm import ErrorKind, ResolutionStep

__all__ = ["ModelCall", "ToolResultRecord", "build_call", "count_words"]


@dataclass(frozen=True, slots=True)
class ToolResultRecord:
    """A tool's result sent back to the model in a chain.

    Attributes:
        name: The tool's name.
        output: What the tool returned, as the model sees it.
        tool_call_id: The id of the tool call this answers.
    """

    name: str
    output: str
    tool_call_id: str | None


@dataclass(frozen=True, slots=True)
class ModelCall:
    """One request the fake model answered or failed (a chain makes one per step).

    Each attempt of a prompt is a request: a prompt that failed on its model and was answered
    by a fallback is two calls, in order. Values are copied when recorded, so later changes by
    the code under test do not show.

    Attributes:
        purpose: The purpose name, or ``None`` (no purpose, or the llm model was used directly).
        model_id: The id of the model routing chose.
        step: The resolution step that chose it (``"explicit"``, ``"hook"``,
            ``"purpose_config"``, ``"purpose_default"``, ``"default_model"``, ``"fallback"`` for
            a fallback's attempt), or ``None`` when the llm model was prompted directly rather
            than through datasette-llm.
        prompt: The prompt text (``""`` for a chain step that only carries tool results).
        system: The system prompt, or ``None``.
        options: The model options that were set, by name.
        schema: The JSON schema asked for, or ``None``.
        tools: The names of the tools offered to the model.
        tool_results: Tool results sent back to the model (later steps of a chain).
        attachments: The content type of each attachment.
        actor: The actor the prompt was made for, or ``None``.
        group: ``1`` for a prompt in the first ``group()`` block this router saw, ``2`` for the
            next, and so on; ``None`` outside a group.
        streamed: Whether llm asked the model to stream (``False`` when called with
            ``stream=False``).
        attempt: The attempt of its prompt this call belongs to, as ``Attempt.number`` counts
            them: ``1`` for the first model tried, ``2`` for the retry or fallback after it, and
            so on (``PromptResult.attempts[attempt - 1]`` is its ``Attempt`` once it ended);
            every step of a chain belongs to the chain's attempt. ``None`` when the llm model
            was prompted directly.
        error: How the call ended: ``None`` when the fake model answered, else the kind of the
            failure it raised (a scripted exception, as datasette-llm classifies it).
    """

    purpose: str | None
    model_id: str
    step: ResolutionStep | None
    prompt: str
    system: str | None
    options: dict[str, object]
    schema: dict[str, object] | None
    tools: tuple[str, ...]
    tool_results: tuple[ToolResultRecord, ...]
    attachments: tuple[str, ...]
    actor: dict[str, object] | None
    group: int | None
    streamed: bool
    attempt: int | None = None
    error: ErrorKind | None = None


def build_call(
    prompt: llm.Prompt,
    *,
    model_id: str,
    stream: bool,
    purpose: str | None,
    step: ResolutionStep | None,
    actor: dict[str, object] | None,
    group: int | None,
    attempt: int | None,
) -> ModelCall:
    """Record what llm is about to send for ``prompt``."""
    options = {
        name: copy.deepcopy(value)
        for name, value in prompt.options.model_dump().items()
        if value is not None
    }
    schema = prompt.schema
    schema_copy: dict[str, object] | None = None
    if isinstance(schema, dict):
        schema_copy = copy.deepcopy(schema)
    elif schema is not None:
        schema_copy = schema.model_json_schema()
    return ModelCall(
        purpose=purpose,
        model_id=model_id,
        step=step,
        prompt=prompt.prompt or "",
        system=prompt.system or None,
        options=options,
        schema=schema_copy,
        tools=tuple(tool.name for tool in prompt.tools),
        tool_results=tuple(
            ToolResultRecord(result.name, result.output, result.tool_call_id)
            for result in prompt.tool_results
        ),
        attachments=tuple(_content_type(attachment) for attachment in prompt.attachments),
        actor=copy.deepcopy(actor),
        group=group,
        streamed=stream,
        attempt=attempt,
    )


def count_words(call: ModelCall) -> int:
    """Count the words the model was sent: prompt, system prompt and tool results."""
    parts = [call.prompt, call.system or "", *(result.output for result in call.tool_results)]
    return sum(len(part.split()) for part in parts)


def _content_type(attachment: llm.Attachment) -> str:
    # llm's Attachment.resolve_type is not annotated.
    resolve_type = cast("Callable[[], str | None]", attachment.resolve_type)
    return resolve_type() or "unknown"
