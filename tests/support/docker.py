"""The Dockerfile read as instructions (no Docker engine needed)."""

from __future__ import annotations

import json
from pathlib import Path

from support import REPO

DOCKERFILE = REPO / "Dockerfile"


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


def exec_form(arguments: str) -> list[str]:
    """The JSON exec form of CMD/HEALTHCHECK CMD (what the image actually runs)."""
    if arguments.startswith("--") or arguments.startswith("CMD"):
        arguments = arguments[arguments.index("CMD") + 3 :].strip()
    command = json.loads(arguments)
    assert isinstance(command, list) and all(isinstance(part, str) for part in command)
    return command
