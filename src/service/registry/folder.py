"""The registry in a folder or any fsspec URL (``models/``, ``s3://bucket/models``).

Layout::

    <root>/<model>/v1/model.safetensors   immutable once published, with the files published
    <root>/<model>/v1/model-card.json     beside it (exported runtimes, verification set)
    <root>/<model>/aliases.json           {"production": "v2", "previous": "v1", ...}

A version is written to a staging folder and moved into place whole. aliases.json is replaced
atomically (a local rename; object stores replace whole objects). Changes take a file lock: on a
local folder it guards every process using it; for a remote URL it guards this machine, and the
conditional publish guards the rest. Remote versions are fetched to a local cache folder, the
checkpoint last, so a cached checkpoint means the whole version is there.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec
from filelock import FileLock
from fsspec.implementations.local import LocalFileSystem

from service.registry.base import (
    CARD_FILE,
    CHECKPOINT_FILE,
    ModelRegistry,
    RegistryError,
    is_version,
    local_cache,
    version_number,
)

ALIASES_FILE = "aliases.json"
LOCK_TIMEOUT_S = 120


class FolderRegistry(ModelRegistry):
    def __init__(self, url: str | os.PathLike[str], model_name: str = "mnist-cnn") -> None:
        self.url = str(url)
        self.model_name = model_name
        self.fs, root = fsspec.core.url_to_fs(self.url)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root = f"{root.rstrip('/')}/{model_name}"
        self._cache = local_cache(self.url)
        lock_dir = Path(self.root) if self.is_local else self._cache
        self._lock_path = str(lock_dir / ".registry.lock")

    def versions(self) -> list[str]:
        if not self.fs.exists(self.root):
            return []
        names = [Path(entry).name for entry in self.fs.ls(self.root, detail=False)]
        return sorted((name for name in names if is_version(name)), key=version_number)

    def aliases(self) -> dict[str, str]:
        path = f"{self.root}/{ALIASES_FILE}"
        if not self.fs.exists(path):
            return {}
        try:
            return dict(json.loads(self.fs.cat_file(path)))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise RegistryError(f"{path} is corrupt ({exc}); restore it from a backup") from exc

    def _read_card(self, version: str) -> dict[str, Any]:
        return dict(json.loads(self.fs.cat_file(f"{self.root}/{version}/{CARD_FILE}")))

    def _fetch(self, version: str) -> Path:
        remote = f"{self.root}/{version}"
        if self.is_local:
            return Path(remote)
        folder = self._cache / self.model_name / version
        if not (folder / CHECKPOINT_FILE).exists():
            folder.mkdir(parents=True, exist_ok=True)
            names = [Path(name).name for name in self.fs.ls(remote, detail=False)]
            for name in sorted(names, key=lambda name: name == CHECKPOINT_FILE):
                partial = folder / f".{name}.{uuid.uuid4().hex}.part"
                self.fs.get_file(f"{remote}/{name}", str(partial))
                os.replace(partial, folder / name)
        return folder

    def _store(self, version: str, files: dict[str, Path], card: dict[str, Any]) -> str:
        staging = f"{self.root}/.staging-{uuid.uuid4().hex}"
        self.fs.makedirs(staging, exist_ok=True)
        for name, source in files.items():
            self.fs.put_file(str(source), f"{staging}/{name}")
        self.fs.pipe_file(f"{staging}/{CARD_FILE}", json.dumps(card, indent=2).encode())
        self.fs.mv(staging, f"{self.root}/{version}", recursive=True)
        return version

    def _write_aliases(self, aliases: dict[str, str]) -> None:
        body = json.dumps(aliases, indent=2, sort_keys=True).encode()
        target = f"{self.root}/{ALIASES_FILE}"
        if self.is_local:
            fd, temporary = tempfile.mkstemp(dir=self.root, prefix=".aliases.")
            with os.fdopen(fd, "wb") as handle:
                handle.write(body)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        else:  # object stores replace a whole object atomically
            self.fs.pipe_file(target, body)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.fs.makedirs(self.root, exist_ok=True)
        Path(self._lock_path).parent.mkdir(parents=True, exist_ok=True)
        with FileLock(self._lock_path, timeout=LOCK_TIMEOUT_S):
            yield
