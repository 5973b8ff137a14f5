"""Optional tracing (setting ``tracing``, off by default): with it on, every RPC the gateway answers
becomes a span, exported with OTLP over gRPC to the collector OTEL_EXPORTER_OTLP_ENDPOINT names (here a
collector of the test's own, speaking the real OTLP protocol); with it off, nothing is sent."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from gateway_client import Client
from harness import ECHO_CONFIG, ServerProcess, wait_until


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.spans: list[tuple[str, str]] = []  # (service.name, span name)
        self._lock = threading.Lock()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: object) -> object:
        with self._lock:
            for resource_spans in request.resource_spans:
                service = next((a.value.string_value for a in resource_spans.resource.attributes
                                if a.key == "service.name"), "")
                for scope in resource_spans.scope_spans:
                    self.spans.extend((service, span.name) for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def names(self) -> set[str]:
        with self._lock:
            return {name for _, name in self.spans}


@pytest.fixture
def collector() -> Iterator[tuple[Collector, int]]:
    servicer = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield servicer, port
    server.stop(0)


@pytest.mark.parametrize("on", [True, False])
def test_rpcs_become_spans_at_the_collector_when_tracing_is_on(
    on: bool, collector: tuple[Collector, int], make_server: Callable[..., ServerProcess],
) -> None:
    servicer, port = collector
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}", "OTEL_EXPORTER_OTLP_INSECURE": "true",
           "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_SERVICE_NAME": "gateway-under-test"}
    server = make_server(f"tracing = {str(on).lower()}\n" + ECHO_CONFIG, env=env)
    with Client(server.target, timeout=30) as client:
        client.submit("echo", {"traced": True}).result(timeout=30)
    submit = "/inferencegateway.gateway.v1.GatewayService/Submit"
    if on:
        wait_until(lambda: submit in servicer.names(), "the Submit span at the collector", timeout=20)
        assert {service for service, _ in servicer.spans} == {"gateway-under-test"}
        assert "/inferencegateway.gateway.v1.GatewayService/Watch" in servicer.names()
    else:
        server.stop()  # a gateway exporting anything would have flushed it by now
        assert servicer.spans == []
