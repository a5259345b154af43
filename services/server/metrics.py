"""The model server's Prometheus metrics, in a registry of its own (one per app)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServerMetrics:
    """Counters and gauges ``GET /metrics`` exposes (names ``driftloop_server_*``)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.predictions = Counter(
            "driftloop_server_predictions",
            "Predictions made, by model, route and version (shadow ones included).",
            ["model", "route", "version"],
            registry=r,
        )
        self.applied_epoch = Gauge(
            "driftloop_server_applied_epoch",
            "The pointer epoch this server has applied (-1: none yet).",
            ["model"],
            registry=r,
        )
        self.ready = Gauge(
            "driftloop_server_ready",
            "1 when the model has a live version loaded.",
            ["model"],
            registry=r,
        )
        self.resident = Gauge(
            "driftloop_server_resident_versions", "Versions kept loaded.", ["model"], registry=r
        )
        self.load_failures = Counter(
            "driftloop_server_load_failures",
            "Pointer changes that could not be applied (a version failed to load).",
            ["model"],
            registry=r,
        )
        self.pointer_errors = Gauge(
            "driftloop_server_pointer_unreadable",
            "1 while the pointer cannot be read (the applied versions keep serving).",
            ["model"],
            registry=r,
        )
        self.log_failures = Counter(
            "driftloop_server_inference_log_failures",
            "Predictions whose InferenceLog could not be queued, by reason.",
            ["model", "reason"],
            registry=r,
        )
        self.feedback = Counter(
            "driftloop_server_feedback_events",
            "Feedback events by outcome (accepted, rejected, unavailable).",
            ["outcome"],
            registry=r,
        )
        self.relayed = Counter(
            "driftloop_server_pointer_relayed",
            "Pointer changes this server copied from the Redis outbox to version-events.",
            registry=r,
        )
        self.relay_failures = Counter(
            "driftloop_server_pointer_relay_failures",
            "Outbox relays that failed (Redis or broker away; retried next interval).",
            registry=r,
        )
        self.predict_seconds = Histogram(
            "driftloop_server_predict_seconds",
            "Time to answer one predict call (all its instances).",
            ["model"],
            registry=r,
        )
