"""OpenTelemetry: each attempt of a prompt is a CLIENT span and two GenAI client histograms.

The global tracer and meter providers can be set once per process, so the SDK's in-memory
exporter and metric reader are installed once (``span_exporter``, ``metric_reader``): through
``datasette.telemetry_testing`` where Datasette has it (1.0a41 on), so that this suite and
Datasette's own helpers share one, else directly. Each test drains both first.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from collections.abc import Iterator, Sequence
from dataclasses import replace
from functools import cache
from types import ModuleType
from typing import Any, Final

import pytest
from datasette import Response
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import Counter, Histogram, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    HistogramDataPoint,
    InMemoryMetricReader,
    Metric,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from datasette_llm import LLM
from datasette_llm.typing import Datasette, hookimpl
from datasette_llm.usage.records import UsageRecord
from datasette_llm.usage.telemetry import INSTRUMENTATION_NAME, observe, provider_of
from tests.conftest import MakeDatasette, RegisterPlugin

pytestmark = pytest.mark.usefixtures("test_models")

START_NS: Final = 1_700_000_000_250_000_000
RECORD: Final = UsageRecord(
    id="record-1",
    time=START_NS / 1e9,
    purpose="summarize",
    requested_model="gpt-4o-mini",
    model="gpt-4o-mini",
    actor_id="alice@example.com",
    input_tokens=12,
    output_tokens=34,
    cached_tokens=4,
    duration=1.5,
    first_token=0.25,
    outcome="ok",
    attempt=1,
    fell_back_from=None,
    cost=0.0012,
)
FAILED_FALLBACK: Final = replace(
    RECORD,
    id="record-2",
    model="anthropic/claude-3-5-haiku-latest",
    input_tokens=None,
    output_tokens=None,
    cached_tokens=None,
    first_token=None,
    outcome="rate_limit",
    attempt=2,
    fell_back_from="gpt-4o-mini",
    cost=None,
)
SHARED: Final = {
    "gen_ai.operation.name": "chat",
    "gen_ai.request.model": "gpt-4o-mini",
    "gen_ai.response.model": "gpt-4o-mini",
    "gen_ai.provider.name": "openai",
    "datasette_llm.purpose": "summarize",
}


def datasette_telemetry_testing() -> ModuleType | None:
    """Datasette's telemetry test helpers (Datasette 1.0a41 on), or ``None`` before them."""
    try:
        return importlib.import_module("datasette.telemetry_testing")
    except ImportError:
        return None


@cache
def own_span_exporter() -> InMemorySpanExporter | None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)  # ignored, with a warning, if one was set before
    return exporter if trace.get_tracer_provider() is provider else None


@cache
def own_metric_reader() -> InMemoryMetricReader | None:
    delta = AggregationTemporality.DELTA  # each collection: what happened since the last one
    reader = InMemoryMetricReader(preferred_temporality={Counter: delta, Histogram: delta})
    provider = MeterProvider(metric_readers=[reader])
    metrics.set_meter_provider(provider)
    return reader if metrics.get_meter_provider() is provider else None


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    helpers = datasette_telemetry_testing()
    exporter = own_span_exporter() if helpers is None else helpers.install_span_exporter()
    if not isinstance(exporter, InMemorySpanExporter):
        pytest.skip("A tracer provider was installed before ours: no span can be captured")
    keep = exporter.export

    def export(spans: Sequence[ReadableSpan]) -> SpanExportResult:
        # The tracer provider is the whole process's: the spans of tests that do not ask for
        # them (``spans``) are not kept, or every later prompt's would pile up in memory.
        return keep(spans) if RECORDING else SpanExportResult.SUCCESS

    exporter.export = export  # type: ignore[method-assign]
    return exporter


RECORDING: list[bool] = []
"""Not empty while a test records spans (``spans``)."""


@pytest.fixture(scope="session")
def metric_reader() -> InMemoryMetricReader:
    helpers = datasette_telemetry_testing()
    reader = own_metric_reader() if helpers is None else helpers.install_metric_reader()
    if not isinstance(reader, InMemoryMetricReader):
        pytest.skip("A meter provider was installed before ours: no metric can be captured")
    return reader


@pytest.fixture
def spans(span_exporter: InMemorySpanExporter) -> Iterator[InMemorySpanExporter]:
    span_exporter.clear()
    RECORDING.append(True)
    try:
        yield span_exporter
    finally:
        RECORDING.pop()
        span_exporter.clear()


@pytest.fixture
def reader(metric_reader: InMemoryMetricReader) -> InMemoryMetricReader:
    metric_reader.get_metrics_data()  # drain what earlier tests recorded
    return metric_reader


def ours(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [
        span
        for span in exporter.get_finished_spans()
        if span.instrumentation_scope is not None
        and span.instrumentation_scope.name == INSTRUMENTATION_NAME
    ]


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    found = ours(exporter)
    assert len(found) == 1, [span.name for span in found]
    return found[0]


def collected(reader: InMemoryMetricReader) -> dict[str, Metric]:
    data = reader.get_metrics_data()
    if data is None:
        return {}
    return {
        metric.name: metric
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        if scope.scope.name == INSTRUMENTATION_NAME
        for metric in scope.metrics
    }


def points(metric: Metric) -> list[tuple[dict[str, Any], float, int]]:
    """Each histogram point of ``metric``: its attributes, sum and count."""
    found = []
    for point in metric.data.data_points:
        assert isinstance(point, HistogramDataPoint)
        found.append((dict(point.attributes or {}), point.sum, point.count))
    return found


def emitted_values(found: Sequence[ReadableSpan], metrics_by_name: dict[str, Metric]) -> list[str]:
    """Every span name and attribute value, and every metric attribute value, as text."""
    values = [str(span.name) for span in found]
    values += [str(value) for span in found for value in (span.attributes or {}).values()]
    values += [
        str(value)
        for metric in metrics_by_name.values()
        for point in metric.data.data_points
        for value in (point.attributes or {}).values()
    ]
    return values


# The span of an attempt


def test_an_attempt_that_answered_is_a_client_span_from_its_start_to_its_end(
    spans: InMemorySpanExporter,
) -> None:
    observe(RECORD, "purpose_config")
    span = only_span(spans)
    assert (span.name, span.kind, span.status.status_code) == (
        "chat gpt-4o-mini",
        SpanKind.CLIENT,
        StatusCode.UNSET,
    )
    assert span.start_time is not None and span.end_time is not None
    assert abs(span.start_time - START_NS) < 1_000  # a float's seconds: within a microsecond
    assert span.end_time - span.start_time == 1_500_000_000
    assert dict(span.attributes or {}) == {
        **SHARED,
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 34,
        "gen_ai.usage.cache_read.input_tokens": 4,
        "datasette_llm.usage.id": "record-1",
        "datasette_llm.requested_model": "gpt-4o-mini",
        "datasette_llm.routing.step": "purpose_config",
        "datasette_llm.attempt": 1,
        "datasette_llm.cost_usd": 0.0012,
        "datasette_llm.time_to_first_token": 0.25,
    }


def test_a_failed_attempt_has_status_error_and_its_kind_as_error_type(
    spans: InMemorySpanExporter,
) -> None:
    observe(FAILED_FALLBACK, "purpose_config")
    span = only_span(spans)
    assert (span.name, span.status.status_code, span.status.description) == (
        "chat anthropic/claude-3-5-haiku-latest",
        StatusCode.ERROR,
        None,
    )
    assert dict(span.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "anthropic/claude-3-5-haiku-latest",
        "gen_ai.provider.name": "anthropic",
        "error.type": "rate_limit",
        "datasette_llm.purpose": "summarize",
        "datasette_llm.usage.id": "record-2",
        "datasette_llm.requested_model": "gpt-4o-mini",
        "datasette_llm.routing.step": "purpose_config",
        "datasette_llm.attempt": 2,
        "datasette_llm.fell_back_from": "gpt-4o-mini",
    }


def test_what_is_unknown_is_left_out_rather_than_zero(spans: InMemorySpanExporter) -> None:
    unknown = replace(
        RECORD,
        model="test-a",
        purpose=None,
        input_tokens=None,
        output_tokens=None,
        cached_tokens=None,
        first_token=None,
        cost=None,
    )
    observe(unknown, None)
    assert dict(only_span(spans).attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "test-a",
        "gen_ai.response.model": "test-a",
        "datasette_llm.usage.id": "record-1",
        "datasette_llm.requested_model": "gpt-4o-mini",
        "datasette_llm.attempt": 1,
    }


def test_the_span_is_a_child_of_the_span_current_when_observe_is_called(
    spans: InMemorySpanExporter,
) -> None:
    with trace.get_tracer("tests").start_as_current_span("request") as parent:
        observe(RECORD, "purpose_config")
    span = only_span(spans)
    assert span.parent is not None
    assert (span.parent.trace_id, span.parent.span_id) == (
        parent.get_span_context().trace_id,
        parent.get_span_context().span_id,
    )


def test_with_no_current_span_the_span_starts_its_own_trace(spans: InMemorySpanExporter) -> None:
    observe(RECORD, "purpose_config")
    assert only_span(spans).parent is None


def test_no_telemetry_carries_the_actor_id(
    spans: InMemorySpanExporter, reader: InMemoryMetricReader
) -> None:
    observe(RECORD, "purpose_config")
    observe(FAILED_FALLBACK, "purpose_config")
    values = emitted_values(ours(spans), collected(reader))
    assert not [value for value in values if "alice" in value]


@pytest.mark.parametrize(
    ("model_id", "provider"),
    [
        ("gpt-4o-mini", "openai"),
        ("o3-mini", "openai"),
        ("claude-3.5-sonnet", "anthropic"),
        ("anthropic/claude-sonnet-4-0", "anthropic"),
        ("gemini-2.5-flash", "gcp.gemini"),
        ("mistral/mistral-large-latest", "mistral_ai"),
        ("openrouter/anthropic/claude-3.5-sonnet", None),  # a gateway: not guessed
        ("test-a", None),
    ],
)
def test_the_provider_is_guessed_from_the_model_ids_leading_word(
    model_id: str, provider: str | None
) -> None:
    assert provider_of(model_id) == provider


# The histograms


def test_tokens_and_duration_are_recorded_with_the_shared_attributes(
    reader: InMemoryMetricReader,
) -> None:
    observe(RECORD, "purpose_config")
    found = collected(reader)
    tokens, duration = found["gen_ai.client.token.usage"], found["gen_ai.client.operation.duration"]
    assert (tokens.unit, duration.unit) == ("{token}", "s")
    assert sorted(points(tokens), key=lambda point: point[1]) == [
        ({**SHARED, "gen_ai.token.type": "input"}, 12, 1),
        ({**SHARED, "gen_ai.token.type": "output"}, 34, 1),
    ]
    assert points(duration) == [(SHARED, 1.5, 1)]


def test_a_failed_attempt_records_its_duration_with_error_type_and_no_tokens(
    reader: InMemoryMetricReader,
) -> None:
    observe(FAILED_FALLBACK, "purpose_config")
    found = collected(reader)
    assert "gen_ai.client.token.usage" not in found
    assert points(found["gen_ai.client.operation.duration"]) == [
        (
            {
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "anthropic/claude-3-5-haiku-latest",
                "gen_ai.provider.name": "anthropic",
                "datasette_llm.purpose": "summarize",
                "error.type": "rate_limit",
            },
            1.5,
            1,
        )
    ]


# Only the API, and a provider installed later


def run_python(code: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_importing_datasette_llm_never_imports_the_opentelemetry_sdk() -> None:
    output = run_python(
        """
        import sys
        import datasette_llm, datasette_llm.usage.telemetry
        print([name for name in sys.modules if name.startswith("opentelemetry.sdk")])
        """
    )
    assert output == "[]"


def test_a_provider_installed_after_the_first_attempt_receives_the_next_ones() -> None:
    output = run_python(
        f"""
        from dataclasses import replace
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from datasette_llm.usage.telemetry import observe
        from datasette_llm.usage.records import UsageRecord

        record = {RECORD!r}
        observe(record, None)  # no provider yet: a no-op
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)
        observe(replace(record, model="test-b"), None)
        print([span.name for span in exporter.get_finished_spans()])
        """
    )
    assert output == "['chat test-b']"


# End to end, once the core calls observe()


async def test_a_prompt_is_one_span_named_for_its_model_with_no_text(
    make_datasette: MakeDatasette, spans: InMemorySpanExporter, reader: InMemoryMetricReader
) -> None:
    model = await LLM(make_datasette({"default_model": "test-a"})).model()
    response = await model.prompt("hi sentinel-prompt-text")
    assert "sentinel-prompt-text" in await response.text()
    span = only_span(spans)
    assert (span.name, span.kind) == ("chat test-a", SpanKind.CLIENT)
    values = emitted_values([span], collected(reader))
    assert not [value for value in values if "sentinel" in value]


@pytest.mark.skipif(
    datasette_telemetry_testing() is None, reason="Datasette draws a request span from 1.0a41"
)
async def test_the_span_of_a_prompt_made_for_a_request_is_a_child_of_the_request_span(
    make_datasette: MakeDatasette, register_plugin: RegisterPlugin, spans: InMemorySpanExporter
) -> None:
    async def summarize(datasette: Datasette) -> Response:
        model = await LLM(datasette).model()
        return Response.text(await (await model.prompt("hi")).text())

    class Routes:
        @hookimpl
        def register_routes(self) -> list[tuple[str, Any]]:
            return [(r"^/-/telemetry-summarize$", summarize)]

    register_plugin(Routes())
    response = await make_datasette({"default_model": "test-a"}).client.get(
        "/-/telemetry-summarize"
    )
    assert response.text == "test-a:hi"
    requests = [span for span in spans.get_finished_spans() if span.kind == SpanKind.SERVER]
    assert len(requests) == 1, [span.name for span in requests]
    attempt = only_span(spans)
    assert attempt.parent is not None and attempt.parent.span_id == requests[0].context.span_id
