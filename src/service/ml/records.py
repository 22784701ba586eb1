"""Run records: one JSON file per run, written atomically, readable by the release gate."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np


def _to_json(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def write_json(path: str | Path, record: dict[str, Any]) -> Path:
    """Write ``record`` to ``path`` (temp file then rename, so readers never see half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(json.dumps(record, indent=2, default=_to_json) + "\n")
    os.replace(temporary, path)
    return path

