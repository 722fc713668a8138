"""The deterministic reply given when nothing is scripted, valid JSON for a schema prompt."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Final

from ._records import ModelCall

__all__ = ["default_text", "example_for_schema"]

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
