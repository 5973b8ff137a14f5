"""Optional OpenTelemetry traces of the gRPC server (setting ``tracing``; the ``[tracing]`` extra): one
span per RPC, from opentelemetry-instrumentation-grpc, exported with OTLP over gRPC to the collector the
standard ``OTEL_EXPORTER_OTLP_*`` variables name (``OTEL_SERVICE_NAME`` too), or written to stderr when
none is set. Must run before the gRPC server is made (the instrumentation wraps grpc.aio.server)."""

from __future__ import annotations

import os
import sys

from gateway.errors import StartupError

__all__ = ["enable_tracing"]

_enabled = False


def enable_tracing() -> None:
    global _enabled
    if _enabled:
        return
    try:
        from opentelemetry import trace
        from opentelemetry.instrumentation.grpc import GrpcAioInstrumentorServer
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError as exc:
        raise StartupError(f"tracing is on but OpenTelemetry is not installed ({exc.name}): install the [tracing] "
                           "extra (pip install 'inference-gateway[tracing]'), or set tracing = false",
                           StartupError.CONFIGURATION) from None
    exporter: SpanExporter
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    else:
        exporter = ConsoleSpanExporter(out=sys.stderr)  # stdout carries the "serving" line
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "inference-gateway")})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    GrpcAioInstrumentorServer().instrument()
    _enabled = True
