"""``lab2prod release``: papermill runs, the gate, and publishing, with one run record.

A run lives in ``<runs_dir>/<run_id>/``: the executed ``train.ipynb`` and ``evaluate.ipynb``
(kept even when a cell fails), their HTML renderings, what the notebooks wrote
(``model.safetensors``, ``train.json``, ``evaluation.json``) and ``run.json``, the record
of the whole run with the gate's verdict. The registry is written only when the gate passes.
With MLFLOW_TRACKING_URI set, the finished run is also logged to MLflow (``release.tracking``).
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from service.ml.records import EVALUATION_RECORD, RUN_RECORD, TRAIN_RECORD, write_json
from service.provenance import git_state, library_versions
from service.registry import (
    PREVIOUS,
    PRODUCTION,
    ModelRegistry,
    RegistryError,
    open_registry,
)
from service.release.checks import run_serving_checks
from service.release.gate import (
    CriterionResult,
    NotebookOutcome,
    RunRecords,
    Verdict,
    decide,
    load_policy,
    read_records,
)
from service.release.params import declared_parameters, route_parameters
from service.release.tracking import track_release
from service.settings import Settings

log = logging.getLogger("lab2prod.release")

NOTEBOOKS = ("train", "evaluate")
_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class ReleaseError(RuntimeError):
    """The release could not start (bad run id, unreadable registry ...); nothing was run."""


@dataclass
class ReleaseResult:
    run_id: str
    run_dir: Path
    record: dict[str, Any]
    verdict: Verdict
    version: str | None

    @property
    def released(self) -> bool:
        return self.version is not None


def new_run_id() -> str:
    return datetime.now(UTC).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def run_release(
    settings: Settings,
    parameters: Mapping[str, Any],
    *,
    policy_path: str | Path | None = None,
    run_id: str | None = None,
    alias: str = PRODUCTION,
) -> ReleaseResult:
    """Train, evaluate, gate and (when the gate passes) publish; always writes run.json.

    Raises ParameterError, PolicyError or ReleaseError before running anything when the
    request itself is wrong; a failing notebook or a refused gate is a result, not an error.
    """
    started = time.perf_counter()
    started_at = datetime.now(UTC).isoformat()
    policy, policy_source = load_policy(policy_path or settings.release_policy)
    notebooks = {name: Path(settings.notebooks_dir) / f"{name}.ipynb" for name in NOTEBOOKS}
    declared = {name: declared_parameters(path) for name, path in notebooks.items()}
    routed = route_parameters(parameters, declared)

    registry = open_registry(settings.registry_url, settings.model_name)
    registry.validate_alias(alias)  # before the run, not after an hour of training
    champion = _current_champion(registry, settings.model_alias)

    run_id = run_id or new_run_id()
    if not _RUN_ID.match(run_id):
        raise ReleaseError(f"run id {run_id!r} is not allowed: letters, digits, '.', '_', '-'")
    run_dir = Path(settings.runs_dir) / run_id
    try:
        run_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError:
        raise ReleaseError(
            f"run folder {run_dir} already exists; choose another --run-id"
        ) from None
    run_dir_abs = run_dir.resolve()

    # papermill gets only what the run sets; the record also shows the defaults in effect.
    injected = {
        "train": {**routed.per_notebook["train"], "run_dir": str(run_dir_abs)},
        "evaluate": {
            **routed.per_notebook["evaluate"],
            "run_dir": str(run_dir_abs),
            "champion_checkpoint": str(champion["checkpoint"]) if champion else "",
        },
    }
    effective = {name: {**declared[name], **injected[name]} for name in NOTEBOOKS}
    record: dict[str, Any] = {
        "run_id": run_id,
        "status": "running",
        "started_at": started_at,
        "run_dir": str(run_dir_abs),
        "parameters": {"requested": routed.requested, **effective},
        "seed": effective["train"].get("seed"),
        "git": git_state(Path.cwd()),
        "library_versions": library_versions(),
        "champion": champion,
        "policy": policy_source,
        "registry": {"url": registry.url, "model": registry.model_name, "alias": alias},
        "serving": {"runtime": settings.runtime, "device": settings.device,
                    "threads": settings.torch_threads},
    }
    write_json(run_dir / RUN_RECORD, record)
    log.info("run %s in %s (champion: %s)", run_id, run_dir,
             champion["version"] if champion else "none, first release")

    timings: dict[str, float] = {}
    outcomes: list[NotebookOutcome] = []
    for name in NOTEBOOKS:
        output = run_dir / f"{name}.ipynb"
        if outcomes and outcomes[-1].error:
            outcomes.append(NotebookOutcome(name, str(output), ran=False))
            continue
        tick = time.perf_counter()
        outcomes.append(_execute(notebooks[name], output, injected[name]))
        timings[f"{name}_s"] = _seconds_since(tick)

    tick = time.perf_counter()
    reports = {nb.name: _render_html(Path(nb.path)) for nb in outcomes if nb.ran}
    timings["render_s"] = _seconds_since(tick)

    tick = time.perf_counter()
    records = read_records(run_dir)
    if records.usable and not any(nb.error for nb in outcomes):
        assert records.checkpoint is not None and records.evaluation is not None
        criteria = policy.for_dataset(records.evaluation.dataset.name)
        records.serving = run_serving_checks(
            run_dir, records.checkpoint, records.evaluation,
            criteria=criteria.runtime_criteria(),
            min_inexact_speedup=criteria.min_inexact_runtime_speedup,
            data_dir=effective["evaluate"].get("data_dir") or effective["train"].get("data_dir"),
            parity_device=str(effective["evaluate"].get("device") or "auto"),
            serving_runtime=settings.runtime,
            serving_device=settings.device,
            threads=settings.torch_threads,
        )
    timings["serving_checks_s"] = _seconds_since(tick)

    tick = time.perf_counter()
    try:
        verdict = decide(
            policy,
            notebooks=outcomes,
            records=records,
            champion_version=champion["version"] if champion else None,
            dataset_hint=effective["train"].get("dataset"),
        )
    except Exception as exc:  # records the gate cannot read refuse the release, on the record
        log.exception("the gate could not judge run %s", run_id)
        verdict = Verdict(passed=False, dataset=None, criteria=[CriterionResult(
            "gate", False, None, "run records the gate can read", f"{type(exc).__name__}: {exc}"
        )])
    timings["gate_s"] = _seconds_since(tick)

    record.update(_lineage(records, outcomes, reports, run_dir))
    record["runtimes"] = (records.serving or {}).get("runtimes")
    record["gate"] = verdict.as_dict()
    record["release"] = None

    version = None
    if verdict.passed:
        tick = time.perf_counter()
        version = _publish(registry, records, record, verdict, alias, champion,
                           settings.model_alias)
        timings["publish_s"] = _seconds_since(tick)
        record["gate"] = verdict.as_dict()
        if version:
            record["release"] = {
                "registry": registry.url,
                "model": registry.model_name,
                "version": version,
                "aliases": {name: target for name, target in registry.aliases().items()
                            if name in (alias, PRODUCTION, PREVIOUS)},
            }
    record["status"] = "released" if version else "refused"
    timings["total_s"] = _seconds_since(started)
    record["timings"] = timings
    record["finished_at"] = datetime.now(UTC).isoformat()
    record["tracking"] = (
        track_release(settings.mlflow_tracking_uri, settings.model_name, record, run_dir)
        if settings.mlflow_tracking_uri else None
    )
    write_json(run_dir / RUN_RECORD, record)
    return ReleaseResult(run_id, run_dir, record, verdict, version)


def _current_champion(registry: ModelRegistry, alias: str) -> dict[str, Any] | None:
    """The model serving now (the alias the service follows), or None before the first release."""
    try:
        if alias not in registry.aliases():
            return None
        version = registry.resolve(alias)
        card = registry.card(version)
        path = registry.checkpoint_path(version)
    except RegistryError as exc:
        raise ReleaseError(f"cannot read the champion from registry {registry.url}: {exc}") from exc
    return {
        "alias": alias,
        "version": version,
        "checkpoint": str(Path(path).resolve()),
        "checkpoint_sha256": card.get("checkpoint_sha256"),
        "run_id": card.get("run_id"),
    }


def _seconds_since(tick: float) -> float:
    """Seconds since a perf_counter tick, to the microsecond (the gate takes under 1 ms)."""
    return round(time.perf_counter() - tick, 6)


def _execute(source: Path, output: Path, parameters: dict[str, Any]) -> NotebookOutcome:
    """Run one notebook with papermill; a failing cell is recorded, and its notebook kept."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    log.info("executing %s -> %s", source, output)
    try:
        papermill.execute_notebook(
            str(source),
            str(output),
            parameters=parameters,
            progress_bar=True,
            log_output=True,
            cwd=str(Path.cwd()),
        )
    except PapermillExecutionError as exc:
        log.error("%s failed at cell %s: %s: %s",
                  source.name, exc.exec_count, exc.ename, exc.evalue)
        return NotebookOutcome(source.stem, str(output),
                               error=f"cell {exc.exec_count} raised {exc.ename}: {exc.evalue}")
    except Exception as exc:  # kernel died, timed out, could not start ...
        log.error("%s did not run: %s", source.name, exc)
        return NotebookOutcome(source.stem, str(output), error=f"{type(exc).__name__}: {exc}")
    return NotebookOutcome(source.stem, str(output))


def _render_html(notebook: Path) -> str | None:
    """The executed notebook as HTML next to it; None (and a warning) when it cannot be."""
    if not notebook.is_file():
        return None
    try:
        from nbconvert import HTMLExporter

        body, _ = HTMLExporter().from_filename(str(notebook))
    except Exception as exc:  # a report is a convenience; the gate reads the JSON records
        log.warning("could not render %s to HTML: %s", notebook, exc)
        return None
    target = notebook.with_suffix(".html")
    target.write_text(body, encoding="utf-8")
    return target.name


def _lineage(records: RunRecords, outcomes: list[NotebookOutcome], reports: dict[str, str | None],
             run_dir: Path) -> dict[str, Any]:
    """The parts of run.json that come from what the notebooks wrote."""
    train = records.train.model_dump(by_alias=True) if records.train else {}
    evaluation = records.evaluation.model_dump(by_alias=True) if records.evaluation else {}
    evaluated = evaluation.get("dataset") or {}
    artefacts: dict[str, Any] = {
        "checkpoint": records.checkpoint.name if records.checkpoint else None,
        "train_record": TRAIN_RECORD if records.train is not None else None,
        "evaluation_record": EVALUATION_RECORD if records.evaluation is not None else None,
    }
    for outcome in outcomes:
        artefacts[f"{outcome.name}_notebook"] = Path(outcome.path).name if outcome.ran else None
        artefacts[f"{outcome.name}_html"] = reports.get(outcome.name)
    lineage: dict[str, Any] = {
        "notebooks": [
            {"name": nb.name, "executed": nb.ran, "error": nb.error} for nb in outcomes
        ],
        "data": {
            "fingerprint": evaluated.get("fingerprint"),
            "evaluation": evaluated or None,
            "train": train.get("dataset"),
        },
        "device": train.get("device"),
        "metrics": {
            "train": train.get("metrics"),
            "candidate": evaluation.get("candidate"),
            "champion": evaluation.get("champion"),
        },
        "artefacts": artefacts,
    }
    if train.get("seed") is not None:
        lineage["seed"] = train["seed"]
    if train.get("git"):
        lineage["notebook_git"] = train["git"]
    return lineage


def _publish(
    registry: ModelRegistry,
    records: RunRecords,
    record: dict[str, Any],
    verdict: Verdict,
    alias: str,
    champion: dict[str, Any] | None,
    champion_alias: str,
) -> str | None:
    """Publish under the lock, on condition that the champion did not move during the run."""
    checkpoint = records.checkpoint
    assert checkpoint is not None  # the gate refuses runs without one
    card = {key: value for key, value in record.items() if key not in ("status", "release")}
    card["gate"] = verdict.as_dict()
    expected = champion["version"] if champion else None
    try:
        # The runtimes the serving checks chose (exported graphs) and the verification set
        # serving checks them against travel with the version.
        published = (records.serving or {}).get("artefacts", [])
        artefacts = [records.run_dir / name for name in published]
        version = registry.publish(checkpoint, card, aliases=(alias,),
                                   expect={champion_alias: expected}, artefacts=artefacts)
    except RegistryError as exc:
        verdict.criteria.append(CriterionResult(
            name="champion_unchanged",
            passed=False,
            measured=registry.aliases().get(champion_alias),
            required=f"{champion_alias} still {expected or 'unset'} when publishing",
            detail=str(exc),
        ))
        verdict.passed = False
        log.error("not published: %s", exc)
        return None
    verdict.criteria.append(CriterionResult(
        name="champion_unchanged",
        passed=True,
        measured=expected,
        required=f"{champion_alias} still {expected or 'unset'} when publishing",
        detail="checked under the registry lock",
    ))
    return version
