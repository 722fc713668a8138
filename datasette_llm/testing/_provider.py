"""Scripted provider failures: ``add_exception(kind=...)``, checked when added, raised per call."""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from datasette_llm import ErrorKind, ProviderError
from datasette_llm.provider_errors import ERROR_KINDS

__all__ = ["ScriptedFailure", "build_failure"]


@dataclass(frozen=True, slots=True)
class ScriptedFailure:
    """A provider failure to raise, as datasette-llm raises one for a failing provider.

    Attributes:
        kind: The kind of failure.
        status: The HTTP status the provider is said to have answered, if any.
        retry_after: The seconds the provider is said to have asked to wait, if any.
    """

    kind: ErrorKind
    status: int | None = None
    retry_after: float | None = None

    def describe(self) -> list[str]:
        """Return the set fields as ``name=value`` strings."""
        parts = [f"kind={self.kind!r}"]
        if self.status is not None:
            parts.append(f"status={self.status!r}")
        if self.retry_after is not None:
            parts.append(f"retry_after={self.retry_after!r}")
        return parts

    def error(self, model_id: str, scripted: str) -> ProviderError:
        """Return a new ``ProviderError`` of this kind for ``model_id``, naming the reply."""
        return ProviderError(
            self.kind,
            model_id,
            f"a failure scripted with FakeModelRouter ({scripted})",
            status=self.status,
            retry_after=self.retry_after,
        )


def build_failure(
    exception: BaseException | None,
    kind: object,
    status: object,
    retry_after: object,
) -> ScriptedFailure | None:
    """Check ``add_exception``'s arguments; return the failure for ``kind=``, else ``None``.

    Raises:
        TypeError: Neither or both of ``exception`` and ``kind`` are given, or a value has the
            wrong type.
        ValueError: ``kind`` is not an error kind.
    """
    __tracebackhide__ = True  # pytest: show the failure at the add_exception() call
    kinds = ", ".join(ERROR_KINDS)
    if exception is not None and kind is not None:
        raise TypeError(
            f"add_exception() takes an exception or kind=, not both (got {exception!r} and "
            f"kind={kind!r}): pass kind= alone for a provider failure of that kind, or the "
            "exception alone to raise it as it is."
        )
    if kind is None:
        if exception is None:
            raise TypeError(
                "add_exception() needs what to raise: a provider failure of a kind, e.g. "
                "add_exception(kind='rate_limit', model_id='gpt-5.4'), or an exception "
                f"instance, e.g. add_exception(TimeoutError('slow')). Error kinds: {kinds}."
            )
        if not isinstance(exception, BaseException):
            raise TypeError(
                f"add_exception() takes an exception instance such as "
                f"RuntimeError('rate limited'), got {type(exception).__name__}: {exception!r}"
            )
        if status is not None or retry_after is not None:
            raise TypeError(
                "status= and retry_after= go with kind=, e.g. add_exception(kind='rate_limit', "
                "retry_after=2.0); an exception instance is raised as it is."
            )
        return None
    return ScriptedFailure(_kind(kind, kinds), _status(status), _retry_after(retry_after))


def _kind(kind: object, kinds: str) -> ErrorKind:
    __tracebackhide__ = True
    if not isinstance(kind, str):
        raise TypeError(
            f"kind= must be an error kind name such as 'rate_limit', "
            f"got {type(kind).__name__}: {kind!r}. Error kinds: {kinds}."
        )
    for known in ERROR_KINDS:
        if known == kind:
            return known
    close = difflib.get_close_matches(kind, ERROR_KINDS, n=1)
    hint = f" — did you mean {close[0]!r}?" if close else "."
    raise ValueError(f"Unknown error kind {kind!r}{hint} Error kinds: {kinds}.")


def _status(status: object) -> int | None:
    __tracebackhide__ = True
    if status is None:
        return None
    if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
        raise TypeError(f"status= must be an HTTP status code such as 429, got {status!r}.")
    return status


def _retry_after(retry_after: object) -> float | None:
    __tracebackhide__ = True
    if retry_after is None:
        return None
    if (
        isinstance(retry_after, bool)
        or not isinstance(retry_after, int | float)
        or not retry_after >= 0
    ):
        raise TypeError(
            f"retry_after= must be the seconds to wait, a number >= 0, got {retry_after!r}."
        )
    return float(retry_after)
