"""Connecting to MLflow, for the registry backend (``service.registry.mlflow``) and release
tracking (``service.release.tracking``): the URI a registry URL names, a client that fails at
once when no server answers, and the experiment both write into.

MLflow's client reads its own options from the environment; ``connect`` sets defaults there for a
service (CLIENT_DEFAULTS), and a value the user set wins.
"""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from service.registry.base import RegistryError

PREFIX = "mlflow+"
PROBE_TIMEOUT_S = 5
# MLflow's HTTP client retries 7 times with doubling waits (minutes against a server that is
# down) and draws progress bars on stderr. A service polling the registry wants an answer in
# seconds and JSON logs; a value set in the environment wins.
CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def tracking_uri(url: str) -> str:
    """``mlflow+http://host:5000`` -> ``http://host:5000``, the URI MLflow's client takes."""
    if not url.startswith(PREFIX) or not url[len(PREFIX):]:
        raise RegistryError(f"{url!r} is not an MLflow registry URL: use mlflow+http://HOST:PORT, "
                            "mlflow+https://..., mlflow+sqlite:///PATH.db or mlflow+file:///PATH")
    return url[len(PREFIX):]


def connect(uri: str, setting: str) -> MlflowClient:
    """An MLflow client for ``uri`` (tracking and registry). A server that does not answer is a
    RegistryError at once, naming ``setting`` (the variable that holds the URI) to check."""
    for name, value in CLIENT_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if uri.startswith(("http://", "https://")):
        _probe(uri, setting)
    try:
        return MlflowClient(tracking_uri=uri, registry_uri=uri)
    except ImportError as exc:  # a database store needs SQLAlchemy and alembic
        raise RegistryError(f"{setting}={uri!r} needs {exc.name}: pip install "
                            "'lab2prod[mlflow]'") from exc
    except MlflowException as exc:
        raise RegistryError(f"MLflow cannot open {uri} ({setting}): {exc.message}") from exc


def _probe(uri: str, setting: str) -> None:
    """Any HTTP answer from the server will do (a proxy may guard /health); no answer will not."""
    from mlflow.utils.credentials import get_default_host_creds
    from mlflow.utils.rest_utils import http_request

    try:
        http_request(get_default_host_creds(uri), "/health", "GET", max_retries=0,
                     timeout=PROBE_TIMEOUT_S, raise_on_status=False)
    except MlflowException as exc:
        raise RegistryError(
            f"no MLflow server answers at {uri}: check {setting} (host and port) and that "
            f"`mlflow server` runs there and is reachable from this machine ({exc.message})"
        ) from exc


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The experiment ``name`` (made on first use), where versions' files and release runs go."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return str(client.create_experiment(name, artifact_location=_artifact_location(uri)))
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        experiment = client.get_experiment_by_name(name)  # made by another process meanwhile
        if experiment is None:
            raise RegistryError(f"the MLflow experiment {name!r} at {uri} came and went; retry")
    if experiment.lifecycle_stage == "deleted":
        raise RegistryError(
            f"the MLflow experiment {name!r} at {uri} is deleted: restore it "
            f"(`mlflow experiments restore --experiment-id {experiment.experiment_id}`)"
        )
    return str(experiment.experiment_id)


def check_file_store(uri: str) -> None:
    """MLflow's file store (maintenance mode in MLflow 3) reads every model version's logged model
    through MLflow's process-wide tracking URI, not its client's: unset, that opens (and makes)
    ./mlflow.db wherever the command runs. So a file-store registry needs MLFLOW_TRACKING_URI to
    name the same store (its releases are then tracked there too)."""
    if _local_path(mlflow.get_tracking_uri()) != _local_path(uri):
        raise RegistryError(
            f"REGISTRY_URL=mlflow+{uri} is an MLflow file store, which MLflow 3 reads through "
            f"MLFLOW_TRACKING_URI: set MLFLOW_TRACKING_URI={uri} as well, in the environment "
            "(MLflow reads it there, not from .env; and MLFLOW_ALLOW_FILE_STORE=true), or move "
            "to a database store: `mlflow migrate-filestore`, then "
            "REGISTRY_URL=mlflow+sqlite:///PATH.db"
        )


def _local_path(uri: str) -> Path | None:
    if uri.startswith("file://"):
        return Path(uri[len("file://"):]).resolve()
    return None if "://" in uri or uri.startswith("sqlite:") else Path(uri).resolve()


def _artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its files: beside a SQLite database (MLflow would use
    ./mlruns of whatever folder the command runs in); a server or file store chooses itself."""
    if not uri.startswith("sqlite:///"):
        return None
    database = Path(uri[len("sqlite:///"):]).resolve()
    return database.with_name(f"{database.stem}-artifacts").as_uri()
