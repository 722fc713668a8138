"""OpenTelemetry for every attempt of a prompt: a CLIENT span and the GenAI client histograms.

``observe(record, step)`` is called once per ``UsageRecord``, in the task that ran the prompt,
just after the attempt ended. It draws the attempt as a span after the fact (from the record's
start to its end, parented on the current context: in Datasette 1.0a41 with telemetry set up,
the request's span) and records ``gen_ai.client.token.usage`` and
``gen_ai.client.operation.duration``, following OpenTelemetry's GenAI semantic conventions.

Only ``opentelemetry-api`` is used: whoever runs Datasette installs an SDK and an exporter, or
does not, and then every call here is one of the API's no-ops. A span never holds prompt or
response text, nor the actor's id (personal data; ``datasette_llm.usage.id`` leads to the ledger
row, which has it, for an operator allowed to read that).

Span attributes:

- ``gen_ai.operation.name``: ``"chat"``.
- ``gen_ai.request.model``: the model this attempt asked (a fallback's own id on a fallback).
- ``gen_ai.response.model``: the same, when the attempt answered.
- ``gen_ai.provider.name``: guessed from the model id's leading word, left out when unknown.
- ``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``,
  ``gen_ai.usage.cache_read.input_tokens``: when the provider reported them.
- ``error.type``: the error kind (status ERROR), on a failed attempt.
- ``datasette_llm.purpose``, ``datasette_llm.requested_model`` (routing's choice),
  ``datasette_llm.routing.step``, ``datasette_llm.attempt``, ``datasette_llm.fell_back_from``,
  ``datasette_llm.cost_usd``, ``datasette_llm.time_to_first_token`` (seconds),
  ``datasette_llm.usage.id``: each when known.

The histograms carry the operation, request and response model, provider and purpose (all bounded
by the configuration), ``gen_ai.token.type`` (``input``/``output``) for tokens and ``error.type``
for a failed attempt's duration.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Final

from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

if TYPE_CHECKING:
    from opentelemetry.metrics import Histogram, Meter
    from opentelemetry.trace import Tracer
    from opentelemetry.util.types import AttributeValue

    from ..routing.route import ResolutionStep
    from .records import UsageRecord

__all__ = ["INSTRUMENTATION_NAME", "OPERATION", "observe", "provider_of"]

INSTRUMENTATION_NAME: Final = "datasette_llm"
"""The name of our tracer and meter (their instrumentation scope)."""

OPERATION: Final = "chat"
"""The GenAI operation every attempt reports: llm's prompts are chat completions."""

TOKEN_USAGE: Final = "gen_ai.client.token.usage"
OPERATION_DURATION: Final = "gen_ai.client.operation.duration"

# The bucket boundaries the GenAI semantic conventions advise for the two histograms.
_TOKEN_BUCKETS: Final = tuple(float(4**power) for power in range(14))  # 1 .. 67,108,864
_DURATION_BUCKETS: Final = tuple(0.01 * 2**power for power in range(14))  # 10 ms .. 81.92 s

_NS: Final = 1_000_000_000

# The leading word of a model id (before the first "/" or "-"), as llm's model plugins name
# their models, to the provider name of the semantic conventions. A gateway's ids
# ("openrouter/anthropic/...") are not in it: the provider there is the gateway, which the
# conventions do not name, so the attribute is left out rather than guessed.
_PROVIDERS: Final = {
    "gpt": "openai",
    "chatgpt": "openai",
    "o1": "openai",
    "o3": "openai",
    "o4": "openai",
    "openai": "openai",
    "claude": "anthropic",
    "anthropic": "anthropic",
    "gemini": "gcp.gemini",
    "vertex": "gcp.vertex_ai",
    "bedrock": "aws.bedrock",
    "mistral": "mistral_ai",
    "groq": "groq",
    "deepseek": "deepseek",
    "perplexity": "perplexity",
    "grok": "x_ai",
    "xai": "x_ai",
    "cohere": "cohere",
}


def provider_of(model_id: str) -> str | None:
    """Guess the ``gen_ai.provider.name`` of a model from its id, or ``None`` if unsure."""
    word = model_id.partition("/")[0].partition("-")[0].lower()
    return _PROVIDERS.get(word)


def observe(record: UsageRecord, step: ResolutionStep | None) -> None:
    """Report one attempt: a CLIENT span from its start to its end, and the GenAI histograms.

    Args:
        record: The attempt's usage record.
        step: Which step of routing chose the attempt's model (``"fallback"`` for a model the
            prompt fell back to), or ``None``.
    """
    common = _common_attributes(record)
    _report_span(record, step, common)
    _record_metrics(record, common)


def _common_attributes(record: UsageRecord) -> dict[str, AttributeValue]:
    """The attributes the span and both histograms share, all of bounded cardinality."""
    attributes: dict[str, AttributeValue] = {
        "gen_ai.operation.name": OPERATION,
        "gen_ai.request.model": record.model,
    }
    if record.outcome == "ok":
        attributes["gen_ai.response.model"] = record.model
    provider = provider_of(record.model)
    if provider is not None:
        attributes["gen_ai.provider.name"] = provider
    if record.purpose is not None:
        attributes["datasette_llm.purpose"] = record.purpose
    return attributes


def _report_span(
    record: UsageRecord, step: ResolutionStep | None, common: dict[str, AttributeValue]
) -> None:
    start = int(record.time * _NS)
    span = _tracer().start_span(
        f"{OPERATION} {record.model}",
        kind=SpanKind.CLIENT,
        attributes=common,
        start_time=start,
    )
    if span.is_recording():  # with no SDK (or sampled out), skip building the rest
        span.set_attributes(_span_attributes(record, step))
        if record.outcome != "ok":
            span.set_status(Status(StatusCode.ERROR))
    span.end(end_time=start + int(record.duration * _NS))


def _span_attributes(record: UsageRecord, step: ResolutionStep | None) -> dict[str, AttributeValue]:
    """The span's attributes beyond the shared ones; each left out when unknown."""
    attributes: dict[str, AttributeValue] = {
        "datasette_llm.usage.id": record.id,
        "datasette_llm.requested_model": record.requested_model,
        "datasette_llm.attempt": record.attempt,
    }
    optional: dict[str, AttributeValue | None] = {
        "gen_ai.usage.input_tokens": record.input_tokens,
        "gen_ai.usage.output_tokens": record.output_tokens,
        "gen_ai.usage.cache_read.input_tokens": record.cached_tokens,
        "error.type": None if record.outcome == "ok" else record.outcome,
        "datasette_llm.routing.step": step,
        "datasette_llm.fell_back_from": record.fell_back_from,
        "datasette_llm.cost_usd": record.cost,
        "datasette_llm.time_to_first_token": record.first_token,
    }
    attributes.update((name, value) for name, value in optional.items() if value is not None)
    return attributes


def _record_metrics(record: UsageRecord, common: dict[str, AttributeValue]) -> None:
    tokens = _token_usage()
    for token_type, count in (("input", record.input_tokens), ("output", record.output_tokens)):
        if count is not None:
            tokens.record(count, {**common, "gen_ai.token.type": token_type})
    if record.outcome == "ok":
        _operation_duration().record(record.duration, common)
    else:
        _operation_duration().record(record.duration, {**common, "error.type": record.outcome})


def _version() -> str:
    try:
        return version("datasette-llm")
    except PackageNotFoundError:  # running from a checkout that was never installed
        return "unknown"


# Cached once each: the API's proxies follow a provider installed after they were made.


@cache
def _tracer() -> Tracer:
    return trace.get_tracer(INSTRUMENTATION_NAME, _version())


@cache
def _meter() -> Meter:
    return metrics.get_meter(INSTRUMENTATION_NAME, _version())


@cache
def _token_usage() -> Histogram:
    return _meter().create_histogram(
        TOKEN_USAGE,
        unit="{token}",
        description="Tokens used by one attempt of a prompt, by token type",
        explicit_bucket_boundaries_advisory=_TOKEN_BUCKETS,
    )


@cache
def _operation_duration() -> Histogram:
    return _meter().create_histogram(
        OPERATION_DURATION,
        unit="s",
        description="Duration of one attempt of a prompt, from its start to its last chunk",
        explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
    )
