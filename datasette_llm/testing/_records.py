"""``ModelCall``: one prompt the fake model answered, as an immutable value; and default replies.

When nothing is scripted, the fake model gives a deterministic reply: valid JSON for a schema
prompt.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast

if TYPE_CHECKING:
    import llm

    from datasette_llm import ErrorKind, ResolutionStep

__all__ = [
    "ModelCall",
    "ToolResultRecord",
    "build_call",
    "count_words",
    "default_text",
    "example_for_schema",
]


# Records.


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


# Default replies.

_STRING_FORMATS: Final[Mapping[str, str]] = {
    "date": "2024-01-01",
    "date-time": "2024-01-01T00:00:00Z",
    "time": "00:00:00",
    "email": "user@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "uuid": "00000000-0000-0000-0000-000000000000",
    "ipv4": "127.0.0.1",
    "hostname": "example.com",
}
_MAX_DEPTH: Final = 8


def default_text(call: ModelCall) -> str:
    """Return the default reply for ``call``: JSON for a schema, else a line naming the model."""
    if call.schema is not None:
        return json.dumps(example_for_schema(call.schema))
    if call.tool_results and not call.prompt:
        results = ", ".join(f"{result.name}={result.output}" for result in call.tool_results)
        return f"Fake reply from {call.model_id} to tool results: {results}"
    return f"Fake reply from {call.model_id} to: {call.prompt}"


def example_for_schema(schema: Mapping[str, object]) -> object:
    """Return a value valid against the JSON ``schema``: every property set, lists of one."""
    return _example(schema, schema, 0)


def _resolve(schema: Mapping[str, object], root: Mapping[str, object]) -> Mapping[str, object]:
    seen = 0
    while isinstance(schema.get("$ref"), str) and seen < _MAX_DEPTH:
        ref = str(schema["$ref"])
        target: object = root
        for part in ref.removeprefix("#/").split("/") if ref != "#" else []:
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        schema = target if isinstance(target, Mapping) else {}
        seen += 1
    return schema


def _example(schema: Mapping[str, object], root: Mapping[str, object], depth: int) -> object:
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    if "default" in schema:
        return schema["default"]
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            chosen = next(
                (o for o in options if isinstance(o, Mapping) and o.get("type") != "null"),
                options[0],
            )
            return _example(chosen if isinstance(chosen, Mapping) else {}, root, depth)
    all_of = schema.get("allOf")
    if isinstance(all_of, list) and all_of:
        merged: dict[str, object] = {}
        properties: dict[str, object] = {}
        for part in all_of:
            if isinstance(part, Mapping):
                part = _resolve(part, root)
                merged.update(part)
                part_properties = part.get("properties")
                if isinstance(part_properties, Mapping):
                    properties.update(part_properties)
        if properties:
            merged["properties"] = properties
        return _example(merged, root, depth)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind is None:
        if "properties" in schema:
            kind = "object"
        elif "items" in schema:
            kind = "array"
        else:
            kind = "string"
    if kind == "object":
        properties_schema = schema.get("properties")
        if not isinstance(properties_schema, Mapping) or depth >= _MAX_DEPTH:
            return {}
        return {
            str(name): _example(sub if isinstance(sub, Mapping) else {}, root, depth + 1)
            for name, sub in properties_schema.items()
        }
    if kind == "array":
        items = schema.get("items")
        count = _int(schema.get("minItems"), 1) if depth < _MAX_DEPTH else 0
        count = max(count, 1) if depth < _MAX_DEPTH else count
        maximum = schema.get("maxItems")
        if isinstance(maximum, int):
            count = min(count, maximum)
        item_schema = items if isinstance(items, Mapping) else {}
        return [_example(item_schema, root, depth + 1) for _ in range(count)]
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string(schema)


def _int(value: object, fallback: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else fallback


def _number(schema: Mapping[str, object], integer: bool) -> int | float:
    value: int | float = 0
    minimum = schema.get("minimum")
    exclusive = schema.get("exclusiveMinimum")
    if isinstance(minimum, int | float) and not isinstance(minimum, bool):
        value = max(value, minimum)
    if isinstance(exclusive, int | float) and not isinstance(exclusive, bool):
        value = max(value, exclusive + 1 if integer else exclusive + 0.5)
    maximum = schema.get("maximum")
    if isinstance(maximum, int | float) and not isinstance(maximum, bool):
        value = min(value, maximum)
    return int(value) if integer else float(value)


def _string(schema: Mapping[str, object]) -> str:
    value = _STRING_FORMATS.get(str(schema.get("format")), "example")
    minimum = _int(schema.get("minLength"), 0)
    if len(value) < minimum:
        value += "x" * (minimum - len(value))
    maximum = schema.get("maxLength")
    if isinstance(maximum, int):
        value = value[:maximum]
    return value
