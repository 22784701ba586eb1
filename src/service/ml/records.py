"""Run records: one JSON file per run, written atomically, readable by the release gate."""

from __future__ import annotations

import json
import os
import string
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


# One character per digit keeps a whole evaluation split's labels and predictions to one short
# line each in evaluation.json (10 KB for mnist's 10,000 digits) instead of an indented line
# per digit; for ten classes the characters are the class indices themselves.
CLASS_ALPHABET = string.digits + string.ascii_lowercase
CLASS_ENCODING = "one character per digit, in test-split order: the class index (0-9, then a-z)"


def encode_classes(indices: Any) -> str:
    """Class indices (0 to 35) -> a string of one character each."""
    values = np.asarray(indices, dtype=np.int64).ravel()
    if values.size and (values.min() < 0 or values.max() >= len(CLASS_ALPHABET)):
        raise ValueError(
            f"class indices must lie in 0..{len(CLASS_ALPHABET) - 1} to be recorded one "
            f"character each, got {values.min()}..{values.max()}"
        )
    return "".join(CLASS_ALPHABET[value] for value in values.tolist())


def decode_classes(text: str) -> np.ndarray:
    """The inverse of ``encode_classes``; an unknown character is a ValueError that names it."""
    positions = {character: index for index, character in enumerate(CLASS_ALPHABET)}
    try:
        return np.array([positions[character] for character in text], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"{exc.args[0]!r} is not a recorded class ({CLASS_ENCODING})") from None
