"""Release parameters, taken the way papermill takes them, checked against the notebooks.

``-p NAME VALUE`` values are typed like ``papermill -p`` types them (True/False/None, int,
float, else str); ``-f params.yaml`` is a YAML mapping; ``-p`` wins over ``-f``. Each name goes
to every notebook whose ``parameters`` cell declares it, and a name neither notebook declares is
an error that lists the names they do declare.
"""

from __future__ import annotations

import ast
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

# Set by the pipeline itself for every run; a user value would break the run's bookkeeping.
RESERVED = ("run_dir", "checkpoint", "champion_checkpoint")


class ParameterError(ValueError):
    """The release parameters are wrong; the message says which and lists what is allowed."""


def resolve_type(value: str) -> Any:
    """Type a command-line string exactly as ``papermill -p`` does."""
    if value in ("True", "False"):
        return value == "True"
    if value == "None":
        return None
    for convert in (int, float):
        try:
            return convert(value)
        except ValueError:
            continue
    return value


def read_parameter_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        loaded = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ParameterError(f"cannot read parameter file {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ParameterError(f"parameter file {path} is not valid YAML: {exc}") from exc
    if loaded is None:
        return {}
    if not isinstance(loaded, dict) or not all(isinstance(key, str) for key in loaded):
        raise ParameterError(f"parameter file {path} must be a mapping of NAME: VALUE")
    return dict(loaded)


def collect_parameters(
    pairs: Iterable[tuple[str, str]] = (), files: Iterable[str | Path] = ()
) -> dict[str, Any]:
    """``-f`` files in order, then ``-p`` pairs (typed like papermill) on top."""
    parameters: dict[str, Any] = {}
    for path in files:
        parameters.update(read_parameter_file(path))
    for name, value in pairs:
        parameters[name] = resolve_type(value)
    return parameters


def declared_parameters(notebook: str | Path) -> dict[str, Any]:
    """Name -> default value of the notebook's ``parameters`` cell.

    papermill.inspect_notebook skips every line with a second '=' (``limit = 0  # 0 = all``,
    the contract's own comments), so the cell's assignments are read with ``ast`` as well and
    papermill's answer only fills in what ``ast`` cannot read.
    """
    import nbformat
    import papermill

    notebook = Path(notebook)
    if not notebook.is_file():
        raise ParameterError(f"notebook {notebook} not found; run from the project folder "
                             "or set NOTEBOOKS_DIR")
    document = nbformat.read(notebook, as_version=4)
    tagged = [cell for cell in document.cells if "parameters" in cell.metadata.get("tags", [])]
    if not tagged:
        raise ParameterError(f"{notebook} has no cell tagged 'parameters'; tag one in JupyterLab")
    declared = _assignments(tagged[0].source)
    translators = logging.getLogger("papermill.translators")
    level = translators.level
    translators.setLevel(logging.ERROR)  # its "Unable to parse line" is handled here
    try:
        found = papermill.inspect_notebook(str(notebook))
    finally:
        translators.setLevel(level)
    for name, spec in found.items():
        declared.setdefault(name, _literal(spec.get("default")))
    return declared


def _assignments(source: str) -> dict[str, Any]:
    """Top-level ``name = value`` / ``name: type = value`` in a cell -> {name: value}."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return {}
    found: dict[str, Any] = {}
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) and node.value is not None else [])
        for target in targets:
            if isinstance(target, ast.Name):
                found[target.id] = _literal(ast.get_source_segment(source, node.value))  # type: ignore[union-attr]
    return found


def _literal(source: Any) -> Any:
    """papermill reports a default as its source text ('"mnist-5k"'); give the value back."""
    try:
        return ast.literal_eval(source) if isinstance(source, str) else source
    except (ValueError, SyntaxError):
        return source


@dataclass(frozen=True)
class NotebookParameters:
    """What each notebook receives, plus what the user asked for."""

    requested: dict[str, Any]
    per_notebook: dict[str, dict[str, Any]]


def route_parameters(
    requested: Mapping[str, Any], declared: Mapping[str, Mapping[str, Any]]
) -> NotebookParameters:
    """Send each name to the notebooks that declare it; refuse unknown and reserved names."""
    known = sorted({name for names in declared.values() for name in names})
    unknown = sorted(set(requested) - set(known))
    if unknown:
        raise ParameterError(
            f"unknown parameter{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; "
            f"the notebooks take: {', '.join(name for name in known if name not in RESERVED)}"
        )
    reserved = sorted(set(requested) & set(RESERVED))
    if reserved:
        raise ParameterError(
            f"{', '.join(reserved)} {'is' if len(reserved) == 1 else 'are'} set by `lab2prod "
            "release` itself (the run folder and the production champion); use --run-id or "
            "RUNS_DIR to choose where a run goes"
        )
    per_notebook = {
        notebook: {name: value for name, value in requested.items() if name in names}
        for notebook, names in declared.items()
    }
    return NotebookParameters(requested=dict(requested), per_notebook=per_notebook)
