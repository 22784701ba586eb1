"""Model versions side by side: each loaded, verified and warmed before it takes traffic, each with
its own micro-batcher, and the registry's aliases followed as they move.

The pool *follows* a set of aliases: ``MODEL_ALIAS`` always, plus the canary and shadow aliases of
the traffic policy. Each followed alias's version is kept loaded; when the registry moves the alias
(``lab2prod release``, ``promote``, ``rollback``), the new version is loaded beside the old one and
the alias switches with one assignment, so requests in flight finish on the version they started
on and no request fails. A request pinned to another version (``X-Model-Version: v3``) loads that
version on first use. At most ``MAX_LOADED_VERSIONS`` stay loaded: past that, the least recently
used version that no followed alias names is closed (its queued inputs finish first).

A version that cannot be loaded (corrupt, missing files, a runtime that misses here) is logged
with the reason, reported by ``/ready`` while an alias points at it, and retried after a backoff
(``LOAD_RETRY_S`` doubling up to ``LOAD_RETRY_MAX_S``), or at once when an alias moves onto it
again: a repaired version is picked up, and replicas do not diverge for good.

The pool returns probabilities ([C] float32 rows); turning them into answers is the API's job.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.inference.batcher import MicroBatcher
from service.inference.loader import load_runtime
from service.inference.runtime import LoadedModel, RuntimeUnavailable
from service.ml.checkpoint import CheckpointError
from service.ml.preprocess import IMAGE_SIDE, normalize_array
from service.ml.threads import set_compute_threads
from service.monitoring import metrics
from service.monitoring.monitor import DriftMonitor, VersionDrift
from service.monitoring.reference import DriftReference
from service.registry import ModelRegistry, RegistryError, is_version, open_registry
from service.settings import Settings

log = logging.getLogger(__name__)
FIX = "run `lab2prod release` to train, gate and publish one (or set REGISTRY_URL / MODEL_ALIAS)"
LOAD_RETRY_S, LOAD_RETRY_MAX_S = 10.0, 300.0
CATALOG_REFRESH_MIN_S = 1.0  # an unknown pin re-reads the registry at most this often
SHADOW_NICENESS, SHADOW_QUEUE = 19, 64  # shadow copies: lowest priority, few waiting


class VersionNotFound(LookupError):
    """No such version or alias in the registry (the API answers 404 with the known ones)."""


class VersionUnavailable(RuntimeError):
    """The version exists but cannot be served here now; the message says why."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Overloaded(RuntimeError):
    """The device ran out of memory for this batch; retry later."""


@dataclass
class ServedVersion:
    """One loaded version: its runtime, card and micro-batcher, and what it has served."""

    version: str
    model: LoadedModel
    card: dict[str, Any]
    max_batch_size: int
    loaded_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    inputs_served: int = 0  # inputs this version computed (cache hits not counted)
    drift: VersionDrift | None = None  # watches those inputs when the version has a reference
    batcher: MicroBatcher[np.ndarray, np.ndarray] = field(init=False)
    _shadow_batcher: MicroBatcher[np.ndarray, np.ndarray] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self.normalization = self.model.normalization
        self._predicted = [metrics.PREDICTIONS.labels(self.version, name)
                           for name in self.model.class_names]

    def start(self, *, max_wait_ms: float, max_queue_size: int) -> ServedVersion:
        """Warm up (first calls allocate and pick kernels), then start taking batches."""
        for size in sorted({1, self.max_batch_size}):
            zeros = np.zeros((size, IMAGE_SIDE, IMAGE_SIDE), dtype=np.uint8)
            if len(self._run(zeros)) != size:
                raise VersionUnavailable(f"{self.version} failed its warm-up")
        self.batcher = MicroBatcher(
            self.predict, max_batch_size=self.max_batch_size, max_wait_ms=max_wait_ms,
            max_queue_size=max_queue_size, name=f"inference-{self.version}",
            on_batch=metrics.batch_observer(self.version),
        ).start()
        return self

    @property
    def shadow_batcher(self) -> MicroBatcher[np.ndarray, np.ndarray]:
        """A second batcher for shadow copies, whose thread runs at the lowest CPU priority: on
        a shared core it uses only the time client requests leave (started on first use)."""
        if self._shadow_batcher is None:
            self._shadow_batcher = MicroBatcher(
                self.predict, max_batch_size=self.max_batch_size, max_queue_size=SHADOW_QUEUE,
                name=f"shadow-{self.version}", niceness=SHADOW_NICENESS,
            ).start()
        return self._shadow_batcher

    def predict(self, digits: list[np.ndarray]) -> list[np.ndarray]:
        """The batchers' handler (inference thread): uint8 digits -> probability rows."""
        batch = np.stack(digits)
        rows = self._run(batch)
        self.inputs_served += len(digits)
        for index, count in enumerate(np.bincount(rows.argmax(axis=1),
                                                  minlength=len(self._predicted))):
            if count:
                self._predicted[index].inc(int(count))
        if self.drift is not None:
            self.drift.observe(batch, rows)
        return list(rows)

    def _run(self, digits: np.ndarray) -> np.ndarray:
        batch = normalize_array(digits, self.normalization)
        try:
            probabilities = self.model.runtime.predict_proba(batch)
        except Exception as exc:
            if not _out_of_gpu_memory(exc):
                raise
            sys.modules["torch"].cuda.empty_cache()
            raise Overloaded(f"the GPU ran out of memory for a batch of {len(digits)}") from exc
        return np.asarray(probabilities, dtype=np.float32)

    def close(self) -> None:
        self.batcher.close()
        if self._shadow_batcher is not None:
            self._shadow_batcher.close()

    def describe(self) -> dict[str, Any]:
        """For GET /admin/models and /model-info."""
        parameters = getattr(self.model.runtime, "model", None)
        weights = sum(t.numel() * t.element_size() for t in parameters.parameters()) \
            if callable(getattr(parameters, "parameters", None)) else None  # a torch module
        artifact = getattr(self.model.runtime, "artifact", None)
        return {
            "version": self.version,
            **self.model.runtime_status(),
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
            "inputs_served": self.inputs_served,
            "queue_depth": self.batcher.depth,
            "memory": {"weights_bytes": weights,
                       "artifact_bytes": artifact.stat().st_size if artifact else None},
        }


@dataclass
class _Failure:
    reason: str
    at: float
    attempts: int

    @property
    def retry_at(self) -> float:
        return self.at + min(LOAD_RETRY_S * 2 ** (self.attempts - 1), LOAD_RETRY_MAX_S)


def _out_of_gpu_memory(exc: Exception) -> bool:
    torch = sys.modules.get("torch")  # without torch loaded, nothing ran on a GPU
    return torch is not None and isinstance(exc, torch.cuda.OutOfMemoryError)


class ModelPool:
    def __init__(self, settings: Settings, registry: ModelRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or open_registry(settings.registry_url, settings.model_name)
        self.default_alias = settings.model_alias
        self._served: dict[str, ServedVersion] = {}  # version -> loaded
        self._following: dict[str, str] = {}  # followed alias -> the version it serves now
        self._follow: set[str] = {self.default_alias}
        self._aliases: dict[str, str] = {}  # the registry's aliases, as last read
        self._versions: set[str] = set()
        self._catalog_read_at = 0.0
        self._loading: dict[str, asyncio.Future[ServedVersion]] = {}
        self._failures: dict[str, _Failure] = {}
        self.alias_failures: dict[str, str] = {}  # followed alias -> why its target is not served
        self.drift = DriftMonitor.from_settings(settings)

    # --- the registry's names -----------------------------------------------------------------

    def read_catalog(self) -> None:
        """Read the registry's aliases and versions (I/O: call off the event loop)."""
        try:
            aliases, versions = self.registry.aliases(), self.registry.versions()
        except RegistryError as exc:
            raise VersionUnavailable(f"the model registry cannot be read: {exc}") from exc
        except Exception as exc:  # an unreachable or unreadable store (fsspec, OS errors)
            raise VersionUnavailable(
                f"the model registry {self.registry.url!r} is unreachable "
                f"({type(exc).__name__}: {exc}). Fix: check REGISTRY_URL"
            ) from exc
        self._aliases, self._versions = aliases, set(versions)
        self._catalog_read_at = time.monotonic()

    def resolve(self, ref: str) -> str:
        """An alias or a version -> the version, from the registry as last read."""
        version = self._following.get(ref) or self._aliases.get(ref, ref)
        if is_version(version) and version in self._versions:
            return version
        known = ", ".join(self.versions) or "none"
        named = ", ".join(f"{a} -> {v}" for a, v in sorted(self._aliases.items())) or "none"
        raise VersionNotFound(
            f"no model version {ref!r} of {self.settings.model_name}: known versions {known}; "
            f"aliases {named}"
        )

    @property
    def versions(self) -> list[str]:
        """The registry's versions as last read, oldest first."""
        return sorted(self._versions, key=lambda v: int(v[1:]))

    async def resolve_fresh(self, ref: str) -> str:
        """Like ``resolve``, reading the registry again first when the name is not known yet."""
        try:
            return self.resolve(ref)
        except VersionNotFound:
            if time.monotonic() - self._catalog_read_at < CATALOG_REFRESH_MIN_S:
                raise
        await asyncio.to_thread(self.read_catalog)
        return self.resolve(ref)

    # --- serving ------------------------------------------------------------------------------

    def lookup(self, ref: str) -> ServedVersion | None:
        """The loaded version ``ref`` names (an alias or a version), without waiting; the hot
        path's call."""
        served = self._served.get(self._following.get(ref) or self._aliases.get(ref, ref))
        if served is not None:
            served.last_used = time.monotonic()
        return served

    async def get(self, ref: str) -> ServedVersion:
        """The version ``ref`` names, loaded if it is not yet. VersionNotFound for a name the
        registry does not know; VersionUnavailable when it cannot be served now."""
        served = self.lookup(ref)
        if served is not None:
            return served
        return await self.load(await self.resolve_fresh(ref))

    @property
    def default(self) -> ServedVersion | None:
        return self.lookup(self.default_alias)

    @property
    def ready(self) -> bool:
        return self.default_alias in self._following and bool(self._served)

    def serving(self, alias: str) -> bool:
        """Whether a followed alias has a loaded version (the router sends it traffic)."""
        return alias in self._following

    # --- loading ------------------------------------------------------------------------------

    def start(self, aliases: Iterable[str] = ()) -> ServedVersion:
        """Before serving (no event loop needed): read the registry and load the default
        alias's version, raising VersionUnavailable/VersionNotFound with the fix; then the other
        followed aliases, whose failures are logged and reported, not raised."""
        set_compute_threads(self.settings.torch_threads)  # before warm-up picks its kernels
        self._follow = {self.default_alias, *aliases}
        self.read_catalog()
        try:
            version = self.resolve(self.default_alias)
        except VersionNotFound as exc:
            raise VersionNotFound(f"no model to serve: {exc}. Fix: {FIX}") from None
        self._admit(self._build(version), [self.default_alias])
        for alias in sorted(self._follow - {self.default_alias}):
            try:
                self._admit(self._build(self.resolve(alias)), [alias])
            except (VersionNotFound, VersionUnavailable) as exc:
                self.alias_failures[alias] = str(exc)
                log.error("alias %s cannot be served yet: %s", alias, exc)
        return self._served[version]

    async def load(self, version: str) -> ServedVersion:
        """Load ``version`` off the event loop (once, however many requests ask)."""
        served = self._served.get(version)
        if served is not None:
            return served
        failure = self._failures.get(version)
        if failure is not None and time.time() < failure.retry_at:
            raise VersionUnavailable(failure.reason, retry_after=failure.retry_at - time.time())
        pending = self._loading.get(version)
        if pending is None:
            pending = self._loading[version] = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().create_task(self._load_into(version, pending))
        return await asyncio.shield(pending)

    async def _load_into(self, version: str, pending: asyncio.Future[ServedVersion]) -> None:
        try:
            served = await asyncio.to_thread(self._build, version)
        except VersionUnavailable as exc:
            previous = self._failures.get(version)
            failure = self._failures[version] = _Failure(
                str(exc), time.time(), previous.attempts + 1 if previous else 1)
            metrics.MODEL_RELOADS.labels("error").inc()
            # the reason goes to whoever asked: the alias follower's log, a pinned request's 503
            log.warning("version %s failed to load (attempt %d); not tried again for %.0f s",
                        version, failure.attempts, failure.retry_at - time.time())
            pending.set_exception(exc)
        else:
            self._admit(served, [])
            metrics.MODEL_RELOADS.labels("ok").inc()
            pending.set_result(served)
        finally:
            self._loading.pop(version, None)
            if not pending.done():  # cancelled while loading: waiters are told, never left
                pending.set_exception(VersionUnavailable(f"loading {version} was interrupted"))
            pending.exception()  # retrieved, so an unawaited failure is not reported as lost

    def _build(self, version: str) -> ServedVersion:
        """Fetch, load through the one loader (runtime verified here), warm up (blocking)."""
        name = self.settings.model_name
        try:
            card = self.registry.card(version)
            path = self.registry.checkpoint_path(version)
            model = load_runtime(
                path, runtime=self.settings.runtime, device=self.settings.device,
                version=version, selection=card.get("runtimes"), read_only=True,
            )
            reference = DriftReference.find(path.parent, model.metadata.get("weights_sha256"))
            served = ServedVersion(version, model, card, self.settings.max_batch_size)
            served.start(max_wait_ms=self.settings.max_batch_wait_ms,
                         max_queue_size=self.settings.max_queue_size)
            served.drift = self.drift.track(version, reference)
            return served
        except (RuntimeUnavailable, CheckpointError) as exc:
            raise VersionUnavailable(
                f"{name} {version} cannot be served: {exc}. Fix: roll back with "
                f"`lab2prod models rollback`, or {FIX}", retry_after=LOAD_RETRY_S,
            ) from exc
        except (RegistryError, OSError, ValueError) as exc:
            raise VersionUnavailable(
                f"cannot load {name} {version} from {self.registry.url!r} "
                f"({type(exc).__name__}: {exc}). Fix: check REGISTRY_URL, or {FIX}",
                retry_after=LOAD_RETRY_S,
            ) from exc

    def _admit(self, served: ServedVersion, aliases: list[str]) -> None:
        self._served[served.version] = served
        self._failures.pop(served.version, None)
        for alias in aliases:
            self._point(alias, served)
        self._evict(keep=served.version)
        metrics.LOADED_VERSIONS.set(len(self._served))
        if served.model.verification is not None:
            metrics.RUNTIME_AGREEMENT.labels(served.version, served.model.runtime_name).set(
                served.model.verification.agreement.agreement)
        log.info("loaded model version", extra={
            "model": self.settings.model_name, "version": served.version,
            "runtime": served.model.runtime_status(),
        })

    def _point(self, alias: str, served: ServedVersion) -> None:
        """Move a followed alias to a loaded version: one assignment, seen by the next request."""
        self._following[alias] = served.version
        self.alias_failures.pop(alias, None)
        metrics.MODEL_INFO.labels(alias).info({
            "name": self.settings.model_name, "version": served.version,
            "runtime": served.model.runtime_name, "device": str(served.model.runtime.device),
        })
        if alias == self.default_alias:
            metrics.MODEL_READY.set(1)

    def _evict(self, keep: str) -> None:
        protected = {*self._following.values(), keep}
        while len(self._served) > self.settings.max_loaded_versions:
            idle = [s for s in self._served.values() if s.version not in protected]
            if not idle:
                return  # every loaded version is an alias target: nothing may go
            oldest = min(idle, key=lambda s: s.last_used)
            del self._served[oldest.version]
            self.drift.untrack(oldest.version)
            log.info("unloading %s (least recently used; %d versions at most)",
                     oldest.version, self.settings.max_loaded_versions)
            try:
                asyncio.get_running_loop().run_in_executor(None, oldest.close)
            except RuntimeError:  # no event loop (start-up): close here
                oldest.close()

    # --- following the aliases ----------------------------------------------------------------

    @property
    def following(self) -> dict[str, str]:
        """Followed alias -> the version it serves now."""
        return dict(self._following)

    async def adopt(self, aliases: Iterable[str]) -> None:
        """Load and follow ``aliases`` (besides MODEL_ALIAS) now, all or nothing: VersionNotFound
        or VersionUnavailable leave what is followed unchanged."""
        aliases = set(aliases)
        await asyncio.to_thread(self.read_catalog)
        loaded = {alias: await self.load(self.resolve(alias)) for alias in sorted(aliases)}
        self.follow(aliases)
        for alias, served in loaded.items():
            self._point(alias, served)

    def follow(self, aliases: Iterable[str]) -> None:
        """The aliases to keep loaded besides MODEL_ALIAS (the traffic policy's)."""
        wanted = {self.default_alias, *aliases}
        for alias in set(self._following) - wanted:
            del self._following[alias]
            self.alias_failures.pop(alias, None)
        self._follow = wanted

    async def refresh(self) -> dict[str, str]:
        """Read the registry and load what the followed aliases point at now; returns, per
        alias that could not move, why. Requests keep being served by the loaded versions."""
        previous = dict(self._aliases)
        try:
            await asyncio.to_thread(self.read_catalog)
        except VersionUnavailable as exc:
            log.warning("cannot check the model aliases; still serving %s: %s",
                        self._following, exc)
            return {alias: str(exc) for alias in self._follow}
        for alias in sorted(self._follow):
            target = self._aliases.get(alias)
            if target is not None and target != previous.get(alias):
                self._failures.pop(target, None)  # moved onto it again: try it now
            await self._follow_one(alias, target)
        return dict(self.alias_failures)

    async def _follow_one(self, alias: str, target: str | None) -> None:
        current = self._following.get(alias)
        if target is None:
            if current is not None or alias not in self.alias_failures:
                self.alias_failures[alias] = f"alias {alias!r} is not in the registry"
                log.warning("alias %s is not in the registry; still serving %s", alias, current)
            return
        if target == current:  # e.g. moved back from a version that could not be served
            if self.alias_failures.pop(alias, None) is not None:
                log.info("alias %s is back on %s, which is served", alias, target)
            return
        try:
            served = await self.load(target)
        except (VersionUnavailable, VersionNotFound) as exc:
            reason = f"{alias} -> {target}: {exc}"
            if self.alias_failures.get(alias) != reason:  # once per failure, not every poll
                log.error("alias %s moved to %s but it cannot be served; still serving %s: %s",
                          alias, target, current, exc)
            self.alias_failures[alias] = reason
            return
        self._point(alias, served)
        log.info("alias moved", extra={"alias": alias, "previous": current, "version": target})

    async def watch(self) -> None:
        """Follow the aliases every MODEL_POLL_INTERVAL_S until cancelled."""
        interval = self.settings.model_poll_interval_s
        if interval <= 0:
            return
        while True:
            await asyncio.sleep(interval)
            await self.refresh()

    # --- description --------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """For /ready: the default alias's version and runtime, and what cannot be served."""
        default = self._served.get(self._following.get(self.default_alias, ""))
        if default is None:
            return {"loaded": False, "warm": False, "version": None,
                    "alias_failures": dict(self.alias_failures)}
        verification = default.model.verification
        return {
            "loaded": True, "warm": True, "version": default.version,
            "runtime": default.model.runtime_name,
            "agreement": verification.agreement.agreement if verification else None,
            "loaded_versions": sorted(self._served, key=lambda v: int(v[1:])),
            "alias_failures": dict(self.alias_failures),
        }

    def describe(self) -> dict[str, Any]:
        """For GET /admin/models: every loaded version, which aliases it serves, failures."""
        aliases: dict[str, list[str]] = {}
        for alias, version in sorted(self._following.items()):
            aliases.setdefault(version, []).append(alias)
        return {
            "max_loaded_versions": self.settings.max_loaded_versions,
            "loaded": [{**served.describe(), "aliases": aliases.get(version, [])}
                       for version, served in sorted(self._served.items(),
                                                     key=lambda item: int(item[0][1:]))],
            "alias_failures": dict(self.alias_failures),
            "failed_versions": {v: {"reason": f.reason, "attempts": f.attempts,
                                    "retry_in_s": round(max(0.0, f.retry_at - time.time()), 1)}
                                for v, f in self._failures.items()},
        }

    def observe_queues(self) -> None:
        """Set each loaded version's queue-depth gauge (at scrape time)."""
        for version, served in list(self._served.items()):
            metrics.QUEUE_DEPTH.labels(version).set(served.batcher.depth)

    def info(self, ref: str | None = None) -> dict[str, Any]:
        """For /model-info: a served version's runtime, card and checks (the default alias's);
        what it holds changes only when another version is loaded (so its ETag is stable)."""
        served = self.lookup(ref or self.default_alias)
        base = {"model": self.settings.model_name, "alias": self.default_alias}
        if served is None:
            return {**base, "loaded": False}
        model = served.model
        return {
            **base,
            "version": served.version,
            "loaded": True,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(served.loaded_at)),
            **model.runtime_status(),
            "architecture": model.metadata.get("architecture"),
            "class_names": model.class_names,
            "normalization": served.normalization.as_dict(),
            "weights_sha256": model.metadata.get("weights_sha256"),
            "card": served.card,
        }

    def close(self) -> None:
        for served in list(self._served.values()):
            served.close()
            self.drift.untrack(served.version)
        self._served.clear()
        self._following.clear()
        metrics.MODEL_READY.set(0)
        metrics.LOADED_VERSIONS.set(0)
