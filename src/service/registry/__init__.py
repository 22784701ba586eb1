"""The model registry: ``open_registry(url, model)`` picks the backend by the URL's scheme.

Backends register the schemes they serve (``register_backend``), as papermill registers its I/O
handlers: a folder or any fsspec URL (``models``, ``file://...``, ``s3://...``) is a
``FolderRegistry``; ``mlflow+http://...`` (``+https``, ``+sqlite``, ``+file``) is MLflow's Model
Registry (``service.registry.mlflow``, the optional ``mlflow`` extra, imported on first use).
Callers use the ``ModelRegistry`` interface and never learn where files live.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import fsspec

from service.registry.base import (
    CANDIDATE,
    CARD_FILE,
    CHECKPOINT_FILE,
    PREVIOUS,
    PRODUCTION,
    ModelRegistry,
    RegistryError,
    check_alias,
    is_version,
)
from service.registry.folder import FolderRegistry

__all__ = [
    "CANDIDATE", "CARD_FILE", "CHECKPOINT_FILE", "PREVIOUS", "PRODUCTION", "FolderRegistry",
    "ModelRegistry", "RegistryError", "check_alias", "is_version", "open_registry",
    "register_backend",
]

Backend = Callable[[str, str], ModelRegistry]
BACKENDS: dict[str, Backend] = {}


def register_backend(schemes: list[str] | tuple[str, ...], backend: Backend) -> None:
    """Serve URLs whose scheme (the part before ``://``) is one of ``schemes`` with ``backend``."""
    for scheme in schemes:
        BACKENDS[scheme] = backend


def open_registry(url: str | os.PathLike[str], model_name: str = "mnist-cnn") -> ModelRegistry:
    """The registry at ``url`` (a plain path is a local folder) for ``model_name``."""
    text = str(url)
    scheme = text.split("://", 1)[0] if "://" in text else "file"
    try:
        backend = BACKENDS[scheme]
    except KeyError:
        known = ", ".join(sorted(f"{name}://" for name in BACKENDS))
        raise RegistryError(
            f"no registry backend serves {scheme}:// URLs (REGISTRY_URL={text!r}); use a "
            f"folder or one of {known}; an fsspec scheme may need its package (e.g. s3fs)"
        ) from None
    return backend(text, model_name)


def _mlflow_registry(url: str, model_name: str) -> ModelRegistry:
    try:
        from service.registry.mlflow import MlflowRegistry
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != "mlflow":
            raise
        raise RegistryError(
            f"REGISTRY_URL={url!r} is an MLflow registry, and MLflow's client is not installed: "
            "pip install 'lab2prod[mlflow]'"
        ) from exc
    return MlflowRegistry(url, model_name)


register_backend(("file", "local", *fsspec.available_protocols()), FolderRegistry)
register_backend(("mlflow+http", "mlflow+https", "mlflow+sqlite", "mlflow+file"), _mlflow_registry)
