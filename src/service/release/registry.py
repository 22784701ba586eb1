"""A versioned model registry in a folder or any fsspec URL (``models/``, ``s3://b/models``).

Layout::

    <root>/<model>/v1/model.safetensors   immutable once published
    <root>/<model>/v1/model-card.json     the run record's lineage
    <root>/<model>/aliases.json           {"production": "v2", "previous": "v1", ...}

Publishing and alias moves happen under a lock, and aliases.json is replaced atomically
(write then rename), so concurrent releases never corrupt it or lose a version.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fsspec
from filelock import FileLock
from fsspec.implementations.local import LocalFileSystem

CHECKPOINT_FILE = "model.safetensors"
CARD_FILE = "model-card.json"
ALIASES_FILE = "aliases.json"
PRODUCTION, PREVIOUS = "production", "previous"
_VERSION = re.compile(r"^v(\d+)$")
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


class RegistryError(RuntimeError):
    """The registry cannot do what was asked; the message says why and what to do."""


class Registry:
    def __init__(self, url: str | os.PathLike[str], model_name: str = "mnist-cnn") -> None:
        self.url = str(url)
        self.model_name = model_name
        self.fs, root = fsspec.core.url_to_fs(self.url)
        self.is_local = isinstance(self.fs, LocalFileSystem)
        self.root = f"{root.rstrip('/')}/{model_name}"
        lock_dir = Path(self.root) if self.is_local else _remote_lock_dir(self.url)
        self._lock_path = str(Path(lock_dir) / ".registry.lock")

    # --- reading -----------------------------------------------------------------------------

    def versions(self) -> list[str]:
        if not self.fs.exists(self.root):
            return []
        names = [Path(entry).name for entry in self.fs.ls(self.root, detail=False)]
        found = [name for name in names if _VERSION.match(name)]
        return sorted(found, key=lambda name: int(name[1:]))

    def aliases(self) -> dict[str, str]:
        path = f"{self.root}/{ALIASES_FILE}"
        if not self.fs.exists(path):
            return {}
        try:
            return dict(json.loads(self.fs.cat_file(path)))
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            raise RegistryError(f"{path} is corrupt ({exc}); restore it from a backup") from exc

    def resolve(self, ref: str) -> str:
        """An alias or a version -> the version it names."""
        aliases = self.aliases()
        version = aliases.get(ref, ref)
        if not _VERSION.match(version) or version not in self.versions():
            if ref in aliases:
                raise RegistryError(
                    f"alias {ref!r} of {self.model_name} points at {version!r}, which is missing"
                )
            hint = (
                "run `lab2prod release` to train, gate and publish one"
                if not self.versions()
                else f"known versions: {', '.join(self.versions())}; aliases: {aliases or 'none'}"
            )
            raise RegistryError(
                f"no model {ref!r} for {self.model_name} in registry {self.url}: {hint}"
            )
        return version

    def card(self, ref: str) -> dict[str, Any]:
        version = self.resolve(ref)
        return dict(json.loads(self.fs.cat_file(f"{self.root}/{version}/{CARD_FILE}")))

    def checkpoint_path(self, ref: str) -> Path:
        """A local path to the version's checkpoint (downloaded and cached for remote URLs)."""
        version = self.resolve(ref)
        remote = f"{self.root}/{version}/{CHECKPOINT_FILE}"
        if self.is_local:
            return Path(remote)
        folder = _remote_lock_dir(self.url) / self.model_name / version
        cached = folder / CHECKPOINT_FILE
        if not cached.exists():  # the whole version (checkpoint last: its presence means done)
            folder.mkdir(parents=True, exist_ok=True)
            files = [Path(name).name for name in self.fs.ls(remote.rsplit("/", 1)[0], detail=False)]
            for name in sorted(files, key=lambda name: name == CHECKPOINT_FILE):
                partial = folder / f".{name}.{uuid.uuid4().hex}.part"
                self.fs.get_file(f"{self.root}/{version}/{name}", str(partial))
                os.replace(partial, folder / name)
        return cached

    # --- writing -----------------------------------------------------------------------------

    def publish(
        self,
        checkpoint: str | Path,
        card: dict[str, Any],
        *,
        aliases: tuple[str, ...] = (PRODUCTION,),
        expect: dict[str, str | None] | None = None,
        artefacts: Sequence[str | Path] = (),
    ) -> str:
        """Copy a checkpoint in as the next version and move ``aliases`` to it; returns the version.

        ``artefacts`` (exported runtimes such as ``model.<sha>.int8.onnx``, checked by the gate)
        are published beside the checkpoint under their own names, so serving never has to
        build them and a version's folder never changes after publishing.

        ``expect`` ({alias: version or None}) makes the publish conditional: when an alias no
        longer names what the caller compared against (another release moved it meanwhile),
        nothing is written and RegistryError says so.
        """
        checkpoint = Path(checkpoint)
        digest = _file_digest(checkpoint)
        with self._locked():
            current = self.aliases()
            for alias, wanted in (expect or {}).items():
                if current.get(alias) != wanted:
                    raise RegistryError(
                        f"{self.model_name} {alias!r} moved to {current.get(alias) or 'nothing'} "
                        f"while this release was compared against {wanted or 'nothing'}; "
                        "run the release again to compare against the new model"
                    )
            existing = self.versions()
            version = f"v{int(existing[-1][1:]) + 1 if existing else 1}"
            staging = f"{self.root}/.staging-{uuid.uuid4().hex}"
            full_card = {
                **card,
                "model": self.model_name,
                "version": version,
                "published_at": datetime.now(UTC).isoformat(),
                "checkpoint_sha256": digest,
            }
            self.fs.makedirs(staging, exist_ok=True)
            self.fs.put_file(str(checkpoint), f"{staging}/{CHECKPOINT_FILE}")
            for artefact in map(Path, artefacts):
                if artefact.name in (CHECKPOINT_FILE, CARD_FILE):
                    raise RegistryError(
                        f"artefact {artefact} would overwrite the version's {artefact.name}"
                    )
                self.fs.put_file(str(artefact), f"{staging}/{artefact.name}")
            self.fs.pipe_file(f"{staging}/{CARD_FILE}", json.dumps(full_card, indent=2).encode())
            self.fs.mv(staging, f"{self.root}/{version}", recursive=True)
            for alias in aliases:
                self._move_alias(alias, version)
        return version

    def promote(self, ref: str, alias: str = PRODUCTION) -> str:
        """Point ``alias`` at a version; moving production keeps the old one as ``previous``."""
        with self._locked():
            version = self.resolve(ref)
            self._move_alias(alias, version)
        return version

    def rollback(self) -> str:
        """Swap production and previous; returns the version now in production."""
        nothing = f"nothing to roll back to: {self.model_name} has no 'previous' alias"
        if PREVIOUS not in self.aliases():  # checked before locking: no folder made for nothing
            raise RegistryError(nothing)
        with self._locked():
            aliases = self.aliases()
            if PREVIOUS not in aliases:
                raise RegistryError(nothing)
            target = self.resolve(PREVIOUS)
            self._move_alias(PRODUCTION, target)
        return target

    def _move_alias(self, alias: str, version: str) -> None:
        check_alias(alias)
        aliases = self.aliases()
        if alias == PRODUCTION and aliases.get(PRODUCTION) not in (None, version):
            aliases[PREVIOUS] = aliases[PRODUCTION]
        aliases[alias] = version
        self._write_aliases(aliases)

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
        with FileLock(self._lock_path, timeout=120):
            yield


def check_alias(alias: str) -> str:
    """Refuse alias names that could be mistaken for versions or paths."""
    if not _ALIAS.match(alias) or _VERSION.match(alias):
        raise RegistryError(
            f"alias {alias!r} is not allowed: use letters, digits, '.', '_' or '-', "
            "starting with a letter, and not of the form v<N>"
        )
    return alias


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def _remote_lock_dir(url: str) -> Path:
    """Local cache and lock folder for a remote registry (locks guard this machine only)."""
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "lab2prod-registry" / key
