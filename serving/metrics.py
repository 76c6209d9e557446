"""Prometheus metrics of one serving process (its own registry, so apps do not collide)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from serving.drift_status import DriftStatus
    from serving.hotswap import ModelHolder
    from serving.predlog import PredictionLog

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _StateCollector(Collector):
    """Reads the holders and the prediction log at scrape time."""

    def __init__(self, holders: dict[str, ModelHolder], predlog: PredictionLog | None, drift: DriftStatus | None):
        self.holders = holders
        self.predlog = predlog
        self.drift = drift

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "aidetect_model_info",
            "The model each role serves (value 1)",
            labels=["role", "alias", "version", "variant"],
        )
        loaded = GaugeMetricFamily(
            "aidetect_model_loaded_timestamp_seconds", "When the live model went live", labels=["role"]
        )
        swaps = CounterMetricFamily("aidetect_model_swaps", "Models that went live", labels=["role"])
        refused = CounterMetricFamily(
            "aidetect_model_refused", "Model versions refused by a check", labels=["role", "reason"]
        )
        store_errors = CounterMetricFamily(
            "aidetect_model_store_errors", "Model fetches that failed on the store", labels=["role"]
        )
        for role, holder in self.holders.items():
            live = holder.current
            if live is not None:
                info.add_metric([role, holder.alias, live.version, live.variant], 1)
                loaded.add_metric([role], live.loaded_at)
            swaps.add_metric([role], holder.swaps)
            for reason, count in holder.refused_by_reason.items():
                refused.add_metric([role, reason], count)
            store_errors.add_metric([role], holder.store_errors)
        yield from (info, loaded, swaps, refused, store_errors)
        if self.predlog is not None:
            written = CounterMetricFamily("aidetect_prediction_log_written_records", "Prediction records in the store")
            written.add_metric([], self.predlog.written_records)
            yield written
            spooled = GaugeMetricFamily(
                "aidetect_prediction_log_spooled_records", "Records on local disk, waiting for the store"
            )
            spooled.add_metric([], self.predlog.spooled_records)
            yield spooled
            dropped = CounterMetricFamily("aidetect_prediction_log_dropped_records", "Records lost (disk full, bugs)")
            dropped.add_metric([], self.predlog.dropped_records)
            yield dropped
            pending = GaugeMetricFamily("aidetect_prediction_log_pending_records", "Records in memory, not yet written")
            pending.add_metric([], self.predlog.pending)
            yield pending
            replayed = CounterMetricFamily(
                "aidetect_prediction_log_replayed_records", "Records a killed replica left in the journal, logged again"
            )
            replayed.add_metric([], self.predlog.replayed_records)
            yield replayed
            if self.predlog.journal is not None:
                journal_errors = CounterMetricFamily(
                    "aidetect_prediction_log_journal_write_errors", "Journal commits the local disk refused"
                )
                journal_errors.add_metric([], self.predlog.journal.write_errors)
                yield journal_errors
        if self.drift is not None:
            yield from self._drift(self.drift)

    @staticmethod
    def _drift(drift: DriftStatus) -> Iterable[Metric]:
        errors = CounterMetricFamily("aidetect_drift_read_errors", "Unreadable latest drift reports")
        errors.add_metric([], drift.errors)
        yield errors
        reading = drift.reading
        if reading is None:  # no report yet
            return
        detected = GaugeMetricFamily(
            "aidetect_drift_detected", "The latest drift report found drift (1) or not (0)", labels=["model_version"]
        )
        detected.add_metric([reading.model_version], float(reading.detected))
        severity = GaugeMetricFamily(
            "aidetect_drift_severity", "Drift score over its threshold (above 1: drift), per part", labels=["part"]
        )
        for part, value in sorted(reading.severity.items()):
            severity.add_metric([part], value)
        window = GaugeMetricFamily(
            "aidetect_drift_window_end_timestamp_seconds", "End of the window the latest drift report compared"
        )
        window.add_metric([], reading.window_end)
        rows = GaugeMetricFamily("aidetect_drift_window_rows", "Predictions in the latest drift report's window")
        rows.add_metric([], reading.rows)
        yield from (detected, severity, window, rows)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # the standard process metrics (process_resident_memory_bytes, process_cpu_seconds_total, open fds,
        # python_gc_*, python_info), which a registry of one's own does not get from the default one
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.requests = Histogram(
            "aidetect_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter("aidetect_predictions", "Predictions by verdict", ["label"], registry=self.registry)
        self.rejected_uploads = Counter(
            "aidetect_rejected_uploads", "Uploads refused with a 4xx", ["reason"], registry=self.registry
        )
        self.feedback = Counter("aidetect_feedback", "Feedback reports received", ["status"], registry=self.registry)
        self.batch_size = Histogram(
            "aidetect_inference_batch_size",
            "Images per onnxruntime run",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.shadow = Counter("aidetect_shadow_scores", "Shadow scoring outcomes", ["outcome"], registry=self.registry)
        self.recent_writes = Counter(
            "aidetect_recent_store_writes",
            "Predictions written to the store for every replica (written), or kept on this replica only (failed, "
            "skipped while the store is paused after a failure)",
            ["outcome"],
            registry=self.registry,
        )
        self.recent_swept = Counter(
            "aidetect_recent_swept_keys", "recent/ and history/ keys deleted past retention", registry=self.registry
        )

    def watch(
        self, holders: dict[str, ModelHolder], predlog: PredictionLog | None, drift: DriftStatus | None = None
    ) -> None:
        self.registry.register(_StateCollector(holders, predlog, drift))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestMetricsMiddleware:
    """Times every HTTP request by route template (not raw path: ids would explode the labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], path, str(status)).observe(time.perf_counter() - started)
