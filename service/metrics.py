"""Prometheus metrics of one service instance, in their own registry (no module globals).

One process serves (see docs/service.md, "Why one worker"), so plain in-process collectors
report correct totals.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

# Stage latencies: a batch on 2 cores takes ~1-50 ms; the tail goes to the request deadline.
LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0, 2.5)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
INTEREST_BUCKETS = (0, 1, 2, 3, 4, 6, 8, 12, 16)


class ServiceMetrics:
    """All collectors of the service, registered in ``self.registry``."""

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter("mind_recall_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], registry=registry)
        self.request_seconds = Histogram("mind_recall_request_duration_seconds",
                                         "HTTP request latency, arrival to response, by endpoint",
                                         ["endpoint"], buckets=LATENCY_BUCKETS_S, registry=registry)
        self.stage_seconds = Histogram("mind_recall_stage_duration_seconds",
                                       "latency per pipeline stage (queue per request; tower, search, merge per batch)",
                                       ["stage"], buckets=LATENCY_BUCKETS_S, registry=registry)
        self.batch_size = Histogram("mind_recall_batch_size_requests", "requests per executed batch",
                                    buckets=BATCH_SIZE_BUCKETS, registry=registry)
        self.interests = Histogram("mind_recall_interests_per_request", "interests (capsules) used per request",
                                   buckets=INTEREST_BUCKETS, registry=registry)
        self.unknown_items = Counter("mind_recall_unknown_items", "history items not in the catalogue (ignored)",
                                     registry=registry)
        self.unknown_profile_features = Counter("mind_recall_unknown_profile_features",
                                                "profile features the model does not use (ignored)", registry=registry)
        self.cold_starts = Counter("mind_recall_cold_starts", "requests answered with the popularity list",
                                   registry=registry)
        self.rejected = Counter("mind_recall_rejected_requests", "requests refused with 503, by reason",
                                ["reason"], registry=registry)
        self.in_progress = Gauge("mind_recall_requests_in_progress", "HTTP requests received and not yet answered",
                                 registry=registry)
        self.queue_depth = Gauge("mind_recall_queue_depth_requests", "requests waiting for the batcher",
                                 registry=registry)
        self.busy_workers = Gauge("mind_recall_busy_workers", "batch worker threads running a batch now "
                                  "(of MIND_BATCH_WORKERS)", registry=registry)
        self.overlap_efficiency = Gauge("mind_recall_overlap_efficiency",
                                        "CPU share per thread of batches that ran beside another (running average); "
                                        "batches run one at a time while the overlap does not pay (service/timing.py)", registry=registry)
        self.model = Info("mind_recall_model", "the bundle being served", registry=registry)
        self.reloads = Counter("mind_recall_reloads", "bundle (re)loads by result", ["result"], registry=registry)
        self.ready = Gauge("mind_recall_ready", "1 once a bundle is loaded and warmed up (GET /readyz answers 200)",
                           registry=registry)
        self.model_created = Gauge("mind_recall_model_created_timestamp_seconds",
                                   "when the served bundle was exported (manifest created_at), Unix seconds",
                                   registry=registry)

    def observe_answer(self, answer: dict) -> None:
        """Count one recall answer's interests, unknown items and profile features, cold start."""
        self.interests.observe(answer["interests"])
        if answer["unknown_items"]:
            self.unknown_items.inc(answer["unknown_items"])
        if answer["unknown_profile_features"]:
            self.unknown_profile_features.inc(answer["unknown_profile_features"])
        if answer["cold_start"]:
            self.cold_starts.inc()

    def render(self) -> bytes:
        """The Prometheus text exposition of every collector."""
        return generate_latest(self.registry)
