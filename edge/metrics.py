"""Prometheus metrics on a local port (own registry, so nothing global leaks in)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = ["Metrics"]

_BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.frames = Counter("lineside_frames", "frames received", ["station"], registry=r)
        self.verdicts = Counter("lineside_verdicts", "verdicts by outcome", ["station", "outcome"], registry=r)
        self.latency = Histogram("lineside_latency_ms", "per-stage latency", ["stage"], buckets=_BUCKETS_MS, registry=r)
        self.queue_depth = Gauge("lineside_queue_depth", "verdicts waiting for PUBACK", registry=r)
        self.dropped = Gauge("lineside_dropped_verdicts", "verdicts dropped by the queue bounds", registry=r)
        self.connected = Gauge("lineside_broker_connected", "1 when connected to the broker", registry=r)
        self.refused = Gauge("lineside_refused_verdicts", "verdicts the broker refused (kept and retried)", registry=r)
        self.quarantined = Gauge("lineside_quarantined_verdicts", "damaged spool rows set aside, never sent", registry=r)
        self.healthy = Gauge("lineside_healthy", "1 when every worker runs and nothing is degraded", registry=r)
        self.selftest = Gauge("lineside_selftest_passed", "1 when the loaded bundle passed its self-test", registry=r)
        self.port: int | None = None

    def serve(self, host: str, port: int) -> int:
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        self.port = int(server.server_port)
        return self.port
