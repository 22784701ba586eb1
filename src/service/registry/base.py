"""The model registry interface: immutable versions, aliases, cards, and the files of a version.

``ModelRegistry`` holds what every backend shares: resolving ``v3`` or an alias, the alias rules
(moving ``production`` keeps the old target as ``previous``; rollback swaps them), the conditional
publish (refused when an alias moved since the caller looked) and the layout of a version's files.
A backend supplies the storage primitives: list versions, read and write aliases, read a card,
fetch a version's files to a local folder, store a new version, and a lock around changes. A
store that numbers versions itself (MLflow) keeps that numbering: ``_store`` returns the version
the store made, so our ``v<N>`` is never counted apart from the store's own ``N``.

Where a version's files live is the backend's business: callers ask for ``fetch(ref)``, a local
folder holding ``model.safetensors`` and whatever was published beside it (exported runtimes, the
verification set), and never write into it.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.ml.records import CHECKPOINT_FILE

CARD_FILE = "model-card.json"
PRODUCTION, PREVIOUS, CANDIDATE = "production", "previous", "candidate"
_VERSION = re.compile(r"^v(\d+)$")
_ALIAS = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


class RegistryError(RuntimeError):
    """The registry cannot do what was asked; the message says why and what to do."""


def is_version(name: str) -> bool:
    return bool(_VERSION.match(name))


def version_number(name: str) -> int:
    return int(name[1:])


def check_alias(alias: str) -> str:
    """Refuse alias names that could be mistaken for versions or paths."""
    if not _ALIAS.match(alias) or _VERSION.match(alias):
        raise RegistryError(
            f"alias {alias!r} is not allowed: use letters, digits, '.', '_' or '-', "
            "starting with a letter, and not of the form v<N>"
        )
    return alias


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def local_cache(url: str) -> Path:
    """Local cache (and lock) folder for a remote registry: versions fetched from ``url``."""
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "lab2prod-registry" / key


class ModelRegistry(ABC):
    """One model's versions and aliases in some store (see ``service.registry.open_registry``)."""

    url: str
    model_name: str

    # --- what a backend provides ---------------------------------------------------------------

    @abstractmethod
    def versions(self) -> list[str]:
        """Published versions, oldest first (``["v1", "v2"]``)."""

    @abstractmethod
    def aliases(self) -> dict[str, str]:
        """Alias -> version."""

    @abstractmethod
    def _read_card(self, version: str) -> dict[str, Any]: ...

    @abstractmethod
    def _fetch(self, version: str) -> Path:
        """A local folder with the version's files (the store's own folder, or a cached copy)."""

    @abstractmethod
    def _store(self, version: str, files: dict[str, Path], card: dict[str, Any]) -> str:
        """Write a new version whole (files by name, and its card), or nothing; returns it.

        ``version`` is the next one as ``versions()`` counts; a store that numbers versions
        itself stores under its own number, writes that into the card and returns it.
        """

    @abstractmethod
    def _write_aliases(self, aliases: dict[str, str]) -> None: ...

    @abstractmethod
    def _locked(self) -> contextlib.AbstractContextManager[None]:
        """Serialises publishes and alias moves (as far as the store allows)."""

    def validate_alias(self, alias: str) -> str:
        """Refuse an alias this registry cannot hold (before anything is written)."""
        return check_alias(alias)

    # --- reading -------------------------------------------------------------------------------

    def resolve(self, ref: str) -> str:
        """An alias or a version -> the version it names."""
        aliases = self.aliases()
        version = aliases.get(ref, ref)
        known = self.versions()
        if not is_version(version) or version not in known:
            if ref in aliases:
                raise RegistryError(
                    f"alias {ref!r} of {self.model_name} points at {version!r}, which is missing"
                )
            hint = (
                "run `lab2prod release` to train, gate and publish one"
                if not known
                else f"known versions: {', '.join(known)}; aliases: "
                f"{', '.join(f'{a} -> {v}' for a, v in sorted(aliases.items())) or 'none'}"
            )
            raise RegistryError(
                f"no model {ref!r} for {self.model_name} in registry {self.url}: {hint}"
            )
        return version

    def card(self, ref: str) -> dict[str, Any]:
        return self._read_card(self.resolve(ref))

    def fetch(self, ref: str) -> Path:
        """A local folder holding the version's files; read it, never write into it."""
        return self._fetch(self.resolve(ref))

    def checkpoint_path(self, ref: str) -> Path:
        return self.fetch(ref) / CHECKPOINT_FILE

    # --- writing -------------------------------------------------------------------------------

    def publish(
        self,
        checkpoint: str | Path,
        card: dict[str, Any],
        *,
        aliases: tuple[str, ...] = (PRODUCTION,),
        expect: dict[str, str | None] | None = None,
        artefacts: Sequence[str | Path] = (),
    ) -> str:
        """Store a checkpoint as the next version and move ``aliases`` to it; returns the version.

        ``artefacts`` (exported runtimes, the verification set) are published beside the
        checkpoint under their own names, so a version never changes after publishing.
        ``expect`` ({alias: version or None}) makes the publish conditional: when an alias no
        longer names what the caller compared against (another release moved it meanwhile),
        nothing is written and RegistryError says so.
        """
        checkpoint = Path(checkpoint)
        for alias in aliases:
            self.validate_alias(alias)
        files = {CHECKPOINT_FILE: checkpoint}
        for artefact in map(Path, artefacts):
            if artefact.name in (CHECKPOINT_FILE, CARD_FILE):
                raise RegistryError(
                    f"artefact {artefact} would overwrite the version's {artefact.name}"
                )
            files[artefact.name] = artefact
        digest = file_digest(checkpoint)
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
            version = f"v{version_number(existing[-1]) + 1 if existing else 1}"
            version = self._store(version, files, {
                **card,
                "model": self.model_name,
                "version": version,
                "published_at": datetime.now(UTC).isoformat(),
                "checkpoint_sha256": digest,
            })
            self._move_aliases(aliases, version)
        return version

    def promote(self, ref: str, alias: str = PRODUCTION) -> str:
        """Point ``alias`` at a version; moving production keeps the old one as ``previous``."""
        self.validate_alias(alias)
        with self._locked():
            version = self.resolve(ref)
            self._move_aliases((alias,), version)
        return version

    def rollback(self) -> str:
        """Swap production and previous; returns the version now in production."""
        nothing = f"nothing to roll back to: {self.model_name} has no 'previous' alias"
        if PREVIOUS not in self.aliases():  # checked before locking: nothing made for nothing
            raise RegistryError(nothing)
        with self._locked():
            if PREVIOUS not in self.aliases():
                raise RegistryError(nothing)
            target = self.resolve(PREVIOUS)
            self._move_aliases((PRODUCTION,), target)
        return target

    def _move_aliases(self, names: tuple[str, ...], version: str) -> None:
        aliases = self.aliases()
        for alias in names:
            if alias == PRODUCTION and aliases.get(PRODUCTION) not in (None, version):
                aliases[PREVIOUS] = aliases[PRODUCTION]
            aliases[alias] = version
        self._write_aliases(aliases)

