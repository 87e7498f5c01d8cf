"""An OTLP/gRPC trace receiver for the tests: the collector's TraceService, built on the
official OpenTelemetry protocol definitions (PyPI `opentelemetry-proto`), independent of the
Rust exporter it receives from.

It listens on a loopback port (the second argument, or a free one) and writes, one JSON object
per line to the file named by its first argument: first {"listening": port}, then one line per
span received, ids in lowercase hex as the W3C traceparent writes them.

    python receiver.py spans.jsonl [port]
"""

import json
import sys
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import (
    trace_service_pb2,
    trace_service_pb2_grpc,
)
from opentelemetry.proto.trace.v1 import trace_pb2


def value(any_value):
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind else None


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, out):
        self.out = out
        self.lock = threading.Lock()

    def Export(self, request, context):
        lines = []
        for resource_spans in request.resource_spans:
            resource = {a.key: value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    lines.append(
                        {
                            "service": resource.get("service.name"),
                            "scope": scope_spans.scope.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "name": span.name,
                            "kind": trace_pb2.Span.SpanKind.Name(span.kind),
                            "start": span.start_time_unix_nano,
                            "end": span.end_time_unix_nano,
                            "status": trace_pb2.Status.StatusCode.Name(span.status.code),
                            "attributes": {a.key: value(a.value) for a in span.attributes},
                        }
                    )
        with self.lock:
            for line in lines:
                self.out.write(json.dumps(line) + "\n")
            self.out.flush()
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    out = open(sys.argv[1], "a", encoding="utf-8")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(out), server)
    port = server.add_insecure_port(f"127.0.0.1:{sys.argv[2] if len(sys.argv) > 2 else 0}")
    if port == 0:
        sys.exit("cannot listen")
    server.start()
    out.write(json.dumps({"listening": port}) + "\n")
    out.flush()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
