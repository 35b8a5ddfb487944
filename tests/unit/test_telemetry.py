"""consumer.telemetry: exporter choice from OTEL_* variables, and a real OTLP/HTTP export."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
)

from consumer import telemetry
from tests.otlp_receiver import otlp_receiver

OTEL_VARS = [
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_EXPORTER",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_COMPRESSION",
    "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in OTEL_VARS:
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def providers() -> Iterator[list[TracerProvider]]:
    """Collects providers built by a test and shuts them down (stops batch threads)."""
    built: list[TracerProvider] = []
    yield built
    for p in built:
        p.shutdown()


def processors(provider: TracerProvider) -> tuple[SpanProcessor, ...]:
    return provider._active_span_processor._span_processors  # type: ignore[attr-defined]


def test_none_has_no_processors(providers: list[TracerProvider]) -> None:
    providers.append(p := telemetry.setup_tracing(exporter="none"))
    assert processors(p) == ()


def test_console_is_simple(providers: list[TracerProvider]) -> None:
    providers.append(p := telemetry.setup_tracing(exporter="console"))
    (proc,) = processors(p)
    assert isinstance(proc, SimpleSpanProcessor)
    assert isinstance(proc.span_exporter, ConsoleSpanExporter)


def test_otlp_defaults_to_http_and_batch(providers: list[TracerProvider]) -> None:
    # No argument, no variable: otlp over http/protobuf.
    providers.append(p := telemetry.setup_tracing())
    (proc,) = processors(p)
    assert isinstance(proc, BatchSpanProcessor)
    assert isinstance(proc.span_exporter, HttpSpanExporter)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, GrpcSpanExporter),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, HttpSpanExporter),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, GrpcSpanExporter),
        # The signal-specific variable wins over the general one.
        (
            {
                "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            },
            HttpSpanExporter,
        ),
    ],
)
def test_otlp_protocol_from_env(
    monkeypatch: pytest.MonkeyPatch,
    providers: list[TracerProvider],
    env: dict[str, str],
    expected: type,
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    providers.append(p := telemetry.setup_tracing())
    (proc,) = processors(p)
    assert isinstance(proc, BatchSpanProcessor)
    assert isinstance(proc.span_exporter, expected)


def test_protocol_argument(providers: list[TracerProvider]) -> None:
    providers.append(p := telemetry.setup_tracing(exporter="otlp", protocol="grpc"))
    assert isinstance(processors(p)[0].span_exporter, GrpcSpanExporter)  # type: ignore[attr-defined]


def test_exporter_from_env_and_list(
    monkeypatch: pytest.MonkeyPatch, providers: list[TracerProvider]
) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", " Console ")
    providers.append(p := telemetry.setup_tracing())
    assert [type(x) for x in processors(p)] == [SimpleSpanProcessor]

    providers.append(p := telemetry.setup_tracing(exporter="otlp,console"))
    assert [type(x) for x in processors(p)] == [BatchSpanProcessor, SimpleSpanProcessor]


def test_bad_values_raise(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"OTEL_TRACES_EXPORTER.*'jaeger'.*otlp, console, none"):
        telemetry.setup_tracing(exporter="jaeger")
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(ValueError, match="zipkin"):
        telemetry.setup_tracing()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "otlp")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ValueError, match=r"OTEL_EXPORTER_OTLP_PROTOCOL.*'http/json'"):
        telemetry.setup_tracing()
    # The protocol is irrelevant, and so not checked, when otlp is not used.
    telemetry.setup_tracing(exporter="none").shutdown()


def test_service_name(monkeypatch: pytest.MonkeyPatch, providers: list[TracerProvider]) -> None:
    def name(p: TracerProvider) -> object:
        providers.append(p)
        return p.resource.attributes["service.name"]

    assert name(telemetry.setup_tracing(exporter="none")) == "mana-ai-consumer"
    monkeypatch.setenv("OTEL_SERVICE_NAME", "from-env")
    assert name(telemetry.setup_tracing(exporter="none")) == "from-env"
    assert name(telemetry.setup_tracing("explicit", exporter="none")) == "explicit"


def test_set_global_and_shutdown(
    monkeypatch: pytest.MonkeyPatch, providers: list[TracerProvider]
) -> None:
    # The real global can be set once per process: record the call instead of making it.
    installed: list[object] = []
    monkeypatch.setattr(telemetry.trace, "set_tracer_provider", installed.append)
    monkeypatch.setattr(telemetry, "_installed", None)

    providers.append(p := telemetry.setup_tracing(exporter="none"))
    assert installed == []
    providers.append(p := telemetry.setup_tracing(exporter="none", set_global=True))
    assert installed == [p]

    flushed: list[bool] = []

    def force_flush(*_: object) -> bool:
        flushed.append(True)
        return True

    monkeypatch.setattr(p, "force_flush", force_flush)
    telemetry.shutdown()
    assert flushed == [True]
    assert telemetry._installed is None
    telemetry.shutdown()  # idempotent


def test_in_memory_provider_and_tracer() -> None:
    provider, exporter = telemetry.in_memory_provider()
    with telemetry.tracer(provider).start_as_current_span("decide") as span:
        span.set_attribute("decision", "ran")
    (finished,) = exporter.get_finished_spans()
    assert finished.name == "decide"
    assert finished.attributes == {"decision": "ran"}
    assert finished.instrumentation_scope is not None
    assert finished.instrumentation_scope.name == "mana_ai.consumer"
    provider.shutdown()


def test_otlp_http_wire(monkeypatch: pytest.MonkeyPatch) -> None:
    with otlp_receiver() as rx:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", rx.endpoint)
        provider = telemetry.setup_tracing("wire-test", exporter="otlp")
        try:
            with telemetry.tracer(provider).start_as_current_span("mission.decide") as span:
                span.set_attribute("mission.id", "m-1")
                span.set_attribute("attempt", 3)
                span.set_attribute("late", True)
                span.set_attribute("lateness_s", 0.25)
                span.set_attribute("tags", ["a", "b"])
            assert provider.force_flush(10_000)
            assert rx.wait_for(1, timeout=10)
        finally:
            provider.shutdown()

    (got,) = rx.spans
    assert got.name == "mission.decide"
    assert got.attributes == {
        "mission.id": "m-1",
        "attempt": 3,
        "late": True,
        "lateness_s": 0.25,
        "tags": ["a", "b"],
    }
    assert got.resource["service.name"] == "wire-test"
    assert got.scope == "mana_ai.consumer"
