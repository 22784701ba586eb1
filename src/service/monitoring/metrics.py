"""Every Prometheus metric the API and the workers export, named in one place.

They live in prometheus_client's default registry (one set per process), so the API, its
batchers, the cache and an embedded job worker record into the same place and ``GET /metrics``
(or a worker's ``WORKER_METRICS_PORT``) exposes them all. Metrics about a model carry a
``model_version`` label, so a canary can be compared with production on one dashboard.
Updates on the hot path are a cached child lookup plus an increment.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram, Info

LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)

# --- HTTP -------------------------------------------------------------------------------------

HTTP_REQUESTS = Counter(
    "lab2prod_http_requests_total",
    "HTTP requests by route template, method, status and the model version that answered "
    "(empty when none did).",
    ["route", "method", "status", "model_version"],
)
HTTP_LATENCY = Histogram(
    "lab2prod_http_request_duration_seconds",
    "HTTP request latency by route, method, status and answering model version.",
    ["route", "method", "status", "model_version"], buckets=LATENCY_BUCKETS,
)
REJECTED = Counter(
    "lab2prod_rejected_total", "Requests refused with 503 before inference, by reason.", ["reason"]
)
CONNECTIONS_REFUSED = Counter(
    "lab2prod_connections_refused_total",
    "Connections answered and closed by the connection limits (api/protocol.py), by reason: "
    "header_timeout (408), header_too_large (431), evicted (408: the longest-waiting one without "
    "complete headers, closed to admit a new one at MAX_CONNECTIONS), over_capacity (503).",
    ["reason"],
)

# --- models and inference ---------------------------------------------------------------------

MODEL_INFO = Info(
    "lab2prod_model", "The version each followed alias serves, with its runtime.", ["alias"]
)
MODEL_READY = Gauge("lab2prod_model_ready", "1 when the default alias's version is warm.")
MODEL_RELOADS = Counter(
    "lab2prod_model_reloads_total",
    "Versions loaded for an alias move or a pinned request (ok) or refused (error).", ["result"],
)
LOADED_VERSIONS = Gauge("lab2prod_loaded_versions", "Model versions loaded in this process.")
RUNTIME_AGREEMENT = Gauge(
    "lab2prod_runtime_agreement",
    "Share of the version's verification digits on which the runtime in use predicts what eager "
    "PyTorch predicted at release, measured on this machine at load.",
    ["model_version", "runtime"],
)
BATCH_SIZE = Histogram(
    "lab2prod_batch_size", "Inputs per forward pass.", ["model_version"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
)
INFERENCE_SECONDS = Histogram(
    "lab2prod_inference_seconds", "Time of one forward pass (a whole batch).", ["model_version"],
    buckets=LATENCY_BUCKETS,
)
PREDICTIONS = Counter(
    "lab2prod_predictions_total",
    "Predictions computed, by model version and predicted class (cache hits not counted).",
    ["model_version", "predicted_class"],
)
QUEUE_DEPTH = Gauge(
    "lab2prod_queue_depth", "Inputs waiting for the next batch, per model version.",
    ["model_version"],
)
SHADOW = Counter(
    "lab2prod_shadow_predictions_total",
    "Shadow copies of served requests: whether the shadow version's class agreed with the "
    "served one (agree, disagree), or why it gave none (dropped under load, failed).",
    ["model_version", "shadow_version", "outcome"],
)

# --- drift (monitoring.monitor; the signals and the alert rule: docs/drift.md) ----------------

DRIFT_PSI = Gauge(
    "lab2prod_drift_psi",
    "Population stability index of a signal over the version's window of live inputs against "
    "its release reference; set once the window is full.",
    ["model_version", "signal"],
)
DRIFT_ALERT = Gauge(
    "lab2prod_drift_alert",
    "1 when the version's full window of live inputs has drifted from its release reference "
    "(a signal with PSI >= 0.25 and p < 0.002), else 0; absent while the window fills.",
    ["model_version"],
)

# --- cache ------------------------------------------------------------------------------------

CACHE_REQUESTS = Counter(
    "lab2prod_cache_requests_total", "Cache lookups and writes by tier and result.",
    ["tier", "result"],
)
CACHE_DEGRADED = Gauge(
    "lab2prod_cache_degraded", "1 when a cache tier is unreachable (circuit open).", ["tier"]
)
CACHE_ENTRIES = Gauge("lab2prod_cache_entries", "Entries in the in-process LRU.")

# --- async jobs and WebSocket -----------------------------------------------------------------

JOBS = Counter(
    "lab2prod_jobs_processed_total",
    "Job deliveries handled by workers, by outcome "
    "(done, failed, retried, duplicate: a redelivery whose result was already final).",
    ["outcome"],
)
JOBS_BATCH_SIZE = Histogram(
    "lab2prod_jobs_batch_size", "Jobs per worker forward pass.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
JOBS_INFERENCE_SECONDS = Histogram(
    "lab2prod_jobs_inference_seconds",
    "Worker forward-pass time per batch (preprocessing included).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
JOBS_LATENCY_SECONDS = Histogram(
    "lab2prod_jobs_latency_seconds", "Submit to stored result, per job.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
JOBS_QUEUE_DEPTH = Gauge(
    "lab2prod_jobs_queue_depth", "Messages ready in the job queue.", ["queue"]
)
JOBS_QUEUE_CONSUMERS = Gauge(
    "lab2prod_jobs_queue_consumers", "Consumers of the job queue.", ["queue"]
)
JOBS_DEAD_LETTERS = Gauge(
    "lab2prod_jobs_dead_letters", "Messages in the dead-letter queue.", ["queue"]
)
WS_CONNECTIONS = Gauge("lab2prod_ws_connections", "Open /ws/predict connections.")
WS_MESSAGES = Counter(
    "lab2prod_ws_messages_total",
    "/ws/predict replies by outcome (ok, refused, failed, overload).", ["outcome"],
)


# --- hot-path helpers -------------------------------------------------------------------------

_http_children: dict[tuple[str, str, int, str], tuple[Any, Any]] = {}


def observe_request(route: str, method: str, status: int, version: str, seconds: float) -> None:
    key = (route, method, status, version)
    children = _http_children.get(key)
    if children is None:
        labels = (route, method, str(status), version)
        children = (HTTP_REQUESTS.labels(*labels), HTTP_LATENCY.labels(*labels))
        _http_children[key] = children
    children[0].inc()
    children[1].observe(seconds)


def batch_observer(version: str) -> Any:
    """The batcher's ``on_batch`` callback for one version: batch size and forward-pass time."""
    size, seconds = BATCH_SIZE.labels(version), INFERENCE_SECONDS.labels(version)

    def observe(count: int, elapsed: float) -> None:
        size.observe(count)
        seconds.observe(elapsed)

    return observe
