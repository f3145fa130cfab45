"""Prometheus metrics of one server process: requests, inputs, tokens, batch sizes, latency, queue depth."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
TOKEN_BUCKETS = (16, 64, 256, 1024, 4096, 16_384, 65_536, 262_144)


class Metrics:
    """One registry per app, so several servers in one process (tests, Ray replicas) never share counters."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "kvembed_requests", "HTTP requests by endpoint and status code", ["endpoint", "status"], registry=r
        )
        self.inputs = Counter("kvembed_inputs", "texts embedded, by role", ["role"], registry=r)
        self.tokens = Counter("kvembed_tokens", "prompted tokens fed to the model, by role", ["role"], registry=r)
        self.truncated = Counter("kvembed_truncated_inputs", "inputs cut at the embedder's max_length", registry=r)
        self.latency = Histogram(
            "kvembed_request_latency_seconds",
            "time from a request's arrival to its response, successful embedding requests",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_inputs = Histogram(
            "kvembed_batch_inputs", "inputs per merged encode() call", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_requests = Histogram(
            "kvembed_batch_requests", "requests merged into one encode() call", buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_tokens = Histogram(
            "kvembed_batch_tokens", "prompted tokens per merged encode() call", buckets=TOKEN_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "kvembed_batch_seconds", "model time per merged encode() call", buckets=LATENCY_BUCKETS, registry=r
        )
        self.pending = Gauge("kvembed_pending_inputs", "inputs queued or being embedded", registry=r)
        self.ready = Gauge("kvembed_ready", "1 once the model is loaded and the server answers", registry=r)

    def render(self) -> bytes:
        """The text exposition format (``GET /metrics``)."""
        return generate_latest(self.registry)
