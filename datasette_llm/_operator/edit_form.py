"""The fields of the routing form on ``/-/llm``: text in, a ``RouteOverride`` out, and back.

A field left as datasette.yaml has it sets nothing: only what differs becomes the override.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from ..config import PurposeConfig
from ..config_reader import reference
from ..errors import Substituted, quoted
from ..overrides import RouteOverride

__all__ = [
    "NO_FALLBACKS",
    "FormError",
    "fallbacks_text",
    "options_text",
    "override_from_form",
    "written_values",
]

NO_FALLBACKS: Final = "none"
"""What the fallbacks field holds for "no fallbacks at all" (empty: as datasette.yaml says)."""


class FormError(ValueError):
    """A field of the routing form cannot be read; the message says which and how to fix it."""


def written_values(
    written: PurposeConfig | None,
) -> tuple[str | None, tuple[str, ...] | None, Mapping[str, object]]:
    """Return the purpose's model id, fallbacks and model options as datasette.yaml has them."""
    if written is None:
        return None, None, {}
    model = written.model
    fallbacks = None if written.fallbacks is None else tuple(r.model_id for r in written.fallbacks)
    return (
        None if model is None else str(model.model_id),
        fallbacks,
        {} if model is None else dict(model.options),
    )


def fallbacks_text(fallbacks: tuple[str, ...] | None) -> str:
    """Return the fallbacks field's text: one model id a line, ``none`` for none, else empty."""
    if fallbacks is None:
        return ""
    return "\n".join(fallbacks) if fallbacks else NO_FALLBACKS


def options_text(options: Mapping[str, object]) -> str:
    """Return the options field's text: a JSON object, or empty for no options."""
    if not options:
        return ""
    return json.dumps(_shown(options), sort_keys=True, default=str)


def _shown(options: Mapping[str, object]) -> dict[str, object]:
    """The options as the form shows them: a value from ``$env``/``$file`` by where it is from."""
    return {
        name: quoted(value) if isinstance(value, Substituted) else value
        for name, value in options.items()
    }


def _fallbacks(text: str) -> tuple[str, ...] | None:
    names = [name.strip() for line in text.splitlines() for name in line.split(",")]
    names = [name for name in names if name]
    if not names:
        return None
    if [name.lower() for name in names] == [NO_FALLBACKS]:
        return ()
    return tuple(dict.fromkeys(names))


def _value(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _options(text: str) -> dict[str, object]:
    text = text.strip()
    if not text:
        return {}
    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except ValueError as error:
            raise FormError(f"options: not a JSON object ({error}).") from None
        if not isinstance(parsed, dict):
            raise FormError('options: expected a JSON object such as {"temperature": 0.2}.')
        options: dict[str, object] = dict(parsed)
    else:
        options = {}
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            name, equals, value = line.partition("=")
            if not equals or not name.strip():
                raise FormError(
                    f"options, line {number}: expected name=value (such as temperature=0.2), "
                    "or give a JSON object."
                )
            options[name.strip()] = _value(value.strip())
    for name, option in options.items():
        if reference(option) is not None:
            raise FormError(
                f"options: {name} reads an environment variable or a file; only datasette.yaml "
                "may do that. Give the value itself."
            )
    return options


def override_from_form(form: Mapping[str, str], written: PurposeConfig | None) -> RouteOverride:
    """Read the submitted ``model``, ``fallbacks`` and ``options`` fields into an override.

    A field equal to what datasette.yaml says (or left empty) sets nothing.

    Raises:
        FormError: A field cannot be read.
    """
    model_written, fallbacks_written, options_written = written_values(written)
    model = form.get("model", "").strip() or None
    if model == model_written:
        model = None
    fallbacks = _fallbacks(form.get("fallbacks", ""))
    if fallbacks == fallbacks_written:
        fallbacks = None
    options: Mapping[str, object] | None = _options(form.get("options", ""))
    if options == options_written or options == _shown(options_written):
        options = None  # as written, or as shown (a value from $env/$file is not in the form)
    return RouteOverride(
        model=model,
        fallbacks=fallbacks,
        options=None if options is None else MappingProxyType(dict(options)),
    )
