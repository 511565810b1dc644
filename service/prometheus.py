"""Prometheus metrics. Labels carry model names and versions, never metric names; one registry per
app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics

disable_created_metrics()  # *_created series double the output and no dashboard uses them

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
RATIO_BUCKETS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
JOB_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "patchshift_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "patchshift_http_request_duration_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.images_scored = Counter(
            "patchshift_images_scored", "Images scored", ["model", "version"], registry=r
        )
        self.anomalies = Counter(
            "patchshift_anomalies",
            "Images whose score exceeded the threshold",
            ["model", "version"],
            registry=r,
        )
        self.score_ratio = Histogram(
            "patchshift_score_threshold_ratio",
            "Anomaly score divided by the version's threshold (>1 is anomalous)",
            ["model"],
            buckets=RATIO_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "patchshift_batch_size_images",
            "Images per micro-batch sent to the model",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.inference_seconds = Histogram(
            "patchshift_inference_duration_seconds",
            "Model time per micro-batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.jobs = Counter(
            "patchshift_jobs",
            "Finished jobs by kind and final status",
            ["kind", "status"],
            registry=r,
        )
        self.job_seconds = Histogram(
            "patchshift_job_duration_seconds",
            "Job run time",
            ["kind"],
            buckets=JOB_BUCKETS,
            registry=r,
        )
        self.job_pickup = Histogram(
            "patchshift_job_pickup_seconds",
            "Time from a job's submission to a worker starting it",
            ["kind"],
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 30, 120, 600, 3600),
            registry=r,
        )
        self.activations = Counter(
            "patchshift_activations",
            "Changes of a model's active version, by cause",
            ["cause"],
            registry=r,
        )
        self.activation_lag = Histogram(
            "patchshift_activation_lag_seconds",
            "Time from an activation on another replica to this replica serving that version",
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
            registry=r,
        )
        self.queue_depth = Gauge(
            "patchshift_job_queue_depth", "Jobs queued or running (all workers)", registry=r
        )
        self.score_queue_depth = Gauge(
            "patchshift_score_queue_images",
            "Images waiting for the scoring micro-batcher",
            registry=r,
        )
        self.active_version = Gauge(
            "patchshift_model_active_version_info",
            "1 for the active version of each model",
            ["model", "version"],
            registry=r,
        )
        self.load_seconds = Gauge(
            "patchshift_model_load_duration_seconds",
            "Time the last load of a model version took",
            ["model"],
            registry=r,
        )
        self.device = Gauge(
            "patchshift_device_info", "1 for the device the models run on", ["device"], registry=r
        )
        self.drift = Gauge(
            "patchshift_drift_statistic",
            "Drift statistic of the recent window (about 1 without drift)",
            ["model"],
            registry=r,
        )
        self.drifting = Gauge(
            "patchshift_drift_detected",
            "1 while the drift statistic exceeds its threshold",
            ["model"],
            registry=r,
        )
        self.anomalous_share = Gauge(
            "patchshift_recent_anomalous_ratio",
            "Share of the recent window above the threshold",
            ["model"],
            registry=r,
        )

        self.part_checks = Counter(
            "patchshift_part_checks",
            "Parts a person checked on the line (each part's first check), by what they found "
            "(good, defective) and the version's verdict (flagged, passed)",
            ["model", "version", "found", "verdict"],
            registry=r,
        )

    def set_active(self, model: str, version: str | None) -> None:
        for labels in list(
            self.active_version._metrics
        ):  # one series per model: drop the old version's
            if labels[0] == model:
                self.active_version.remove(*labels)
        if version is not None:
            self.active_version.labels(model, version).set(1)
            for found in ("good", "defective"):  # at 0 from the start: a rate sees the first check
                for verdict in ("flagged", "passed"):
                    self.part_checks.labels(model, version, found, verdict)

    def forget_model(self, model: str) -> None:
        self.set_active(model, None)
        for gauge in (self.drift, self.drifting, self.anomalous_share, self.load_seconds):
            try:
                gauge.remove(model)
            except KeyError:
                pass
        for labels in list(self.part_checks._metrics):
            if labels[0] == model:
                self.part_checks.remove(*labels)
