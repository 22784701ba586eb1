"""The registry in MLflow's Model Registry: ``mlflow+http://host:5000``, ``mlflow+https://...``,
``mlflow+sqlite:///path.db`` or ``mlflow+file:///path`` (the URL less ``mlflow+`` is the
tracking and registry URI MLflow's client is given).

How our names map onto MLflow's:

- the model is the registered model MODEL_NAME, and our ``v<N>`` is its MLflow version ``N``.
  The number is MLflow's: ``_store`` creates the MLflow version, then names ours after it and
  writes that name into the card, so the two cannot drift apart (a version deleted in MLflow
  leaves a gap, as it does in MLflow);
- a version's files (checkpoint, exported runtimes, verification set) and its card
  (model-card.json) are the artefacts of an MLflow logged model in the experiment MODEL_NAME,
  which is the MLflow version's source; the card's key fields are also tags of the version
  (``lab2prod.*``). The tag ``lab2prod.version`` is set last: an MLflow version without it (a
  publish that died half way, or a model registered by other means) is not listed;
- aliases are MLflow model aliases (``models:/mnist-cnn@production``).

A file store (``mlflow+file://``, in maintenance mode since MLflow 3) needs
MLFLOW_ALLOW_FILE_STORE=true and MLFLOW_TRACKING_URI naming the same store
(``mlflow_client.check_file_store``).

Locking: MLflow offers no lock and no conditional write. Its one atomic test-and-set is creating
an entity with a unique name, so ``_locked`` creates the registered model
``<MODEL_NAME>.lab2prod-lock`` (refused while it exists) and deletes it after. A lock older than
``LOCK_STALE_S`` is taken for a crashed holder's and broken; breaking is not atomic (two waiters
may break it at once), and a tool that writes MLflow without this lock is not held back by it.
The conditional publish (``expect``) compares the aliases under this lock.

A version is fetched to a local cache folder named after its MLflow source (unique per logged
model), so a store rebuilt at the same URL never serves another store's files from the cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import mlflow.artifacts
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from service.registry.base import (
    CARD_FILE,
    CHECKPOINT_FILE,
    PRODUCTION,
    ModelRegistry,
    RegistryError,
    check_alias,
    local_cache,
    version_number,
)
from service.registry.mlflow_client import (
    check_file_store,
    connect,
    experiment_id,
    tracking_uri,
)

log = logging.getLogger("lab2prod.registry")

VERSION_TAG = "lab2prod.version"  # set last: the version is whole
LOCK_SUFFIX = ".lab2prod-lock"
LOCK_TIMEOUT_S = 120
LOCK_STALE_S = 600  # a publish holds the lock for seconds (uploading a few MB)
_MLFLOW_ALIAS = re.compile(r"^[\w-]+$")


def as_version(number: str | int) -> str:
    """MLflow's version number -> our version name: ``"3"`` -> ``"v3"``."""
    return f"v{int(number)}"


def as_number(version: str) -> str:
    """Our version name -> MLflow's version number: ``"v3"`` -> ``"3"``."""
    return str(version_number(version))


def card_tags(card: dict[str, Any]) -> dict[str, str]:
    """The card's key fields as tags of the MLflow version (MLflow keeps tags as strings)."""
    candidate = (card.get("metrics") or {}).get("candidate") or {}
    gate = card.get("gate") or {}
    fields = {
        "lab2prod.run_id": card.get("run_id"),
        "lab2prod.published_at": card.get("published_at"),
        "lab2prod.checkpoint_sha256": card.get("checkpoint_sha256"),
        "lab2prod.accuracy": candidate.get("accuracy"),
        "lab2prod.dataset": ((card.get("data") or {}).get("evaluation") or {}).get("name"),
        "lab2prod.runtime": (card.get("runtimes") or {}).get("chosen"),
        "lab2prod.gate": None if "passed" not in gate else "passed" if gate["passed"] else "failed",
        "lab2prod.champion": (card.get("champion") or {}).get("version"),
        "lab2prod.git_commit": (card.get("git") or {}).get("commit"),
    }
    return {key: str(value) for key, value in fields.items() if value is not None}


class MlflowRegistry(ModelRegistry):
    def __init__(self, url: str, model_name: str = "mnist-cnn") -> None:
        self.url = url
        self.model_name = model_name
        self.uri = tracking_uri(url)
        if "'" in model_name:  # it is quoted in MLflow's search filters
            raise RegistryError(f"model name {model_name!r} may not contain a quote for MLflow")
        self._cache = local_cache(url) / model_name
        self._client_instance: MlflowClient | None = None
        # A local store resolves a logged model's id through MLflow's global tracking URI, not
        # this client's (it would open ./mlflow.db), so versions link to their logged model only
        # through a server.
        self._links_logged_model = self.uri.startswith(("http://", "https://"))

    @property
    def _client(self) -> MlflowClient:
        if self._client_instance is None:
            if self.uri.startswith("file:"):
                check_file_store(self.uri)
            self._client_instance = connect(self.uri, "REGISTRY_URL")
        return self._client_instance

    @contextlib.contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        """MLflow's exceptions as RegistryError, saying what was being done and where."""
        try:
            yield
        except MlflowException as exc:
            raise RegistryError(
                f"MLflow registry {self.url} could not {doing}: {exc.message} (check REGISTRY_URL "
                "and the MLflow server's log)"
            ) from exc

    # --- reading -------------------------------------------------------------------------------

    def versions(self) -> list[str]:
        return sorted((as_version(found.version) for found in self._model_versions()),
                      key=version_number)

    def aliases(self) -> dict[str, str]:
        with self._errors("read the aliases of " + self.model_name):
            try:
                model = self._client.get_registered_model(self.model_name)
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return {}
                raise
        return {alias: as_version(number) for alias, number in model.aliases.items()}

    def _model_versions(self) -> list[ModelVersion]:
        """The MLflow versions that are whole lab2prod versions (tagged last by ``_store``)."""
        found: list[ModelVersion] = []
        token = None
        with self._errors("list the versions of " + self.model_name):
            while True:
                page = self._client.search_model_versions(f"name='{self.model_name}'",
                                                          page_token=token)
                found.extend(page)
                token = page.token
                if not token:
                    break
        return [each for each in found if each.tags.get(VERSION_TAG) == as_version(each.version)]

    def _read_card(self, version: str) -> dict[str, Any]:
        source = self._source(version)
        folder = self._cache / _cache_name(version, source)
        if (folder / CARD_FILE).is_file():
            return dict(json.loads((folder / CARD_FILE).read_text()))
        cached = self._cache / ".cards" / f"{folder.name}.json"
        if not cached.is_file():
            cached.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=cached.parent, prefix=".fetch-") as staging:
                with self._errors(f"download the card of {version}"):
                    downloaded = mlflow.artifacts.download_artifacts(
                        artifact_uri=f"{source.rstrip('/')}/{CARD_FILE}", dst_path=staging,
                        tracking_uri=self.uri)
                os.replace(downloaded, cached)
        return dict(json.loads(cached.read_text()))

    def _fetch(self, version: str) -> Path:
        source = self._source(version)
        folder = self._cache / _cache_name(version, source)
        if (folder / CHECKPOINT_FILE).is_file():
            return folder
        self._cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=self._cache, prefix=".fetch-") as staging:
            with self._errors(f"download {version}"):
                downloaded = Path(mlflow.artifacts.download_artifacts(
                    artifact_uri=source, dst_path=staging, tracking_uri=self.uri))
            if not (downloaded / CHECKPOINT_FILE).is_file():
                raise RegistryError(f"{self.model_name} {version} in {self.url} has no "
                                    f"{CHECKPOINT_FILE} at {source}")
            for path in downloaded.iterdir():
                path.chmod(0o444)  # callers read the cache, never write into it
            try:
                downloaded.rename(folder)
            except OSError:  # another process fetched it first
                if not (folder / CHECKPOINT_FILE).is_file():
                    raise
        return folder

    def _source(self, version: str) -> str:
        with self._errors(f"find the files of {version}"):
            return str(self._client.get_model_version_download_uri(self.model_name,
                                                                   as_number(version)))

    # --- writing -------------------------------------------------------------------------------

    def validate_alias(self, alias: str) -> str:
        check_alias(alias)
        if not _MLFLOW_ALIAS.match(alias) or alias.lower() == "latest":
            raise RegistryError(
                f"alias {alias!r} is not allowed in MLflow: use letters, digits, '_' or '-' "
                "('latest' is MLflow's own)"
            )
        return alias

    def _store(self, version: str, files: dict[str, Path], card: dict[str, Any]) -> str:
        client = self._client
        with self._errors(f"publish a version of {self.model_name}"):
            experiment = experiment_id(client, self.model_name, self.uri)
            try:
                client.create_registered_model(self.model_name)
            except MlflowException as exc:  # it exists from the first publish on
                if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
            logged = client.create_logged_model(experiment, name=self.model_name,
                                                model_type="lab2prod")
        number = None
        try:
            with self._errors(f"upload the files of a version of {self.model_name}"), \
                    tempfile.TemporaryDirectory(prefix="lab2prod-publish-") as staging:
                for name, path in files.items():
                    shutil.copyfile(path, Path(staging) / name)
                client.log_model_artifacts(logged.model_id, staging)
                number = client.create_model_version(
                    self.model_name, source=logged.artifact_location,
                    model_id=logged.model_id if self._links_logged_model else None,
                    tags=card_tags(card), description=f"published by lab2prod: {version}",
                ).version
                version = as_version(number)
                card_path = Path(staging) / CARD_FILE
                card_path.write_text(json.dumps({**card, "version": version}, indent=2))
                client.log_model_artifact(logged.model_id, str(card_path))
                client.finalize_logged_model(logged.model_id, "READY")
                client.set_logged_model_tags(logged.model_id, {VERSION_TAG: version})
                client.set_model_version_tag(self.model_name, number, VERSION_TAG, version)
        except BaseException:
            self._abandon(logged.model_id, number)
            raise
        return version

    def _abandon(self, model_id: str, number: str | None) -> None:
        """Undo a publish that failed half way, as far as MLflow still answers."""
        with contextlib.suppress(Exception):
            if number is not None:
                self._client.delete_model_version(self.model_name, number)
            self._client.finalize_logged_model(model_id, "FAILED")

    def _write_aliases(self, aliases: dict[str, str]) -> None:
        current = self.aliases()
        with self._errors(f"move the aliases of {self.model_name}"):
            for alias in sorted(set(current) - set(aliases)):
                self._client.delete_registered_model_alias(self.model_name, alias)
            # production last: when it moves, `previous` already names the version it leaves
            for alias in sorted(aliases, key=lambda name: name == PRODUCTION):
                if current.get(alias) != aliases[alias]:
                    self._client.set_registered_model_alias(self.model_name, alias,
                                                            as_number(aliases[alias]))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        lock = f"{self.model_name}{LOCK_SUFFIX}"
        holder = f"lab2prod on {socket.gethostname()}, pid {os.getpid()}, since " \
                 f"{datetime.now(UTC).isoformat(timespec='seconds')}"
        deadline = time.monotonic() + LOCK_TIMEOUT_S
        while not self._take_lock(lock, holder):
            if time.monotonic() > deadline:
                raise RegistryError(
                    f"the MLflow registered model {lock!r} (the lock of {self.model_name}) has "
                    f"been held for over {LOCK_TIMEOUT_S}s; if no release or promotion is "
                    "running, delete it in MLflow and try again"
                )
            time.sleep(random.uniform(0.1, 0.5))
        try:
            yield
        finally:
            try:
                with self._errors(f"release the lock {lock}"):
                    self._client.delete_registered_model(lock)
            except RegistryError as exc:  # it goes stale and is broken after LOCK_STALE_S
                log.warning("%s", exc)

    def _take_lock(self, lock: str, holder: str) -> bool:
        with self._errors(f"take the lock {lock}"):
            try:
                self._client.create_registered_model(lock, description=holder)
                return True
            except MlflowException as exc:
                # A server that finds the name taken reads the holder's model to say so, and
                # answers "does not exist" when the holder let go in between: taken all the same.
                if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                    raise
            try:
                held = self._client.get_registered_model(lock)
            except MlflowException as exc:
                if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                    return False  # released meanwhile: try again
                raise
        age_s = time.time() - held.creation_timestamp / 1000
        if age_s > LOCK_STALE_S:
            log.warning("breaking the stale registry lock %s (%s, %.0f s old)",
                        lock, held.description, age_s)
            with contextlib.suppress(MlflowException):
                self._client.delete_registered_model(lock)
        return False


def _cache_name(version: str, source: str) -> str:
    return f"{version}-{hashlib.sha256(source.encode()).hexdigest()[:12]}"
