"""Tracing setup from the standard OTEL_* variables, plus a test helper.

The SDK reads OTEL_TRACES_EXPORTER only in its auto-instrumentation path, not when a provider is
built in code, so we read it (and the OTLP protocol) ourselves. The OTLP exporters still read
their own variables (OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT, _HEADERS, _TIMEOUT, ...).

OTel lets the global provider be set only once per process. So setup_tracing() touches global
state only with set_global=True, and code that emits spans should accept an optional tracer,
defaulting to tracer(); tests pass one from in_memory_provider() instead.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

TRACER_NAME = "mana_ai.consumer"
DEFAULT_SERVICE_NAME = "mana-ai-consumer"
EXPORTERS = ("otlp", "console", "none")
PROTOCOLS = ("http/protobuf", "grpc")

# The provider setup_tracing() installed globally, for shutdown().
_installed: TracerProvider | None = None


def setup_tracing(
    service_name: str | None = None,
    exporter: str | None = None,
    *,
    protocol: str | None = None,
    set_global: bool = False,
) -> TracerProvider:
    """A TracerProvider configured from arguments, else the OTEL_* variables, else defaults.

    exporter: comma-separated list from otlp | console | none (OTEL_TRACES_EXPORTER, default
    otlp). protocol: http/protobuf | grpc (OTEL_EXPORTER_OTLP_TRACES_PROTOCOL, then
    OTEL_EXPORTER_OTLP_PROTOCOL, default http/protobuf). Unknown values raise ValueError, so a
    typo fails at startup instead of silently dropping traces.
    """
    global _installed
    name = service_name or os.environ.get("OTEL_SERVICE_NAME") or DEFAULT_SERVICE_NAME
    spec = exporter if exporter is not None else os.environ.get("OTEL_TRACES_EXPORTER", "otlp")
    kinds = [k.strip().lower() for k in spec.split(",") if k.strip()] or ["otlp"]
    unknown = [k for k in kinds if k not in EXPORTERS]
    if unknown:
        raise ValueError(
            f"OTEL_TRACES_EXPORTER: unsupported value {unknown[0]!r}; "
            f"expected one of {', '.join(EXPORTERS)}"
        )
    # Validate before building anything, so a bad value leaks no exporter threads.
    proto = _otlp_protocol(protocol) if "otlp" in kinds else None

    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    for kind in kinds:
        if kind == "otlp" and proto is not None:
            # Batch: export off the hot path, in the background.
            provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(proto)))
        elif kind == "console":
            # Simple: synchronous, so output appears at span end (debugging only).
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
        # "none": spans are still created (cheap) but go nowhere.

    if set_global:
        trace.set_tracer_provider(provider)
        _installed = provider
    return provider


def _otlp_protocol(protocol: str | None) -> str:
    proto = (
        protocol
        or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    )
    proto = proto.strip().lower()
    if proto not in PROTOCOLS:
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: unsupported value {proto!r}; "
            f"expected one of {', '.join(PROTOCOLS)}"
        )
    return proto


def _otlp_exporter(protocol: str) -> SpanExporter:
    # Imported lazily: each pulls in its own transport (HTTP client / grpcio).
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
            OTLPSpanExporter as GrpcSpanExporter,
        )

        return GrpcSpanExporter()
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def tracer(provider: trace.TracerProvider | None = None) -> trace.Tracer:
    """The consumer's tracer: from `provider` if given, else from the global provider.

    Without a provider the result is a proxy that follows the global provider once set, so
    it is safe to call at import time.
    """
    if provider is not None:
        return provider.get_tracer(TRACER_NAME)
    return trace.get_tracer(TRACER_NAME)


def shutdown() -> None:
    """Flush and shut down the provider installed by setup_tracing(set_global=True), if any."""
    global _installed
    if _installed is not None:
        provider, _installed = _installed, None
        provider.force_flush()
        provider.shutdown()


def in_memory_provider() -> tuple[TracerProvider, InMemorySpanExporter]:
    """A provider whose finished spans land in the returned exporter (get_finished_spans())."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter
