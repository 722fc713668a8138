"""Exceptions raised by datasette-llm, each saying what went wrong and how to fix it."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ConfigurationError",
    "ConfigProblem",
    "ModelBlockedError",
    "ModelNotFoundError",
    "Substituted",
    "is_text",
    "lone_surrogate",
    "nearest",
    "quoted",
    "shown",
]


def is_text(value: str) -> bool:
    """Whether ``value`` can be written out as UTF-8.

    It cannot when it holds a lone surrogate, which a JSON escape such as ``"\\ud800"`` produces;
    such a string would break every page, log line or terminal it reached.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class Substituted(str):
    """A configuration string that Datasette's ``{$env: NAME}`` or ``{$file: PATH}`` gave.

    It is a string like any other, except that messages never quote it: they name where it came
    from instead (it may be a secret).

    Attributes:
        source: ``"env"`` or ``"file"``.
        origin: The environment variable's name, or the file's path.
    """

    source: str
    origin: str

    def __new__(cls, value: str, source: str, origin: str) -> Substituted:
        substituted = super().__new__(cls, value)
        substituted.source = source
        substituted.origin = origin
        return substituted


def quoted(value: object) -> str:
    """Quote a configured value for a message: ``repr``, except for a ``Substituted`` string."""
    if isinstance(value, Substituted):
        return f"(the value of ${value.source} {value.origin})"
    return repr(value)


def lone_surrogate(what: str, value: str | None) -> str:
    """The message for ``value``, named ``what``, failing ``is_text`` (``None``: not quoted)."""
    shown_value = "" if value is None else f" {quoted(value)}"
    return (
        f"{what}{shown_value} holds a lone surrogate (an unpaired \\ud800-\\udfff escape, often "
        "from JSON), which is not text: correct the string."
    )


def shown(value: object) -> str:
    """``str(value)``, with any lone surrogate written as a ``\\udXXX`` escape."""
    text = str(value)
    return text if is_text(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def nearest(name: str, candidates: Iterable[str]) -> str | None:
    """Return the candidate closest to ``name``, or ``None`` if none is close.

    The one candidate that ``name`` begins, if there is one, is closest (``blocked`` is short
    for ``blocked_models``, not a misspelling of ``locked``).
    """
    choices = list(candidates)
    extended = [choice for choice in choices if choice.startswith(name) and choice != name]
    if name and len(extended) == 1:
        return extended[0]
    matches = difflib.get_close_matches(name, choices, n=1, cutoff=0.6)
    return matches[0] if matches else None


class ModelNotFoundError(Exception):
    """Raised when no model could be chosen: nothing given, nothing configured or all refused."""


class ModelBlockedError(ModelNotFoundError):
    """Raised when the model asked for by an explicit ``model_id`` is blocked.

    A blocked model stays blocked on every path, including an id that came from a form: the
    message names the configuration setting that blocks it.

    Attributes:
        model_id: The model asked for, as llm resolves it.
        purpose: The purpose of the call, or ``None``.
        setting: The configuration path that blocks it, e.g.
            ``plugins.datasette-llm.purposes.enrichments.blocked_models``.
    """

    def __init__(self, model_id: str, purpose: str | None, setting: str) -> None:
        self.model_id = model_id
        self.purpose = purpose
        self.setting = setting
        for_purpose = f" for purpose {purpose!r}" if purpose is not None else ""
        super().__init__(
            f"Model {quoted(model_id)} is blocked{for_purpose} by {setting}, so it cannot be "
            f"used, even when asked for by model_id. Ask for another model, or remove it from "
            f"{setting} in datasette.yaml."
        )


@dataclass(frozen=True, slots=True)
class ConfigProblem:
    """One problem found in the ``datasette-llm`` plugin configuration.

    Attributes:
        path: Where the problem is, e.g. ``plugins.datasette-llm.purposes.x.models[1]``.
        message: What is wrong there and how to fix it.
        severity: ``"error"`` stops startup; ``"warning"`` is logged (an error under ``strict``).
    """

    path: str
    message: str
    severity: Literal["error", "warning"] = "error"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class ConfigurationError(ValueError):
    """Raised when the ``datasette-llm`` configuration is malformed.

    Attributes:
        problems: Every problem found, each naming its configuration path.
    """

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems: tuple[ConfigProblem, ...] = tuple(problems)
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        count = len(self.problems)
        noun = "problem" if count == 1 else "problems"
        super().__init__(
            f"Invalid datasette-llm configuration ({count} {noun}):\n{lines}\n"
            "Fix these under plugins: datasette-llm: in datasette.yaml "
            "(or the metadata/config passed to Datasette)."
        )
