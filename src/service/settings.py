"""The one typed settings object. Nothing else in the package reads the environment.

Every field maps to an environment variable of the same name in upper case (``REDIS_URL``,
``REGISTRY_URL``, ``MAX_BATCH_SIZE`` ...) or a line in ``.env``. Defaults work on a laptop with
no services: no Redis, no RabbitMQ, registry and runs in the current directory.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# How the deploy files mark a secret value that must be replaced before use.
PLACEHOLDER = "REPLACE-ME"

RuntimeName = Literal[
    "auto", "eager", "torchscript", "compile", "onnx", "onnx-int8", "int8", "channels-last"
]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", protected_namespaces=())

    # --- where things live (relative to the current directory, like git or DVC) ---
    registry_url: str = Field(
        "models", description="Model registry: a folder, an fsspec URL or mlflow+http://HOST:PORT."
    )
    runs_dir: Path = Field(Path("runs"), description="Where release runs write their records.")
    notebooks_dir: Path = Field(Path("notebooks"), description="train.ipynb and evaluate.ipynb.")
    data_dir: Path = Field(
        Path("data"), description="IDX files for the 'mnist' dataset when no folder is given."
    )
    release_policy: Path = Field(
        Path("release-policy.yaml"), description="The gate's criteria (versioned in the repo)."
    )
    model_name: str = Field("mnist-cnn", description="Registry name of the served model.")
    model_alias: str = Field("production", description="Alias the service and workers follow.")
    mlflow_tracking_uri: str | None = Field(
        None, description="MLflow tracking server (or sqlite:///..., file:...): each release is "
        "logged there as a run (unset: not logged)."
    )
    max_loaded_versions: int = Field(
        3, ge=1, description="Versions kept loaded at once (least recently used one unloaded "
        "first; never one an alias the service follows points at)."
    )

    # --- compute ---
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu' or 'cuda[:N]'.")
    torch_threads: int = Field(1, ge=1, description="Threads the model uses per process (torch's "
                               "intra-op pool and ONNX Runtime's sessions).")
    runtime: RuntimeName = Field("auto", description="Inference runtime variant.")

    # --- HTTP server ---
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    workers: int = Field(1, ge=1)
    log_level: str = "info"
    log_json: bool = True
    access_log: bool = Field(False, description="One JSON log line per request (costs req/s).")
    # what one connection may cost (api/protocol.py, docs/hardening.md)
    header_timeout_s: float = Field(
        10.0, gt=0, description="Request line and headers must arrive within this, from the "
        "accept or the request's first byte (slow trickles don't extend it), else 408."
    )
    max_header_bytes: int = Field(
        64 * 1024, ge=1024, description="Larger request line + headers get 431 (never buffered)."
    )
    max_connections: int = Field(
        0, ge=0, description="Open connections per process (0: 3/4 of the open-file limit, at "
        "least 64); over it a stalled (408) or idle one is closed for the new one, else 503."
    )
    keep_alive_timeout_s: float = Field(
        75.0, gt=0, description="An idle kept-alive connection is closed after this. Longer "
        "than clients' and load balancers' own idle limits (httpx 5 s, ALB and nginx 60 s): "
        "the side that closes first must be the client, or its next request can meet the close."
    )
    load_model: bool = Field(
        True, description="False lets an API instance only enqueue jobs (small CPU box)."
    )
    model_poll_interval_s: float = Field(
        10.0, ge=0, description="How often to check the alias for a new version (0: never)."
    )
    # --- stopping and readiness (docs/hardening.md) ---
    drain_grace_s: float = Field(
        5.0, ge=0, description="After SIGTERM: /ready answers 503 'draining' and every answer "
        "says Connection: close for this long, then in-flight requests finish and the process "
        "exits (0: no grace; SIGINT never waits)."
    )
    ready_check_timeout_s: float = Field(
        0.2, gt=0, description="Most time one /ready dependency check may take; a slower one "
        "is reported degraded."
    )

    # --- traffic between versions (PUT /admin/traffic changes it until restart) ---
    canary_alias: str | None = Field(None, description="Alias that takes CANARY_PERCENT.")
    canary_percent: float = Field(
        0.0, ge=0, le=100, description="Share of unpinned requests the canary answers."
    )
    shadow_alias: str | None = Field(None, description="Alias that also answers, off the path.")
    shadow_percent: float = Field(
        0.0, ge=0, le=100, description="Share of unpinned requests copied to the shadow."
    )
    admin_token: SecretStr | None = Field(
        None, description="Enables /admin/* with 'Authorization: Bearer <token>' (unset: 404)."
    )

    # --- request batching and limits ---
    max_batch_size: int = Field(32, ge=1, description="Most inputs in one forward pass.")
    max_batch_wait_ms: float = Field(
        0.0, ge=0, description="Extra wait to fill a batch; 0 means never wait on a timer."
    )
    max_queue_size: int = Field(1024, ge=1, description="Pending inputs before 503.")
    batch_max_items: int = Field(256, ge=1, description="Most items in POST /predict/batch.")
    max_upload_bytes: int = Field(5 * 1024 * 1024, ge=1, description="Larger uploads get 413.")
    max_image_pixels: int = Field(
        25_000_000, ge=1, description="Images larger than this are refused before decoding."
    )
    request_timeout_s: float = Field(30.0, gt=0)

    # --- caching ---
    redis_url: str | None = Field(None, description="Redis tier of the cache and result store.")
    cache_size: int = Field(
        10_000, ge=0, description="In-process LRU entries (0 disables); a /predict answer uses two."
    )
    cache_ttl_s: int = Field(3600, ge=1)
    redis_timeout_s: float = Field(0.05, gt=0, description="Per-call Redis timeout.")
    breaker_failures: int = Field(3, ge=1, description="Failures that open the circuit.")
    breaker_reset_s: float = Field(2.0, gt=0, description="Open circuit retries after this.")

    # --- drift monitoring (docs/drift.md) ---
    drift_window: int = Field(
        1000, ge=100, description="Latest inputs per version compared with its release "
        "reference (shared by the replicas through REDIS_URL when set)."
    )

    # --- async jobs ---
    amqp_url: str | None = Field(None, description="RabbitMQ; unset means in-process queue.")
    queue_name: str = "lab2prod.inference"
    result_ttl_s: int = Field(3600, ge=1)
    worker_prefetch: int = Field(64, ge=1)
    worker_batch_size: int = Field(32, ge=1)
    worker_batch_wait_ms: float = Field(5.0, ge=0)
    max_attempts: int = Field(3, ge=1, description="Deliveries before a job is dead-lettered.")
    dead_letter_ttl_s: int = Field(
        7 * 24 * 3600, ge=1,
        description="How long RabbitMQ keeps a dead-lettered message for inspection.",
    )
    worker_metrics_port: int = Field(0, ge=0, description="Prometheus port of a worker (0: off).")
    ws_max_in_flight: int = Field(32, ge=1, description="Per-connection WebSocket backpressure.")

    @field_validator("admin_token")
    @classmethod
    def _admin_token_strong_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and len(value.get_secret_value()) < 16:
            raise ValueError("admin_token must be at least 16 characters (e.g. `openssl rand "
                             "-hex 16`), or unset to turn the admin API off")
        if value is not None and PLACEHOLDER in value.get_secret_value().upper():
            raise ValueError(f"admin_token is a {PLACEHOLDER} placeholder (deploy/k8s/components/"
                             "placeholder-secret); set a real one (`openssl rand -hex 16`) or "
                             "unset it to turn the admin API off")
        return value

    @model_validator(mode="after")
    def _a_batch_fits_in_the_queue(self) -> Settings:
        if self.batch_max_items > self.max_queue_size:
            raise ValueError(
                f"batch_max_items ({self.batch_max_items}) exceeds max_queue_size "
                f"({self.max_queue_size}): a batch that large could never be queued; lower "
                "BATCH_MAX_ITEMS or raise MAX_QUEUE_SIZE"
            )
        return self

    @field_validator("registry_url")
    @classmethod
    def _registry_not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("registry_url is empty; use a folder like 'models', 's3://b/models' "
                             "or 'mlflow+http://127.0.0.1:5000'")
        return value


@lru_cache
def get_settings() -> Settings:
    return Settings()
