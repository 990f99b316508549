#!/usr/bin/env python3
"""A minimal OpenTelemetry collector for benchmarks: accepts OTLP/gRPC trace exports on a port,
keeps nothing but counts, and prints `{"exports": N, "spans": M}` when stopped (SIGINT/SIGTERM).

Used by docs/performance.md's tracing-overhead run, so that exporting meets a live collector
(not only a dead endpoint). Not a collector to run in production.

Usage:  python3 -m venv .venv && .venv/bin/pip install -r tools/otlp/requirements.txt
        .venv/bin/python tools/otlp/sink.py --port 4317
"""

import argparse
import json
import signal
import threading
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc


class Sink(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self):
        self.lock = threading.Lock()
        self.exports = 0
        self.spans = 0

    def Export(self, request, context):
        spans = sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
        with self.lock:
            self.exports += 1
            self.spans += spans
        return trace_service_pb2.ExportTraceServiceResponse()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=4317)
    args = parser.parse_args()
    sink = Sink()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(sink, server)
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(json.dumps({"listening": args.port}), flush=True)
    stop.wait()
    server.stop(1)
    print(json.dumps({"exports": sink.exports, "spans": sink.spans}), flush=True)


if __name__ == "__main__":
    main()
