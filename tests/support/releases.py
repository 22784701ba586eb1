"""`lab2prod release` as a user runs it: a project folder (the repository's notebooks and a test
policy with low absolute thresholds) and `lab2prod` commands run in it through the console entry
point, so paths resolve against that folder exactly as for a user. Parameters are tiny (300
training digits, 1 epoch, 200 test digits)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support import REPO

TINY = ["-p", "limit", "300", "-p", "epochs", "1", "-p", "test_limit", "200"]
# Absolute thresholds a tiny model passes and a model that learnt nothing does not.
TEST_POLICY = """
criteria:
  min_accuracy: 0.3
  min_class_recall: 0.0
  regression_alpha: 0.01
  accuracy_drop_bound: 0.02
  class_recall_drop_bound: 0.5
  min_runtime_agreement: 0.9
  max_runtime_accuracy_drop: 0.05
"""
# The developer's own settings, which no command under test inherits.
SETTINGS_ENV = ("REGISTRY_URL", "RUNS_DIR", "NOTEBOOKS_DIR", "RELEASE_POLICY", "MODEL_NAME",
                "MODEL_ALIAS", "DATA_DIR", "MLFLOW_TRACKING_URI")


@dataclass
class Release:
    run_id: str
    returncode: int
    stdout: str
    stderr: str
    record: dict[str, Any]


def make_project(folder: Path) -> Path:
    """``folder`` with the repository's notebooks and TEST_POLICY as release-policy.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "notebooks", folder / "notebooks",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    (folder / "release-policy.yaml").write_text(TEST_POLICY)
    return folder


def lab2prod(project: Path, *args: str, timeout: float = 540, **env: str
             ) -> subprocess.CompletedProcess:
    """`lab2prod ARGS` run in ``project``, settings from ``env`` only."""
    environment = {key: value for key, value in os.environ.items() if key not in SETTINGS_ENV}
    environment.update(env)
    return subprocess.run(
        [sys.executable, "-m", "service.cli", *args],
        cwd=project, env=environment, capture_output=True, text=True, timeout=timeout,
    )


def release(project: Path, run_id: str, *args: str, **env: str) -> Release:
    """`lab2prod release --run-id RUN_ID ARGS` in ``project``, with the run.json it wrote."""
    done = lab2prod(project, "release", "--run-id", run_id, *args, **env)
    record_path = project / "runs" / run_id / "run.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    return Release(run_id, done.returncode, done.stdout, done.stderr, record)


def criteria(record: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The gate's criteria in a run record, by name."""
    return {criterion["name"]: criterion for criterion in record["gate"]["criteria"]}
