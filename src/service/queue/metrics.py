"""Prometheus metrics of the job queue and its workers (default registry, so an API that runs
the embedded worker exposes them on its own ``/metrics`` too). The served model version is
``lab2prod_model_info``, set by the ModelManager that workers share with the API."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

JOBS = Counter(
    "lab2prod_jobs_processed_total",
    "Job deliveries handled by workers, by outcome "
    "(done, failed, retried, duplicate: a redelivery whose result was already final).",
    ["outcome"],
)
BATCH_SIZE = Histogram(
    "lab2prod_jobs_batch_size",
    "Jobs per worker forward pass.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
INFERENCE_SECONDS = Histogram(
    "lab2prod_jobs_inference_seconds",
    "Worker forward-pass time per batch (preprocessing included).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
LATENCY_SECONDS = Histogram(
    "lab2prod_jobs_latency_seconds",
    "Submit to stored result, per job.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
QUEUE_DEPTH = Gauge("lab2prod_jobs_queue_depth", "Messages ready in the job queue.", ["queue"])
QUEUE_CONSUMERS = Gauge("lab2prod_jobs_queue_consumers", "Consumers of the job queue.", ["queue"])
DEAD_LETTERS = Gauge("lab2prod_jobs_dead_letters", "Messages in the dead-letter queue.", ["queue"])
WS_CONNECTIONS = Gauge("lab2prod_ws_connections", "Open /ws/predict connections.")
WS_MESSAGES = Counter(
    "lab2prod_ws_messages_total",
    "/ws/predict replies by outcome (ok, refused, failed, overload).",
    ["outcome"],
)
