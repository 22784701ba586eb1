"""Each release as an MLflow run, when MLFLOW_TRACKING_URI is set (whatever the registry is).

The run, in the experiment MODEL_NAME and named after the release's run id, holds the notebooks'
effective parameters, the training metrics per epoch (step = epoch) and the final ones (per-class
recall and precision too), the gate's verdict (``gate.passed`` and a tag and a 1/0 metric per
criterion), and the executed notebooks, their HTML reports and the run's records as artefacts.
Its id is recorded in run.json. Tracking is a copy of the record, not a criterion: a server that
is down costs a warning and ``"logged": false`` in run.json, never the release.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

from service.ml.records import RUN_RECORD, SERVING_RECORD, write_json

log = logging.getLogger("lab2prod.release")

TAG_LIMIT = 5000  # characters MLflow keeps in a run tag
_UNSAFE = re.compile(r"[^\w.\- /]")  # MLflow's metric and parameter names allow these
_ARTEFACTS = ("train_notebook", "evaluate_notebook", "train_html", "evaluate_html",
              "train_record", "evaluation_record")


def track_release(uri: str, experiment: str, record: dict[str, Any], run_dir: Path
                  ) -> dict[str, Any]:
    """Log the finished release in ``record`` as an MLflow run; returns run.json's ``tracking``.

    run.json is written (with the MLflow run id) and logged last, so the copy in MLflow names
    its own run.
    """
    entry: dict[str, Any] = {"uri": uri, "experiment": experiment, "run_id": None,
                             "logged": False}
    client = None
    try:
        from service.registry.mlflow_client import connect, experiment_id

        client = connect(uri, "MLFLOW_TRACKING_URI")
        run = client.create_run(experiment_id(client, experiment, uri),
                                run_name=record["run_id"], tags=run_tags(record))
        entry["run_id"] = run_id = run.info.run_id
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        client.log_batch(
            run_id,
            metrics=[Metric(name, value, now, step) for name, value, step in run_metrics(record)],
            params=[Param(name, value) for name, value in run_params(record).items()],
        )
        for name in artefacts(record, run_dir):
            client.log_artifact(run_id, str(run_dir / name))
        entry["logged"] = True
        record["tracking"] = entry
        write_json(run_dir / RUN_RECORD, record)
        client.log_artifact(run_id, str(run_dir / RUN_RECORD))
        client.set_terminated(run_id, "FINISHED")
    except Exception as exc:  # tracking never refuses a release
        reason = f"{type(exc).__name__}: {getattr(exc, 'message', None) or exc}"
        if isinstance(exc, ModuleNotFoundError):
            reason = "MLflow's client is not installed: pip install 'lab2prod[mlflow]'"
        log.warning("release %s was not logged to MLflow at %s: %s", record["run_id"], uri,
                    reason)
        entry.update(logged=False, error=reason)
        if client is not None and entry["run_id"]:
            try:
                client.set_terminated(entry["run_id"], "FAILED")
            except Exception:  # the server that failed the logging may fail this too
                log.debug("could not mark MLflow run %s failed", entry["run_id"])
    return entry


def run_params(record: dict[str, Any]) -> dict[str, str]:
    """The notebooks' effective parameters, ``train.epochs`` ..., as MLflow's strings."""
    parameters = record.get("parameters") or {}
    return {
        _name(f"{notebook}.{name}"): str(value)
        for notebook in ("train", "evaluate")
        for name, value in (parameters.get(notebook) or {}).items()
    }


def run_metrics(record: dict[str, Any]) -> list[tuple[str, float, int]]:
    """(name, value, step): training per epoch at step = epoch, the rest at step 0."""
    metrics = record.get("metrics") or {}
    train = metrics.get("train") or {}
    found: list[tuple[str, float, int]] = []
    for epoch in train.get("epochs") or []:
        step = int(epoch.get("epoch", 0))
        found += [(name, value, step) for name, value in _numbers(epoch).items()
                  if name != "epoch"]
    summary = {key: value for key, value in train.items() if key != "epochs"}
    final = {f"train.{name}": value for name, value in _numbers(summary).items()}
    for role, prefix in (("candidate", ""), ("champion", "champion.")):
        scored = metrics.get(role) or {}
        final |= {f"{prefix}{name}": value for name, value in _numbers(scored).items()}
        for row in scored.get("per_class") or []:
            final[f"{prefix}recall.{row['class']}"] = float(row["recall"])
            final[f"{prefix}precision.{row['class']}"] = float(row["precision"])
    gate = record.get("gate") or {}
    if "passed" in gate:
        final["gate.passed"] = float(bool(gate["passed"]))
    for criterion in gate.get("criteria") or []:
        final[f"gate.{criterion['name']}"] = float(bool(criterion["passed"]))
    final |= {f"timings.{name}": value
              for name, value in _numbers(record.get("timings") or {}).items()}
    return found + [(_name(name), value, 0) for name, value in final.items()]


def run_tags(record: dict[str, Any]) -> dict[str, str]:
    """What the release was and the gate's verdict, criterion by criterion."""
    gate = record.get("gate") or {}
    release = record.get("release") or {}
    tags = {
        "lab2prod.run_id": record.get("run_id"),
        "lab2prod.status": record.get("status"),
        "lab2prod.registry": (record.get("registry") or {}).get("url"),
        "lab2prod.version": release.get("version"),
        "lab2prod.champion": (record.get("champion") or {}).get("version"),
        "lab2prod.dataset": ((record.get("data") or {}).get("evaluation") or {}).get("name"),
        "lab2prod.runtime": (record.get("runtimes") or {}).get("chosen"),
        "mlflow.source.git.commit": (record.get("git") or {}).get("commit"),
        "gate.passed": None if "passed" not in gate else str(bool(gate["passed"])).lower(),
    }
    for criterion in gate.get("criteria") or []:
        verdict = "passed" if criterion["passed"] else "failed"
        tags[_name(f"gate.{criterion['name']}")] = (
            f"{verdict}: measured {criterion.get('measured')}, "
            f"required {criterion.get('required')}"
        )
    return {key: str(value)[:TAG_LIMIT] for key, value in tags.items() if value is not None}


def artefacts(record: dict[str, Any], run_dir: Path) -> list[str]:
    """The executed notebooks, their HTML reports and the records that exist (run.json aside)."""
    named = record.get("artefacts") or {}
    names = [named.get(key) for key in _ARTEFACTS] + [SERVING_RECORD]
    return [name for name in names if name and (run_dir / name).is_file()]


def _numbers(values: dict[str, Any]) -> dict[str, float]:
    """Numeric fields, one level of nesting flattened (``latency_ms.batch_1``)."""
    found: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, dict):
            found |= {f"{key}.{inner}": number
                      for inner, number in _numbers(value).items() if "." not in inner}
        elif isinstance(value, int | float) and not isinstance(value, bool):
            found[key] = float(value)
    return found


def _name(name: str) -> str:
    return _UNSAFE.sub("_", name)
