"""The Dockerfile read as instructions and build stages, and the build context .dockerignore
leaves (no Docker engine needed)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from support import REPO

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def dockerfile_instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs of a Dockerfile, continuation lines joined."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):  # comments may sit between continuation lines
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, arguments = line.partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
    return instructions


@dataclass(frozen=True)
class Stage:
    """One FROM ... AS name block: its base and its instructions after the FROM."""

    name: str
    base: str
    instructions: tuple[tuple[str, str], ...]

    def arguments(self, keyword: str) -> list[str]:
        return [arguments for name, arguments in self.instructions if name == keyword]

    def env(self) -> dict[str, str]:
        """What ENV sets in this stage (KEY=VALUE form)."""
        pairs = [item.split("=", 1) for env in self.arguments("ENV") for item in shlex.split(env)]
        return dict(pairs)  # type: ignore[arg-type]

    def command(self) -> list[str]:
        (cmd,) = self.arguments("CMD")
        return exec_form(cmd)


def dockerfile_stages(path: Path = DOCKERFILE) -> list[Stage]:
    """The build stages in file order (the last one is what `docker build` builds)."""
    blocks: list[tuple[str, str, list[tuple[str, str]]]] = []
    for keyword, arguments in dockerfile_instructions(path):
        if keyword == "FROM":
            words = arguments.split()
            named = len(words) == 3 and words[1].upper() == "AS"
            blocks.append((words[2] if named else str(len(blocks)), words[0], []))
        elif blocks:
            blocks[-1][2].append((keyword, arguments))
    return [Stage(name, base, tuple(instructions)) for name, base, instructions in blocks]


def dockerfile_stage(name: str, path: Path = DOCKERFILE) -> Stage:
    by_name = {stage.name: stage for stage in dockerfile_stages(path)}
    assert name in by_name, f"the Dockerfile has no stage {name!r}; it has {sorted(by_name)}"
    return by_name[name]


def global_args(path: Path = DOCKERFILE) -> dict[str, str]:
    """The ARGs declared before the first FROM, with their defaults."""
    args: dict[str, str] = {}
    for keyword, arguments in dockerfile_instructions(path):
        if keyword == "FROM":
            break
        if keyword == "ARG":
            name, _, default = shlex.split(arguments)[0].partition("=")
            args[name] = default
    return args


def exec_form(arguments: str) -> list[str]:
    """The JSON exec form of CMD/HEALTHCHECK CMD (what the image actually runs)."""
    if arguments.startswith("--") or arguments.startswith("CMD"):
        arguments = arguments[arguments.index("CMD") + 3 :].strip()
    command = json.loads(arguments)
    assert isinstance(command, list) and all(isinstance(part, str) for part in command)
    return command


def _pattern(text: str) -> re.Pattern[str]:
    """A .dockerignore pattern as Docker matches it: `*` and `?` stay within one path
    segment, `**` crosses segments; anchored at the context root."""
    if "[" in text or "\\" in text:
        raise ValueError(f"support.docker does not model character classes or escapes: {text!r}")
    text = text.strip("/")
    regex, i = "", 0
    while i < len(text):
        if text.startswith("**/", i):
            regex, i = regex + "(?:.*/)?", i + 3
        elif text.startswith("**", i):
            regex, i = regex + ".*", i + 2
        else:
            regex += {"*": "[^/]*", "?": "[^/]"}.get(text[i], re.escape(text[i]))
            i += 1
    return re.compile(f"^{regex}$")


def in_build_context(relative_path: str, dockerignore: Path = DOCKERIGNORE) -> bool:
    """Whether Docker sends this file to the builder: the last .dockerignore pattern that
    matches the path or one of its parent folders decides (`!` patterns re-include)."""
    excluded = False
    parts = relative_path.split("/")
    candidates = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    for line in dockerignore.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        exception = line.startswith("!")
        pattern = _pattern(line[1:] if exception else line)
        if any(pattern.match(candidate) for candidate in candidates):
            excluded = not exception
    return not excluded
